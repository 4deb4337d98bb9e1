r"""The contrastive log-denominator in chunks of anchor rows, recomputed in backward.

For anchors :math:`z_i` (M, d), candidates :math:`c_a` (N, d), both L2-normalised,
and the anchor's own column :math:`\mathrm{self}(i)` (or none):

.. math::

    D_i = \log \sum_{a \ne \mathrm{self}(i)} \exp(z_i \cdot c_a / \tau).

:func:`log_denominator` computes :math:`D` (M,) one chunk of anchor rows at a
time: a chunk's (rows x N) block :math:`E_{ia} = \exp(z_i\cdot c_a/\tau)` is
built in a reused buffer (one matmul, one in-place exp, the own column zeroed
through a strided diagonal view), summed over its row and dropped. Backward
rebuilds each block and uses the softmax gradient without ever forming the
probabilities: with upstream per-anchor gradients :math:`g_i` and
:math:`u_i = g_i / \sum_a E_{ia}`,

.. math::

    \frac{\partial}{\partial z_i} = \frac{u_i}{\tau} (E C)_i, \qquad
    \frac{\partial}{\partial c_a} = \frac{1}{\tau} (E^\top (u \odot Z))_a, \qquad
    \frac{\partial}{\partial \tau} = -\frac{1}{\tau} \sum_i z_i \cdot \frac{\partial}{\partial z_i}.

So peak memory is O(chunk x N) per call, not O(M x N). Because the upstream
gradient is per anchor, whatever is applied downstream (validity, a mean over
valid anchors, a task weight) scales each anchor's candidate-side gradient too.

No recomputation in the usual case: a loss that is a mean over valid anchors
sends back :math:`g = \beta \cdot \mathrm{valid}` (one scale per problem). Given
that expected upstream (``expected_upstream``), forward also computes both gradient
sides for it while each block is in memory and keeps them ((M + N) x d numbers);
backward checks that the actual :math:`g` is an exact per-problem multiple and only
scales them. Any other upstream (a per-anchor weighting, a gradient check)
rebuilds the blocks as above.

A leading batch dimension runs C independent problems (one per similarity,
each with its own temperature) through one chunk loop: anchors (C, M, d),
candidates (C, N, d), temperature () or (C,), D (C, M); the exp, the own-column
zeroing and the row sums are then one operation over all C blocks. Fewer, larger
operations matter on a shared CPU, where every parallel operation waits for its
slowest thread.

No shift: normalised embeddings bound every logit by :math:`1/\tau`, so while
:math:`2/\tau` is within the dtype's exponent range (:math:`\tau \ge 1/32` in
float32) :math:`E` is exact without a max-subtraction pass, and it is symmetric
when the candidates are the anchors themselves (then one product
:math:`E\,[Z, u \odot Z]` gives both gradient sides). Below that (e.g. a learned
temperature driven down) each row's maximum logit :math:`h_i` is subtracted and
added back to :math:`D_i` (one extra matmul in forward).

The rows per chunk: the ``chunk_size`` argument, else the environment variable
``MSCON_LOSS_CHUNK_ROWS``, else :func:`auto_chunk_size` (a block of about 2^25
elements, 128 MB in float32, over the whole batch dimension, on CPU; 2^26 on an
accelerator). The M anchors are then split into ceil(M / rows) chunks of
near-equal size.

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

# Elements of one chunk's (C x rows x (N + 2d)) blocks: 128 MB in float32 on CPU (with
# C = 3 similarities, 2 chunks at N = 4,096: on an idle core within 3% of smaller
# blocks, and faster on a loaded machine, where every operation costs a thread
# hand-off); 256 MB on an accelerator (fewer kernel launches).
_CPU_ELEMENTS = 2**25
_ACCELERATOR_ELEMENTS = 2**26

# Largest 2/tau (the spread of the logits s/tau over [-1/tau, 1/tau]) for which
# exp(+-1/tau) times N stays a normal number with room to spare.
_SAFE_EXPONENT = {torch.float32: 64.0, torch.float64: 600.0}


def auto_chunk_size(
    num_candidates: int, dim: int, device: torch.device | str = "cpu", batch: int = 1
) -> int:
    """Anchor rows per chunk so that a chunk's (batch x rows x (N + 2d)) blocks hold about
    2^25 (CPU) or 2^26 (accelerator) elements.

    Example:
        >>> auto_chunk_size(4096, 128), auto_chunk_size(4096, 128, batch=3)
        (7710, 2570)
    """
    kind = torch.device(device).type
    elements = _CPU_ELEMENTS if kind == "cpu" else _ACCELERATOR_ELEMENTS
    return max(1, elements // max(1, batch * (num_candidates + 2 * dim)))


def check_chunk_size(owner: str, chunk_size: object) -> int | None:
    """``chunk_size`` if it is None or an integer >= 1, else a ValueError naming ``owner``."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{owner}: chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    return chunk_size


