r"""f-MICL: contrastive learning by f-mutual information (Lu et al., TMLR 2023; SPEC section 6).

With the f-Gaussian similarity :math:`u = G(\lVert x-y\rVert^2) = \mu
\exp(-\lVert x-y\rVert^2 / (2\sigma^2))` of L2-normalised embeddings
(:math:`\lVert x-y\rVert^2 = 2 - 2\,x\cdot y`) and a divergence f
(:mod:`mscon.losses.divergences`), the loss to minimise is

.. math::

    L = -\operatorname{mean}_{(x,y)\in\text{pos}} f'(u)
        + \alpha \operatorname{mean}_{(x,y)\in\text{neg}} f^*(f'(u)),
    \qquad f^*(f'(u)) = u f'(u) - f(u).

Pooled-pair estimator: the positives are all ordered pairs of distinct views of
the same image (without labels) or of images with the same label (with
labels); the negatives are all ordered pairs of views of different images
(different labels). Each term is the mean over all its pairs in the batch. A
view whose label is missing (-1) takes part in no pair. A term without pairs
(all labels missing, or one class) is 0.

:math:`\log u = \log\mu - (1 - x\cdot y)/\sigma^2` is clamped to its reachable
range :math:`[\log\mu - 2/\sigma^2, \log\mu]` (the cosine to [-1, 1]; the
gradient passes through the clamp, which only moves rounding errors).

The pairs are computed in chunks of anchor rows: one chunk's (rows x N) block
at a time, with the gradient with respect to the embeddings accumulated in the
same pass (the loss is a scalar, so the backward pass only scales it), so peak
memory is O(chunk x N) and no N x N matrix is ever held. The dense pass weights
every pair as a negative; the same-key columns of each row (at most the size of
its class) are then corrected to positives, so no N x N mask is built.

Example:
    >>> import torch
    >>> loss_fn = FMICLLoss("kl", alpha=1.0)
    >>> features = torch.ones(4, 2, 8)  # identical embeddings: u = mu = 1 for every pair
    >>> round(float(loss_fn(features)), 6)  # -(log 1 + 1) + 1 * 1
    0.0
    >>> round(fmicl_chance("kl", alpha=1.0), 4)  # cosine 0: -(log e^-2 + 1) + e^-2
    1.1353
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mscon import distributed
from mscon.losses import _checks
from mscon.losses.divergences import (
    Divergence,
    check_range,
    get_divergence,
    log_u_range,
)
from mscon.losses.functional import _no_autocast, l2_normalize

__all__ = [
    "FMICLLoss",
    "fmicl_loss",
    "fmicl_chance",
    "fmicl_floor",
    "auto_chunk_size",
    "DEFAULT_SIGMA",
]

#: The vision default: 1/(2 sigma^2) = 1.
DEFAULT_SIGMA = 0.5**0.5

# Elements of one chunk's (rows x N) block: 16 MB in float32 on CPU (the temporaries
# stay in cache-friendly sizes), 256 MB on an accelerator (fewer kernel launches).
_CHUNK_ELEMENTS = {"cpu": 2**22}
_CHUNK_ELEMENTS_ACCELERATOR = 2**26


def auto_chunk_size(num_candidates: int, device: torch.device | str = "cpu") -> int:
    """Anchor rows per chunk: about 2^22 (CPU) or 2^26 (GPU) elements per (rows x N) block."""
    device_type = torch.device(device).type
    elements = _CHUNK_ELEMENTS.get(device_type, _CHUNK_ELEMENTS_ACCELERATOR)
    return max(1, elements // max(1, num_candidates))


@dataclass
class _Plan:
    """Everything but the embeddings that one f-MICL evaluation needs (no gradient)."""

    div: Divergence
    inv_var: float  # 1 / sigma^2: d log u / d cos
    shift: float  # log mu - 1/sigma^2: log u at cos = 0
    lo: float  # log u range
    hi: float
    w_pos: float  # weight of -f'(u) per positive pair: scale / #positive pairs (0 if none)
    w_neg: float  # weight of f*(f'(u)) per negative pair: scale * alpha / #negative pairs
    self_index: Tensor  # (n,) column of each anchor among the candidates
    class_start: Tensor  # (n,) first position of the anchor's key in the sorted candidates
    class_count: Tensor  # (n,) number of candidates with the anchor's key (itself included)
    max_count: int
    order: Tensor  # (N,) candidates sorted by key
    chunk: int
    need_grad: bool


class _FMICLPairs(torch.autograd.Function):
    """The pooled-pair f-MICL loss of anchors against candidates, gradient computed in forward.

    ``candidates=None`` means the anchors themselves (one process): the pair
    weights are then symmetric and the gradient is twice the anchor-side one.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, anchors: Tensor, candidates: Tensor | None, plan: _Plan
    ) -> Tensor:
        symmetric = candidates is None
        cands = anchors if symmetric else candidates
        n, n_cand = anchors.shape[0], cands.shape[0]
        div, inv = plan.div, plan.inv_var
        total = anchors.new_zeros(())
        grad_a = torch.empty_like(anchors) if plan.need_grad else None
        grad_c = torch.zeros_like(cands) if plan.need_grad and not symmetric else None
        shift = anchors.new_full((1, 1), plan.shift)
        steps = torch.arange(plan.max_count, device=anchors.device)
        # d loss / d cos = d loss / d log u * (1/sigma^2); both sides of a symmetric pair
        g_pos = plan.w_pos * inv * (2.0 if symmetric else 1.0)
        g_neg = plan.w_neg * inv * (2.0 if symmetric else 1.0)
        # the (rows x N) gradient block is kept in units of g_neg (so the dense part is the
        # divergence's derivative as it comes) and the unit is applied to the (rows x d) product
        unit = g_neg or g_pos or 1.0
        for start in range(0, n, plan.chunk):
            end = min(n, start + plan.chunk)
            zc = anchors[start:end]
            log_u = torch.addmm(shift, zc, cands.T, alpha=inv)  # log mu - (1 - cos)/sigma^2
            log_u.clamp_(plan.lo, plan.hi)

            # the candidates that share the anchor's key (its class; itself included),
            # padded to max_count columns
            valid = steps < plan.class_count[start:end, None]
            where = (plan.class_start[start:end, None] + steps).clamp_(max=n_cand - 1)
            cols = plan.order[where]
            positive = valid & (cols != plan.self_index[start:end, None])
            log_u_same = log_u.gather(1, cols)
            delta = None
            if plan.w_pos:
                fp = torch.where(positive, div.f_prime(log_u_same), 0.0)
                total = total - plan.w_pos * fp.sum()
                if plan.need_grad:
                    d_pos = div.f_prime_dlog(log_u_same) * (-g_pos / unit)
                    delta = torch.where(positive, d_pos, 0.0)
            if plan.w_neg:
                # remove the same-key columns from the dense pass below
                fc = torch.where(valid, div.conjugate(log_u_same), 0.0)
                total = total - plan.w_neg * fc.sum()
                if plan.need_grad:
                    d_neg = torch.where(valid, -div.conjugate_dlog(log_u_same), 0.0)
                    delta = d_neg if delta is None else delta + d_neg
                # every pair as a negative
                value_sum, grad = div.conjugate_sum_and_dlog_(log_u)
                total = total + plan.w_neg * value_sum
            elif plan.need_grad:
                grad = torch.zeros_like(log_u)
            if not plan.need_grad:
                continue
            if delta is not None:
                grad.scatter_add_(1, cols, delta)
            torch.mm(grad, cands, out=grad_a[start:end]).mul_(unit)
            if grad_c is not None:
                grad_c.addmm_(grad.T, zc, alpha=unit)
        ctx.save_for_backward(grad_a, grad_c)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        grad_a, grad_c = ctx.saved_tensors
        if grad_a is None:
            raise RuntimeError(
                "fmicl_loss: the gradient was not computed in forward (it ran without grad mode)"
            )
        return grad_out * grad_a, (None if grad_c is None else grad_out * grad_c), None


