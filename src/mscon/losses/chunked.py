r"""The contrastive log-denominator in chunks of anchor rows, recomputed in backward.

For anchors :math:`z_i` (M, d), candidates :math:`c_a` (N, d), both L2-normalised,
and the anchor's own column :math:`\mathrm{self}(i)` (or none):

.. math::

    D_i = \log \sum_{a \ne \mathrm{self}(i)} \exp(z_i \cdot c_a / \tau).

:func:`log_denominator` computes :math:`D` (M,) one chunk of anchor rows at a
time: a chunk's (rows x N) block :math:`E_{ia} = \exp(z_i\cdot c_a/\tau - h_i)` is
built, summed over its row and dropped. Backward rebuilds each block and uses the
softmax gradient without ever forming the probabilities: with upstream
per-anchor gradients :math:`g_i` and :math:`u_i = g_i / \sum_a E_{ia}`,

.. math::

    \frac{\partial}{\partial z_i} = \frac{u_i}{\tau} (E C)_i, \qquad
    \frac{\partial}{\partial c_a} = \frac{1}{\tau} (E^\top (u \odot Z))_a, \qquad
    \frac{\partial}{\partial \tau} = -\frac{1}{\tau} \sum_i z_i \cdot \frac{\partial}{\partial z_i}.

So peak memory is O(chunk x N) per call, not O(M x N). Because the upstream
gradient is per anchor, whatever is applied downstream (validity, a mean over
valid anchors, a task weight) scales each anchor's candidate-side gradient too.

The shift :math:`h_i`: normalised embeddings bound every cosine by 1, so
:math:`h_i = 1/\tau` keeps every exponent in :math:`[-2/\tau, 0]`, needs no
row-max pass and leaves :math:`E` symmetric when the candidates are the anchors
themselves (then one product :math:`E\,[Z, u \odot Z]` gives both gradient sides).
When :math:`2/\tau` exceeds what the dtype's exponent range holds (about
:math:`\tau < 0.03` in float32, e.g. a learned temperature driven down), the row
maximum is subtracted instead (one extra matmul in forward).

The rows per chunk: the ``chunk_size`` argument, else the environment variable
``MSCON_LOSS_CHUNK_ROWS``, else :func:`auto_chunk_size` (a block of about 2^22
elements, 16 MB in float32, on CPU; 2^26 on an accelerator).

Example:
    >>> import torch
    >>> z = torch.nn.functional.normalize(torch.ones(3, 2), dim=1)
    >>> log_denominator(z, None, temperature=1.0)  # log(2 e) for every anchor
    tensor([1.6931, 1.6931, 1.6931])
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "CHUNK_ENV",
    "auto_chunk_size",
    "check_chunk_size",
    "resolve_chunk_size",
    "log_denominator",
]

#: Environment variable overriding the automatic rows per chunk (an integer >= 1).
CHUNK_ENV = "MSCON_LOSS_CHUNK_ROWS"

# Elements of one chunk's (rows x (N + 2d)) block: 16 MB in float32 on CPU, where the
# block then stays near the cache; 256 MB on an accelerator (fewer kernel launches).
_CPU_ELEMENTS = 2**22
_ACCELERATOR_ELEMENTS = 2**26

# Largest 2/tau for which exp(-2/tau) is a normal number with room to spare.
_SAFE_EXPONENT = {torch.float32: 64.0, torch.float64: 600.0}


def auto_chunk_size(num_candidates: int, dim: int, device: torch.device | str = "cpu") -> int:
    """Anchor rows per chunk so that a chunk's (rows x (N + 2d)) block holds about 2^22
    (CPU) or 2^26 (accelerator) elements.

    Example:
        >>> auto_chunk_size(4096, 128)
        963
    """
    kind = torch.device(device).type
    elements = _CPU_ELEMENTS if kind == "cpu" else _ACCELERATOR_ELEMENTS
    return max(1, elements // max(1, num_candidates + 2 * dim))


def check_chunk_size(owner: str, chunk_size: object) -> int | None:
    """``chunk_size`` if it is None or an integer >= 1, else a ValueError naming ``owner``."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{owner}: chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    return chunk_size