def resolve_chunk_size(
    chunk_size: int | None,
    num_candidates: int,
    dim: int,
    device: torch.device | str,
    batch: int = 1,
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
    return auto_chunk_size(num_candidates, dim, device, batch)


def _diagonal(self_index: Tensor, num_candidates: int) -> int | None:
    """k when each anchor's own column is k + its row (a diagonal of the block), else None."""
    m = self_index.shape[0]
    if m == 0:
        return None
    k = int(self_index[0])
    if k < 0 or k + m > num_candidates:
        return None
    expected = torch.arange(k, k + m, device=self_index.device)
    return k if torch.equal(self_index, expected) else None


def _leading(buffer: Tensor, rows: int) -> Tensor:
    """A contiguous (C, rows, K) view of the start of ``buffer`` (C, R, K), for a last
    chunk shorter than the others (``buffer[:, :rows]`` is not contiguous)."""
    c, _, k = buffer.shape
    return buffer.view(-1)[: c * rows * k].view(c, rows, k)


def _bmm(x: Tensor, y: Tensor, out: Tensor | None = None) -> Tensor:
    """(C, R, K) @ (C, K, N) as one matmul per problem, into ``out`` when given.

    torch.bmm on CPU splits the batch over the threads (3 problems on 2 threads leave
    one thread idle half the time); one mm per problem uses every thread on each.
    """
    if out is None:
        out = x.new_empty(x.shape[0], x.shape[1], y.shape[2])
    for i in range(x.shape[0]):
        torch.mm(x[i], y[i], out=out[i])
    return out


def _block(
    out: Tensor,
    rows: Tensor,
    candidates: Tensor,
    shift: Tensor | None,
    self_cols: Tensor,
    diagonal: int | None,
) -> Tensor:
    """``out`` (C, R, N) := exp(rows @ candidates^T - shift), 0 at each row's own column.

    ``rows`` (C, R, d) are anchors already divided by tau; ``shift`` (C, R, 1) is None
    when no shift is needed. The own column is a strided diagonal view when
    ``diagonal`` is given (the usual case), else an indexed write (``self_cols`` -1:
    none). A matmul per problem into ``out`` and one in-place exp, so forward and
    backward build the block bit for bit.
    """
    _bmm(rows, candidates.transpose(1, 2), out=out)
    if shift is not None:
        out.sub_(shift)
    out.exp_()
    if diagonal is not None:
        out.diagonal(diagonal, dim1=1, dim2=2).zero_()
    else:
        has = self_cols >= 0
        if bool(has.any()):
            r = torch.arange(rows.shape[1], device=rows.device)
            out[:, r[has], self_cols[has]] = 0.0
    return out


def _row_max_shifts(rows: Tensor, candidates: Tensor, self_cols: Tensor) -> Tensor:
    """(C, R, 1) largest logit of each row (``rows`` already divided by tau) over its
    candidates, self excluded; 0 when a row has no candidate."""
    logits = _bmm(rows, candidates.transpose(1, 2))
    has = self_cols >= 0
    r = torch.arange(rows.shape[1], device=rows.device)
    logits[:, r[has], self_cols[has]] = -torch.inf
    top = logits.amax(dim=2, keepdim=True)
    return torch.where(torch.isfinite(top), top, torch.zeros_like(top))


def _per_problem_scale(grad: Tensor, expected: Tensor) -> Tensor | None:
    """(C,) beta with ``grad == beta * expected`` exactly (row by row), else None."""
    first = expected.abs().argmax(dim=1, keepdim=True)  # a non-zero entry, if there is one
    ref = expected.gather(1, first)
    beta = torch.where(ref != 0, grad.gather(1, first) / ref, torch.zeros_like(ref))
    return beta.squeeze(1) if torch.equal(grad, beta * expected) else None


class _LogDenominator(torch.autograd.Function):
    """D (C, M) of anchors (C, M, d) against candidates (C, N, d); ``candidates=None``
    means the anchors themselves (the symmetric case). ``temperature`` is (C,);
    ``self_index`` (M,) gives each anchor's own column (-1: none), the same in every
    problem of the batch; ``diagonal`` is k when that column is k + the anchor's row;
    ``expected`` (C, M) or None is the expected upstream gradient up to a scale per
    problem (see :func:`log_denominator`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        anchors: Tensor,
        candidates: Tensor | None,
        temperature: Tensor,
        self_index: Tensor,
        diagonal: int | None,
        chunk: int,
        expected: Tensor | None,
    ) -> Tensor:
        cands = anchors if candidates is None else candidates
        inv_tau = temperature.reciprocal().reshape(-1, 1, 1)
        global_shift = 2.0 * float(inv_tau.max()) <= _SAFE_EXPONENT[anchors.dtype]
        ahead = expected is not None
        c, m, _ = anchors.shape
        rows = anchors * inv_tau
        sums = anchors.new_empty(c, m)
        shifts = None if global_shift else anchors.new_empty(c, m, 1)
        anchor_unit = torch.empty_like(anchors) if ahead else None
        cand_unit = torch.zeros_like(cands) if ahead else None
        buffer = anchors.new_empty(c, min(chunk, m), cands.shape[1])
        for start in range(0, m, chunk):
            end = min(m, start + chunk)
            self_cols = self_index[start:end]
            shift = None
            if shifts is not None:
                shift = _row_max_shifts(rows[:, start:end], cands, self_cols)
                shifts[:, start:end] = shift
            k = None if diagonal is None else diagonal + start
            block = _block(
                _leading(buffer, end - start), rows[:, start:end], cands, shift, self_cols, k
            )
            # clamp: an anchor with no candidate
            sums[:, start:end] = block.sum(dim=2).clamp_min_(torch.finfo(sums.dtype).tiny)
            if ahead:  # the gradients for the expected upstream, while the block is here
                u = (expected[:, start:end] / sums[:, start:end]).unsqueeze(2) * inv_tau
                _softmax_grads(
                    block, cands, anchors[:, start:end], u, anchor_unit, cand_unit, start
                )
        ctx.save_for_backward(
            anchors,
            candidates,
            temperature,
            self_index,
            sums,
            shifts,
            expected,
            anchor_unit,
            cand_unit,
        )
        ctx.chunk, ctx.diagonal, ctx.ahead = chunk, diagonal, ahead
        log_den = torch.log(sums)
        return log_den if shifts is None else log_den + shifts.squeeze(2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        anchors, candidates, temperature, self_index, sums, shifts, expected, *units = (
            ctx.saved_tensors
        )
        scale = _per_problem_scale(grad, expected) if ctx.ahead else None
        if scale is not None:  # the upstream is the expected one: scale what forward made
            anchor_side = units[0] * scale.reshape(-1, 1, 1)
            cand_side = units[1] * scale.reshape(-1, 1, 1)
        else:
            anchor_side, cand_side = _rebuilt_grads(
                ctx, grad, anchors, candidates, temperature, self_index, sums, shifts
            )
        grad_tau = None
        if ctx.needs_input_grad[2]:
            inv_tau = temperature.reciprocal()
            grad_tau = -(anchors * anchor_side).sum(dim=(1, 2)) * inv_tau
        if candidates is None:
            return anchor_side.add_(cand_side), None, grad_tau, None, None, None, None
        return anchor_side, cand_side, grad_tau, None, None, None, None


def _softmax_grads(
    block: Tensor,
    cands: Tensor,
    rows: Tensor,
    u: Tensor,
    anchor_side: Tensor,
    cand_side: Tensor,
    start: int,
) -> None:
    """Add one chunk's softmax gradients: anchor side u (E C), candidate side E^T (u Z).

    ``block`` (C, R, N), ``rows`` (C, R, d) the chunk's anchors, ``u`` (C, R, 1) the
    upstream over the row sums over tau; ``anchor_side[:, start:start + R]`` is written,
    ``cand_side`` (C, N, d) accumulated.
    """
    end = start + rows.shape[1]
    anchor_side[:, start:end] = _bmm(block, cands).mul_(u)
    weighted = u * rows
    for i in range(block.shape[0]):
        cand_side[i].addmm_(block[i].T, weighted[i])


def _rebuilt_grads(
    ctx,
    grad: Tensor,
    anchors: Tensor,
    candidates: Tensor | None,
    temperature: Tensor,
    self_index: Tensor,
    sums: Tensor,
    shifts: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Anchor-side and candidate-side gradients for any upstream, rebuilding each block."""
    symmetric = candidates is None and shifts is None  # E is then symmetric
    cands = anchors if candidates is None else candidates
    inv_tau = temperature.reciprocal().reshape(-1, 1, 1)
    c, m, d = anchors.shape
    chunk = ctx.chunk
    rows = anchors * inv_tau
    u = (grad / sums).unsqueeze(2) * inv_tau  # (C, M, 1)
    anchor_side = torch.empty_like(anchors)
    cand_side = torch.empty_like(cands) if symmetric else torch.zeros_like(cands)
    both = torch.cat([cands, u * anchors], dim=2) if symmetric else None
    buffer = anchors.new_empty(c, min(chunk, m), cands.shape[1])
    product = anchors.new_empty(c, min(chunk, m), 2 * d) if symmetric else None
    for start in range(0, m, chunk):
        end = min(m, start + chunk)
        shift = None if shifts is None else shifts[:, start:end]
        k = None if ctx.diagonal is None else ctx.diagonal + start
        block = _block(
            _leading(buffer, end - start),
            rows[:, start:end],
            cands,
            shift,
            self_index[start:end],
            k,
        )
        if symmetric:  # (E Z, E (u * Z)) in one product
            prod = _bmm(block, both, out=_leading(product, end - start))
            torch.mul(prod[:, :, :d], u[:, start:end], out=anchor_side[:, start:end])
            cand_side[:, start:end] = prod[:, :, d:]
        else:
            _softmax_grads(
                block, cands, anchors[:, start:end], u[:, start:end], anchor_side, cand_side, start
            )
    return anchor_side, cand_side


def log_denominator(
    anchors: Tensor,
    candidates: Tensor | None,
    *,
    temperature: float | Tensor,
    self_index: Tensor | None = None,
    chunk_size: int | None = None,
    expected_upstream: Tensor | None = None,
) -> Tensor:
    r"""(M,) :math:`D_i = \log\sum_{a\ne\mathrm{self}(i)}\exp(z_i\cdot c_a/\tau)`, in row chunks.

    With a leading batch dimension, C independent problems at once: anchors (C, M, d),
    candidates (C, N, d), temperature () or (C,), result (C, M).

    Args:
        anchors: (M, d) or (C, M, d) L2-normalised anchors (float32 or float64).
        candidates: (N, d) or (C, N, d) L2-normalised candidates of the same dtype; None
            means the anchors, each excluding itself (then ``self_index`` is ignored).
        temperature: :math:`\tau > 0`, a float or a tensor of shape () or (C,) (its
            gradient is returned).
        self_index: (M,) long, each anchor's own column among the candidates (-1: none);
            None excludes nothing.
        chunk_size: anchor rows per chunk (see :func:`resolve_chunk_size`).
        expected_upstream: (M,) or (C, M), the gradient backward is expected to receive,
            up to one scale per problem (for a mean over valid anchors: the valid mask).
            Forward then also computes the gradients for it while each block is built,
            and backward only scales them when the upstream is such a multiple (exactly);
            for any other upstream it rebuilds the blocks. None: always rebuild.

    Returns:
        (M,) or (C, M) log-denominators, differentiable in the anchors, candidates and
        temperature.
    """
    batched = anchors.ndim == 3
    a = anchors if batched else anchors.unsqueeze(0)
    c = None if candidates is None else (candidates if batched else candidates.unsqueeze(0))
    problems, m, d = a.shape
    if candidates is None:
        self_index = torch.arange(m, device=a.device)
    elif self_index is None:
        self_index = torch.full((m,), -1, dtype=torch.long, device=a.device)
    n = m if c is None else c.shape[1]
    rows = resolve_chunk_size(chunk_size, n, d, a.device, problems)
    chunk = max(1, -(-m // -(-m // rows))) if m else rows  # near-equal chunks, at most `rows`
    diagonal = 0 if c is None else _diagonal(self_index, n)
    tau = torch.as_tensor(temperature, dtype=a.dtype, device=a.device)
    if tau.ndim > 1 or tau.numel() not in (1, problems):
        raise ValueError(
            f"log_denominator: temperature must be a float or a tensor of shape () or "
            f"({problems},), got shape {tuple(tau.shape)}"
        )
    tau = tau.reshape(-1).expand(problems)
    expected = None
    inputs = (a, c, tau)
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    if expected_upstream is not None and wants_grad:  # no gradient work for evaluation
        expected = expected_upstream.to(a.dtype).reshape(problems, m).detach()
    out = _LogDenominator.apply(a, c, tau, self_index, diagonal, chunk, expected)
    return out if batched else out.squeeze(0)