def _log_u_terms(
    div: Divergence, log_u: float, alpha: float, positive: bool, negative: bool
) -> float:
    x = torch.tensor(log_u, dtype=torch.float64)
    total = 0.0
    if positive:
        total -= float(div.f_prime(x))
    if negative:
        total += alpha * float(div.conjugate(x))
    return total


def _resolve(divergence: str | Divergence, tsallis_alpha: float) -> Divergence:
    if isinstance(divergence, Divergence):
        return divergence
    return get_divergence(divergence, tsallis_alpha=tsallis_alpha)


def fmicl_chance(
    divergence: str | Divergence = "kl",
    *,
    alpha: float = 40.0,
    sigma: float = DEFAULT_SIGMA,
    mu: float = 1.0,
    tsallis_alpha: float = 1.5,
) -> float:
    r"""The loss of embeddings that ignore the labels: every pair at cosine 0.

    :math:`-f'(u_0) + \alpha f^*(f'(u_0))` with :math:`u_0 = \mu e^{-1/\sigma^2}`
    (squared distance 2), the value of orthogonal embeddings (and the typical value
    of random ones in high dimension).

    Example:
        >>> round(fmicl_chance("pearson", alpha=1.0), 4)  # -2(u0 - 1) + u0^2 - 1, u0 = e^-2
        0.7476
    """
    div = _resolve(divergence, tsallis_alpha)
    return _log_u_terms(div, math.log(mu) - 1.0 / sigma**2, alpha, True, True)