def resolve_chunk_size(
    chunk_size: int | None, num_candidates: int, dim: int, device: torch.device | str
) -> int:
    """The rows per chunk: ``chunk_size``, else ``$MSCON_LOSS_CHUNK_ROWS``, else automatic.

    Raises:
        ValueError: ``chunk_size`` or the environment variable is not an integer >= 1.
    """
    if check_chunk_size("contrastive loss", chunk_size) is not None:
        return chunk_size
    text = os.environ.get(CHUNK_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(
                f"environment variable {CHUNK_ENV} must be an integer >= 1, got {text!r}"
            )
        return int(text)
    return auto_chunk_size(num_candidates, dim, device)


def _with_ones(candidates: Tensor) -> Tensor:
    """(N, d + 1) candidates with a column of ones, which carries each row's shift."""
    return torch.cat([candidates, candidates.new_ones(candidates.shape[0], 1)], dim=1)


def _block(
    rows: Tensor, cands_ones: Tensor, inv_tau: float, shift: Tensor, self_cols: Tensor
) -> Tensor:
    """(R, N) block exp((z·c - shift) / tau), 0 at each row's own column (-1: none).

    ``cands_ones`` is :func:`_with_ones` of the candidates and ``shift`` (R, 1) is in
    units of cosine; the shift rides in the matmul as an extra coordinate, so the block
    takes one matmul and one in-place exp, and forward and backward build it bit for bit.
    """
    scaled = torch.cat([rows * inv_tau, shift * -inv_tau], dim=1)
    block = torch.mm(scaled, cands_ones.T).exp_()
    has = self_cols >= 0
    if bool(has.any()):
        r = torch.arange(rows.shape[0], device=rows.device)
        block[r[has], self_cols[has]] = 0.0
    return block


def _row_max_cosines(rows: Tensor, candidates: Tensor, self_cols: Tensor) -> Tensor:
    """(R, 1) largest cosine of each row over its candidates (self excluded); 1 if none."""
    cos = rows @ candidates.T
    has = self_cols >= 0
    r = torch.arange(rows.shape[0], device=rows.device)
    cos[r[has], self_cols[has]] = -torch.inf
    top = cos.amax(dim=1, keepdim=True)
    return torch.where(torch.isfinite(top), top, torch.ones_like(top))


class _LogDenominator(torch.autograd.Function):
    """D (M,) of anchors against candidates; ``candidates=None`` means the anchors with
    each anchor's own row excluded (the symmetric case)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        anchors: Tensor,
        candidates: Tensor | None,
        temperature: Tensor,
        self_index: Tensor,
        chunk: int,
    ) -> Tensor:
        cands = anchors if candidates is None else candidates
        tau = float(temperature)
        inv_tau = 1.0 / tau
        global_shift = 2.0 * inv_tau <= _SAFE_EXPONENT[anchors.dtype]
        m = anchors.shape[0]
        sums = anchors.new_empty(m)
        shifts = anchors.new_ones(m, 1)
        cands_ones = _with_ones(cands)
        for start in range(0, m, chunk):
            end = min(m, start + chunk)
            rows, self_cols = anchors[start:end], self_index[start:end]
            if not global_shift:
                shifts[start:end] = _row_max_cosines(rows, cands, self_cols)
            sums[start:end] = _block(rows, cands_ones, inv_tau, shifts[start:end], self_cols).sum(1)
        sums.clamp_min_(torch.finfo(sums.dtype).tiny)  # an anchor with no candidate
        ctx.save_for_backward(anchors, candidates, temperature, self_index, sums, shifts)
        ctx.chunk, ctx.global_shift = chunk, global_shift
        return torch.log(sums) + shifts.squeeze(1) * inv_tau

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        anchors, candidates, temperature, self_index, sums, shifts = ctx.saved_tensors
        symmetric = candidates is None and ctx.global_shift  # E is then symmetric
        cands = anchors if candidates is None else candidates
        inv_tau = 1.0 / float(temperature)
        u = (grad / sums).unsqueeze(1)  # (M, 1)
        d = anchors.shape[1]
        anchor_side = torch.empty_like(anchors)
        cand_side = torch.zeros_like(cands)
        both = torch.cat([cands, u * anchors], dim=1) if symmetric else None
        cands_ones = _with_ones(cands)
        for start in range(0, anchors.shape[0], ctx.chunk):
            end = min(anchors.shape[0], start + ctx.chunk)
            rows = anchors[start:end]
            block = _block(rows, cands_ones, inv_tau, shifts[start:end], self_index[start:end])
            if symmetric:
                prod = block @ both  # (R, 2d): (E Z)_R and (E (u * Z))_R
                torch.mul(prod[:, :d], u[start:end] * inv_tau, out=anchor_side[start:end])
                cand_side[start:end] = prod[:, d:] * inv_tau
            else:
                torch.mm(block, cands, out=anchor_side[start:end]).mul_(u[start:end] * inv_tau)
                cand_side.addmm_(block.T, u[start:end] * rows, alpha=inv_tau)
        grad_tau = None
        if ctx.needs_input_grad[2]:
            grad_tau = -(anchors * anchor_side).sum() * inv_tau
            grad_tau = grad_tau.reshape(temperature.shape).to(temperature.dtype)
        if candidates is None:
            return anchor_side + cand_side, None, grad_tau, None, None
        return anchor_side, cand_side, grad_tau, None, None


def log_denominator(
    anchors: Tensor,
    candidates: Tensor | None,
    *,
    temperature: float | Tensor,
    self_index: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    r"""(M,) :math:`D_i = \log\sum_{a\ne\mathrm{self}(i)}\exp(z_i\cdot c_a/\tau)`, in row chunks.

    Args:
        anchors: (M, d) L2-normalised anchors (float32 or float64).
        candidates: (N, d) L2-normalised candidates of the same dtype; None means the
            anchors, each excluding itself (then ``self_index`` is ignored).
        temperature: :math:`\tau > 0`, a float or a 0-dim tensor (its gradient is returned).
        self_index: (M,) long, each anchor's own column among the candidates (-1: none);
            None excludes nothing.
        chunk_size: anchor rows per chunk (see :func:`resolve_chunk_size`).

    Returns:
        (M,) log-denominators, differentiable in the anchors, candidates and temperature.
    """
    m = anchors.shape[0]
    if candidates is None:
        self_index = torch.arange(m, device=anchors.device)
    elif self_index is None:
        self_index = torch.full((m,), -1, dtype=torch.long, device=anchors.device)
    n = m if candidates is None else candidates.shape[0]
    chunk = resolve_chunk_size(chunk_size, n, anchors.shape[1], anchors.device)
    tau = (
        temperature.to(anchors.dtype)
        if isinstance(temperature, Tensor)
        else torch.tensor(float(temperature), dtype=anchors.dtype, device=anchors.device)
    )
    return _LogDenominator.apply(anchors, candidates, tau, self_index, chunk)