def fmicl_floor(
    num_classes: int,
    divergence: str | Divergence = "kl",
    *,
    alpha: float = 40.0,
    sigma: float = DEFAULT_SIGMA,
    mu: float = 1.0,
    tsallis_alpha: float = 1.5,
) -> float:
    r"""The loss of the ideal configuration of K classes (images, without labels).

    Every view of a class at one point (positives at :math:`u = \mu`), the K
    points a regular simplex on the sphere (negatives at squared distance
    :math:`2K/(K-1)`, the largest mean over K points):
    :math:`-f'(\mu) + \alpha f^*(f'(\mu e^{-K/((K-1)\sigma^2)}))`; K = 1 has no
    negatives: :math:`-f'(\mu)`. For KL this is a lower bound on the loss of any
    batch with K balanced classes and collapsed positives (f*(f'(u)) = u is convex
    in the squared distance); for the other divergences it is the ideal
    configuration's value, a reference level.

    Example:
        >>> round(fmicl_floor(2, "kl", alpha=1.0), 4)  # -1 + e^-4 (antipodal classes)
        -0.9817
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"fmicl_floor: num_classes must be an integer >= 1, got {num_classes!r}")
    div = _resolve(divergence, tsallis_alpha)
    value = _log_u_terms(div, math.log(mu), alpha, True, False)
    if num_classes > 1:
        k = num_classes
        value += _log_u_terms(div, math.log(mu) - k / ((k - 1) * sigma**2), alpha, False, True)
    return value


def fmicl_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    divergence: str | Divergence = "kl",
    alpha: float = 40.0,
    sigma: float = DEFAULT_SIGMA,
    mu: float = 1.0,
    tsallis_alpha: float = 1.5,
    gather_distributed: bool = False,
    chunk_size: int | None = None,
) -> Tensor:
    r"""f-MICL loss (SPEC section 6) of ``features`` (B, V, d); unchecked functional form.

    See :class:`FMICLLoss` (which validates its arguments) for the equation.

    Args:
        features: (B, V, d) embeddings, any float dtype, not yet normalised.
        labels: (B,) integer labels, -1 = missing; None: positives are the views of
            the same image.
        divergence: a config name (:data:`~mscon.losses.divergences.DIVERGENCES`) or a
            :class:`~mscon.losses.divergences.Divergence`.
        alpha: weight of the negative term.
        sigma: kernel width: :math:`u = \mu \exp(-\lVert x-y\rVert^2/(2\sigma^2))`.
        mu: kernel scale.
        tsallis_alpha: the Tsallis order (``divergence="tsallis"`` only).
        gather_distributed: inside a multi-process group, this rank's views are the
            anchors and all ranks' views the candidates (gathered with gradient);
            pair counts are global and the result is this rank's share times the
            world size.
        chunk_size: anchor rows per chunk; None = :func:`auto_chunk_size`.

    Returns:
        Scalar, float32 (float64 for float64 input).

    Example:
        >>> z = torch.nn.functional.one_hot(torch.arange(4)).double().reshape(2, 2, 4)
        >>> # orthogonal views: every pair at cosine 0, the chance level
        >>> abs(float(fmicl_loss(z, divergence="js")) - fmicl_chance("js")) < 1e-12
        True
    """
    div = _resolve(divergence, tsallis_alpha)
    b, v, d = features.shape
    with _no_autocast(features.device.type):
        z = l2_normalize(features).reshape(b * v, d)
        device = z.device
        if labels is None:
            # the key of a view: the index of its image's first view
            keys = torch.arange(b * v, device=device).div_(v, rounding_mode="floor").mul_(v)
        else:
            keys = labels.to(device=device, dtype=torch.long).repeat_interleave(v)
            known = keys >= 0
            if not bool(known.all()):  # missing labels take part in no pair
                index = known.nonzero().squeeze(1)
                z, keys = z.index_select(0, index), keys.index_select(0, index)
        n = z.shape[0]
        use_dist = gather_distributed and distributed.is_distributed()
        if use_dist:
            sizes = distributed.gather_sizes(n, device)
            offset, scale = sum(sizes[: distributed.rank()]), float(distributed.world_size())
        else:
            sizes, offset, scale = [n], 0, 1.0
        if sum(sizes) == 0:  # no view with a label anywhere: 0 with a gradient path
            return z.sum() * 0.0
        if labels is None:
            keys = keys + offset
        if use_dist:
            candidates = distributed.gather_with_grad(z, sizes)
            cand_keys = distributed.gather_no_grad(keys, sizes)
        else:
            candidates, cand_keys = None, keys
        n_cand = int(cand_keys.shape[0])

        sorted_keys, order = torch.sort(cand_keys, stable=True)
        class_start = torch.searchsorted(sorted_keys, keys)
        class_count = torch.searchsorted(sorted_keys, keys, right=True) - class_start
        per_key = torch.unique_consecutive(sorted_keys, return_counts=True)[1]
        num_pos = int((per_key * (per_key - 1)).sum())
        num_neg = n_cand * n_cand - int((per_key * per_key).sum())
        lo, hi = log_u_range(sigma, mu)
        plan = _Plan(
            div=div,
            inv_var=1.0 / sigma**2,
            shift=math.log(mu) - 1.0 / sigma**2,
            lo=lo,
            hi=hi,
            w_pos=scale / num_pos if num_pos else 0.0,
            w_neg=scale * alpha / num_neg if num_neg else 0.0,
            self_index=offset + torch.arange(n, device=device),
            class_start=class_start,
            class_count=class_count,
            max_count=int(class_count.max()) if n else 0,
            order=order,
            chunk=int(chunk_size) if chunk_size else auto_chunk_size(n_cand, device),
            need_grad=torch.is_grad_enabled()
            and (z.requires_grad or (candidates is not None and candidates.requires_grad)),
        )
        return _FMICLPairs.apply(z, candidates, plan)


class FMICLLoss(nn.Module):
    r"""f-MICL loss (SPEC section 6): an f-divergence bound on the mutual information of views.

    .. math::

        L = -\operatorname{mean}_{\text{pos}} f'(u)
            + \alpha \operatorname{mean}_{\text{neg}} \big[u f'(u) - f(u)\big],
        \qquad u = \mu \exp\!\big(-(2 - 2\,x\cdot y)/(2\sigma^2)\big)

    over the pooled pairs of the batch's B·V L2-normalised views: positives are
    ordered pairs of distinct views of the same image (with ``labels``: of the same
    label), negatives ordered pairs of views of different images (different
    labels). Views with a missing label (-1) take part in no pair; a term without
    pairs is 0 (with a gradient path). :math:`\log u` is clamped to
    :math:`[\log\mu - 2/\sigma^2, \log\mu]`. Computed in row chunks with O(chunk x N)
    memory, in float32 for half inputs (float64 stays float64), autocast off.

    Args:
        divergence: ``kl`` (default), ``js``, ``pearson``, ``sq_hellinger``,
            ``tsallis`` or ``vlc`` (see :mod:`mscon.losses.divergences`).
        alpha: :math:`\alpha > 0`, weight of the negative term (vision default 40).
        sigma: :math:`\sigma > 0`, kernel width (default :math:`\sqrt{1/2}`, i.e.
            :math:`1/(2\sigma^2) = 1`). Settings that overflow float32 are rejected
            (squared Hellinger needs :math:`\sigma \gtrsim 0.113` at :math:`\mu = 1`).
        mu: :math:`\mu > 0`, kernel scale (default 1).
        tsallis_alpha: the Tsallis order :math:`a > 0`, :math:`a \ne 1` (default 1.5).
        gather_distributed: inside a multi-process group, contrast this rank's views
            with the views of all ranks (gathered with gradient), count pairs over all
            ranks and return this rank's share times the world size (the mean over
            ranks is the loss of the whole batch).
        chunk_size: anchor rows per chunk; None picks about 2^22 / N on CPU.

    Shapes:
        features: (B, V, d) with V >= 2; float16/bfloat16/float32/float64.
        labels: (B,) integer, -1 = missing (optional: supervised f-MICL).
        output: scalar, float32 (float64 for float64 input).

    Example:
        >>> import torch
        >>> loss_fn = FMICLLoss("pearson", alpha=2.0)
        >>> features = torch.ones(3, 2, 8)  # every pair at u = mu = 1: f'(1) = 0, f*(f'(1)) = 0
        >>> round(float(loss_fn(features)), 6)
        0.0
        >>> round(float(loss_fn(features, labels=torch.tensor([0, 0, -1]))), 6)
        0.0
        >>> round(loss_fn.chance(), 4)  # -2(u0 - 1) + 2 (u0^2 - 1), u0 = e^-2
        -0.234
    """

    def __init__(
        self,
        divergence: str = "kl",
        alpha: float = 40.0,
        sigma: float = DEFAULT_SIGMA,
        mu: float = 1.0,
        tsallis_alpha: float = 1.5,
        *,
        gather_distributed: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        owner = "FMICLLoss"
        self.alpha = _checks.check_temperature(owner, alpha, "alpha")
        self.sigma = _checks.check_temperature(owner, sigma, "sigma")
        self.mu = _checks.check_temperature(owner, mu, "mu")
        if isinstance(divergence, Divergence):
            self.divergence = divergence
        else:
            try:
                self.divergence = get_divergence(divergence, tsallis_alpha=tsallis_alpha)
            except ValueError as err:
                raise ValueError(f"{owner}: {err}") from None
        check_range(self.divergence, sigma=self.sigma, mu=self.mu, alpha=self.alpha, owner=owner)
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(
                f"{owner}: chunk_size must be None or an integer >= 1, got {chunk_size!r}"
            )
        self.chunk_size = chunk_size
        self.gather_distributed = bool(gather_distributed)

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """Loss of ``features`` (B, V, d), optionally with ``labels`` (B,)."""
        owner, expected = "FMICLLoss", "(B, V, d) with V >= 2"
        features = _checks.check_float_tensor(owner, "features", features, expected)
        if features.ndim != 3 or features.shape[0] < 1 or features.shape[1] < 2:
            raise ValueError(
                f"{owner}: features must have shape {expected} and B >= 1 (every image needs "
                f"at least two views), got {_checks.shape_str(features.shape)}"
            )
        _checks.check_embeddings(owner, "features", features, expected)
        if labels is not None:
            labels = _checks.check_labels(owner, "labels", labels, (features.shape[0],), "(B,)")
        return fmicl_loss(
            features,
            labels,
            divergence=self.divergence,
            alpha=self.alpha,
            sigma=self.sigma,
            mu=self.mu,
            gather_distributed=self.gather_distributed,
            chunk_size=self.chunk_size,
        )

    def chance(self) -> float:
        """:func:`fmicl_chance` of this loss's settings."""
        return fmicl_chance(self.divergence, alpha=self.alpha, sigma=self.sigma, mu=self.mu)

    def floor(self, num_classes: int) -> float:
        """:func:`fmicl_floor` of this loss's settings for ``num_classes`` classes."""
        return fmicl_floor(
            num_classes, self.divergence, alpha=self.alpha, sigma=self.sigma, mu=self.mu
        )

    def extra_repr(self) -> str:
        return (
            f"divergence={self.divergence!r}, alpha={self.alpha}, sigma={self.sigma}, mu={self.mu}"
        )
