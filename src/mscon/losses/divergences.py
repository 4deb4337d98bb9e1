r"""The f-divergences of f-MICL (SPEC section 6), evaluated from :math:`\log u`.

Each divergence gives, for the f-Gaussian similarity
:math:`u = \mu \exp(-\lVert x - y\rVert^2 / (2\sigma^2))`,

* :math:`f(u)`, convex with :math:`f(1) = 0`;
* :math:`f'(u)`, the critic of a positive pair;
* :math:`f^*(f'(u)) = u f'(u) - f(u)` (Fenchel-Young), the term of a negative pair;
* :math:`\mathrm{d}f'(u)/\mathrm{d}\log u = u f''(u)`; the derivative of
  :math:`f^*(f'(u))` with respect to :math:`\log u` is :math:`u^2 f''(u)`.

| config name | f(u) | f'(u) | f*(f'(u)) |
|---|---|---|---|
| ``kl`` | u log u | log u + 1 | u |
| ``js`` | u log u - (1+u) log((1+u)/2) | log(2u/(1+u)) | log((1+u)/2) |
| ``pearson`` | (u-1)^2 | 2(u-1) | u^2 - 1 |
| ``sq_hellinger`` | (sqrt(u) - 1)^2 | 1 - u^(-1/2) | sqrt(u) - 1 |
| ``tsallis`` | (u^a - 1)/(a-1) | a u^(a-1)/(a-1) | u^a + 1/(a-1) |
| ``vlc`` | (u-1)^2/(u+1) | (u-1)(u+3)/(u+1)^2 | (u-1)(3u+1)/(u+1)^2 |

(VLC's last column is the self-consistent value, not the paper's misprint
3 - 4/(u+1).) Every method takes ``log_u`` = :math:`\log u`, never :math:`u`:
powers are ``exp(c * log_u)``, so nothing overflows before the result itself
would, and :math:`u` may underflow to 0 harmlessly.

On the unit sphere :math:`\lVert x-y\rVert^2 \in [0, 4]`, so :math:`\log u` lies in
:func:`log_u_range` = :math:`[\log\mu - 2/\sigma^2, \log\mu]`.
:func:`check_range` rejects settings (small :math:`\sigma`, Tsallis order
:math:`a < 1`, large :math:`\mu`) under which a value or a gradient overflows
float32 somewhere in that range, naming the bound.

Example:
    >>> import torch
    >>> js = get_divergence("js")
    >>> log_u = torch.tensor([0.0, -2.0])
    >>> js.f_prime(log_u)  # log(2u / (1 + u)); 0 at u = 1
    tensor([ 0.0000, -1.4338])
    >>> get_divergence("reverse_kl")
    Traceback (most recent call last):
    ...
    ValueError: divergence must be one of 'kl', 'js', 'pearson', 'sq_hellinger', 'tsallis', ...
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

from mscon.registry import Registry

__all__ = [
    "Divergence",
    "KL",
    "JensenShannon",
    "Pearson",
    "SquaredHellinger",
    "Tsallis",
    "VinczeLeCam",
    "DIVERGENCES",
    "get_divergence",
    "log_u_range",
    "check_range",
    "FLOAT32_LIMIT",
]

_LOG2 = math.log(2.0)

#: The largest magnitude a value or gradient may reach in :func:`check_range`:
#: float32's maximum over 2^10, headroom for alpha, sums and the chain rule.
FLOAT32_LIMIT = torch.finfo(torch.float32).max / 2.0**10


class Divergence:
    """An f-divergence: f, f' and f*(f'), and their derivatives, as functions of log u.

    Subclasses implement :meth:`f`, :meth:`f_prime`, :meth:`conjugate` and
    :meth:`f_prime_dlog`; :meth:`conjugate_dlog` and :meth:`conjugate_sum_and_dlog_`
    have generic defaults that a subclass may speed up.
    """

    name: str = ""

    def f(self, log_u: Tensor) -> Tensor:
        """:math:`f(u)`."""
        raise NotImplementedError

    def f_prime(self, log_u: Tensor) -> Tensor:
        """:math:`f'(u)`, the critic of a positive pair."""
        raise NotImplementedError

    def conjugate(self, log_u: Tensor) -> Tensor:
        """:math:`f^*(f'(u)) = u f'(u) - f(u)`, the term of a negative pair."""
        raise NotImplementedError

    def f_prime_dlog(self, log_u: Tensor) -> Tensor:
        """:math:`\\mathrm{d} f'(u) / \\mathrm{d}\\log u = u f''(u)` (>= 0: f is convex)."""
        raise NotImplementedError

    def conjugate_dlog(self, log_u: Tensor) -> Tensor:
        """:math:`\\mathrm{d} f^*(f'(u)) / \\mathrm{d}\\log u = u^2 f''(u)`."""
        return torch.exp(log_u) * self.f_prime_dlog(log_u)

    def conjugate_sum_and_dlog_(self, log_u: Tensor) -> tuple[Tensor, Tensor]:
        """``(conjugate(log_u).sum(), conjugate_dlog(log_u))``, possibly overwriting ``log_u``.

        The dense pass of the loss over all pairs uses this; the returned derivative
        may share ``log_u``'s storage.
        """
        return self.conjugate(log_u).sum(), self.conjugate_dlog(log_u)

    def params(self) -> dict[str, float]:
        """The divergence's own parameters (Tsallis: its order)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params() == other.params()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(self.params().items())))


class KL(Divergence):
    """Kullback-Leibler: f = u log u, f' = log u + 1, f*(f') = u."""

    name = "kl"

    def f(self, log_u: Tensor) -> Tensor:
        return torch.exp(log_u) * log_u

    def f_prime(self, log_u: Tensor) -> Tensor:
        return log_u + 1.0

    def conjugate(self, log_u: Tensor) -> Tensor:
        return torch.exp(log_u)

    def f_prime_dlog(self, log_u: Tensor) -> Tensor:
        return torch.ones_like(log_u)

    def conjugate_dlog(self, log_u: Tensor) -> Tensor:
        return torch.exp(log_u)

    def conjugate_sum_and_dlog_(self, log_u: Tensor) -> tuple[Tensor, Tensor]:
        u = log_u.exp_()
        return u.sum(), u


class JensenShannon(Divergence):
    """Jensen-Shannon: f' = log(2u/(1+u)), f*(f') = log((1+u)/2)."""

    name = "js"

    def f(self, log_u: Tensor) -> Tensor:
        u = torch.exp(log_u)
        return u * log_u - (1.0 + u) * (torch.log1p(u) - _LOG2)

    def f_prime(self, log_u: Tensor) -> Tensor:
        # log 2 + log u - log(1 + u) = log 2 - softplus(-log u)
        return _LOG2 - torch.nn.functional.softplus(-log_u)

    def conjugate(self, log_u: Tensor) -> Tensor:
        return torch.nn.functional.softplus(log_u) - _LOG2

    def f_prime_dlog(self, log_u: Tensor) -> Tensor:
        return torch.sigmoid(-log_u)  # 1 / (1 + u)

    def conjugate_dlog(self, log_u: Tensor) -> Tensor:
        return torch.sigmoid(log_u)  # u / (1 + u)

    def conjugate_sum_and_dlog_(self, log_u: Tensor) -> tuple[Tensor, Tensor]:
        dlog = torch.sigmoid(log_u)
        # log(1 + u): a vectorised log is several times faster than log1p or softplus
        # on CPU; its absolute error (below 1e-7 in float32) is harmless in a sum.
        value = log_u.exp_().add_(1.0).log_().sum() - _LOG2 * log_u.numel()
        return value, dlog


class Pearson(Divergence):
    """Pearson chi^2: f = (u-1)^2, f' = 2(u-1), f*(f') = u^2 - 1."""

    name = "pearson"

    def f(self, log_u: Tensor) -> Tensor:
        return torch.expm1(log_u).square()

    def f_prime(self, log_u: Tensor) -> Tensor:
        return 2.0 * torch.expm1(log_u)

    def conjugate(self, log_u: Tensor) -> Tensor:
        return torch.expm1(2.0 * log_u)

    def f_prime_dlog(self, log_u: Tensor) -> Tensor:
        return 2.0 * torch.exp(log_u)

    def conjugate_dlog(self, log_u: Tensor) -> Tensor:
        return 2.0 * torch.exp(2.0 * log_u)

    def conjugate_sum_and_dlog_(self, log_u: Tensor) -> tuple[Tensor, Tensor]:
        u2 = log_u.mul_(2.0).exp_()
        return u2.sum() - u2.numel(), u2.mul_(2.0)


class SquaredHellinger(Divergence):
    """Squared Hellinger: f = (sqrt(u) - 1)^2, f' = 1 - u^(-1/2), f*(f') = sqrt(u) - 1."""

    name = "sq_hellinger"

    def f(self, log_u: Tensor) -> Tensor:
        return torch.expm1(0.5 * log_u).square()

    def f_prime(self, log_u: Tensor) -> Tensor:
        return -torch.expm1(-0.5 * log_u)

    def conjugate(self, log_u: Tensor) -> Tensor:
        return torch.expm1(0.5 * log_u)

    def f_prime_dlog(self, log_u: Tensor) -> Tensor:
        return 0.5 * torch.exp(-0.5 * log_u)

    def conjugate_dlog(self, log_u: Tensor) -> Tensor:
        return 0.5 * torch.exp(0.5 * log_u)

    def conjugate_sum_and_dlog_(self, log_u: Tensor) -> tuple[Tensor, Tensor]:
        root = log_u.mul_(0.5).exp_()
        return root.sum() - root.numel(), root.mul_(0.5)


class Tsallis(Divergence):
    """Tsallis of order a (a > 0, a != 1): f = (u^a - 1)/(a-1), f' = a u^(a-1)/(a-1).

    f*(f'(u)) = u^a + 1/(a-1). The order a = 1 is the limit KL (use ``kl``).
    """

    name = "tsallis"

    def __init__(self, order: float = 1.5) -> None:
        if isinstance(order, bool) or not isinstance(order, Real) or not math.isfinite(order):
            raise ValueError(f"tsallis_alpha must be a finite number > 0 and != 1, got {order!r}")
        order = float(order)
        if order <= 0:
            raise ValueError(
                f"tsallis_alpha must be > 0 (f(u) = (u^a - 1)/(a - 1) is convex only for "
                f"a > 0), got {order!r}"
            )
        if order == 1.0:
            raise ValueError(
                "tsallis_alpha must be != 1 (the Tsallis divergence of order 1 is KL: use "
                "divergence='kl'), got 1.0"
            )
        self.order = order

    def params(self) -> dict[str, float]:
        return {"order": self.order}

    def f(self, log_u: Tensor) -> Tensor:
        return torch.expm1(self.order * log_u) / (self.order - 1.0)

    def f_prime(self, log_u: Tensor) -> Tensor:
        a = self.order
        return (a / (a - 1.0)) * torch.exp((a - 1.0) * log_u)

    def conjugate(self, log_u: Tensor) -> Tensor:
        a = self.order
        return torch.exp(a * log_u) + 1.0 / (a - 1.0)

    def f_prime_dlog(self, log_u: Tensor) -> Tensor:
        a = self.order
        return a * torch.exp((a - 1.0) * log_u)

    def conjugate_dlog(self, log_u: Tensor) -> Tensor:
        a = self.order
        return a * torch.exp(a * log_u)

    def conjugate_sum_and_dlog_(self, log_u: Tensor) -> tuple[Tensor, Tensor]:
        a = self.order
        power = log_u.mul_(a).exp_()
        return power.sum() + power.numel() / (a - 1.0), power.mul_(a)


class VinczeLeCam(Divergence):
    """Vincze-Le Cam: f = (u-1)^2/(u+1), f' = (u-1)(u+3)/(u+1)^2, f*(f') = (u-1)(3u+1)/(u+1)^2.

    With :math:`s = u/(1+u)` = sigmoid(log u) these are :math:`f = (2s-1)^2/(1-s)`,
    :math:`f' = (2s-1)(3-2s)`, :math:`f^*(f') = 4s^2 - 1`, :math:`u f'' = 8s(1-s)^2`
    and :math:`u^2 f'' = 8s^2(1-s)`: bounded, and finite for any u.
    """

    name = "vlc"

    def f(self, log_u: Tensor) -> Tensor:
        s = torch.sigmoid(log_u)
        return (2.0 * s - 1.0).square() / torch.sigmoid(-log_u)

    def f_prime(self, log_u: Tensor) -> Tensor:
        s = torch.sigmoid(log_u)
        return (2.0 * s - 1.0) * (3.0 - 2.0 * s)

    def conjugate(self, log_u: Tensor) -> Tensor:
        return 4.0 * torch.sigmoid(log_u).square() - 1.0

    def f_prime_dlog(self, log_u: Tensor) -> Tensor:
        s = torch.sigmoid(log_u)
        return 8.0 * s * (1.0 - s).square()

    def conjugate_dlog(self, log_u: Tensor) -> Tensor:
        s = torch.sigmoid(log_u)
        return 8.0 * s.square() * (1.0 - s)

    def conjugate_sum_and_dlog_(self, log_u: Tensor) -> tuple[Tensor, Tensor]:
        s = log_u.sigmoid_()
        s2 = s.square()
        value = 4.0 * s2.sum() - s2.numel()
        return value, s.neg_().add_(1.0).mul_(s2).mul_(8.0)


#: The divergences by config name.
DIVERGENCES: Registry[type[Divergence]] = Registry("divergence")
for _name, _cls in (
    ("kl", KL),
    ("js", JensenShannon),
    ("pearson", Pearson),
    ("sq_hellinger", SquaredHellinger),
    ("tsallis", Tsallis),
    ("vlc", VinczeLeCam),
):
    DIVERGENCES.register(_name)(_cls)


def get_divergence(name: str, *, tsallis_alpha: float = 1.5) -> Divergence:
    """The divergence called ``name`` (see :data:`DIVERGENCES`).

    Args:
        name: one of ``kl``, ``js``, ``pearson``, ``sq_hellinger``, ``tsallis``, ``vlc``.
        tsallis_alpha: the Tsallis order a (> 0, != 1); ignored by the others.

    Raises:
        ValueError: an unknown name (the message lists the known ones), or a bad order.

    Example:
        >>> get_divergence("tsallis", tsallis_alpha=2.0)
        Tsallis(order=2.0)
    """
    if not isinstance(name, str) or name not in DIVERGENCES:
        known = ", ".join(repr(k) for k in DIVERGENCES)
        hint = ""
        if name in ("reverse_kl", "neyman", "neyman_chi2"):
            hint = " (reverse KL and Neyman chi^2 collapse features and are not offered)"
        raise ValueError(f"divergence must be one of {known}, got {name!r}{hint}")
    if name == "tsallis":
        return Tsallis(tsallis_alpha)
    return DIVERGENCES[name]()


def log_u_range(sigma: float, mu: float) -> tuple[float, float]:
    """:math:`[\\log\\mu - 2/\\sigma^2, \\log\\mu]`, the reachable log u on the unit sphere."""
    return math.log(mu) - 2.0 / sigma**2, math.log(mu)


_CHECKED = (
    "u",
    "f'(u)",
    "alpha * f*(f'(u))",
    "d f'(u)/d cos = u f''(u) / sigma^2",
    "alpha * d f*(f'(u))/d cos",
)


def _largest_magnitudes(div: Divergence, sigma: Tensor, mu: float, alpha: float) -> Tensor:
    """(len(_CHECKED), S): the largest magnitude of each checked quantity, per sigma (float64).

    The loss has -f'(u) per positive and alpha f*(f'(u)) per negative pair; their
    derivatives with respect to the cosine x.y are the log-u derivatives over sigma^2.
    Evaluated on 257 points of the reachable range (the ends included: every quantity
    is monotone in log u except VLC's bounded u f''). One batched evaluation, so that
    searching a bound costs a few tensor operations, not hundreds.
    """
    inv = (1.0 / sigma.square()).unsqueeze(-1)  # (S, 1)
    t = torch.linspace(0.0, 1.0, 257, dtype=torch.float64)
    log_u = math.log(mu) - 2.0 * inv * (1.0 - t)  # (S, 257), from log mu - 2/sigma^2 to log mu
    with torch.no_grad():
        values = torch.stack(
            torch.broadcast_tensors(
                torch.exp(log_u),
                div.f_prime(log_u).abs(),
                alpha * div.conjugate(log_u).abs(),
                div.f_prime_dlog(log_u).abs() * inv,
                alpha * div.conjugate_dlog(log_u).abs() * inv,
            )
        ).amax(dim=-1)
    return values.nan_to_num(nan=math.inf)


def _first_ok(ok: Tensor) -> int:
    """Index of the first True in a (S,) bool tensor whose later entries are all True."""
    return int(ok.to(torch.int8).argmax())


def _search(ok_on, lo: float, hi: float, geometric: bool) -> float:
    """The smallest x in [lo, hi] with ok_on(x) True (``ok_on`` maps (S,) to (S,) bool;
    False at lo, True at hi, monotone), to about 1e-4 relative, in two batched grids."""
    for _ in range(2):
        grid = (
            torch.logspace(math.log10(lo), math.log10(hi), 513, dtype=torch.float64)
            if geometric
            else torch.linspace(lo, hi, 513, dtype=torch.float64)
        )
        k = _first_ok(ok_on(grid))
        lo, hi = float(grid[max(0, k - 1)]), float(grid[k])
    return hi


def _round_up(x: float, digits: int = 4) -> str:
    """``x`` rounded up to ``digits`` significant digits, so that the printed bound holds."""
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return f"{math.ceil(x / step) * step:.{digits}g}"


def _tsallis_orders(orders: Tensor) -> Tsallis:
    """A Tsallis divergence whose order is a (S, 1) tensor (for a batched bound search)."""
    batch = Tsallis.__new__(Tsallis)
    batch.order = orders.unsqueeze(-1)  # type: ignore[assignment]
    return batch


def check_range(
    div: Divergence, *, sigma: float, mu: float, alpha: float = 1.0, owner: str = "FMICLLoss"
) -> None:
    r"""Reject settings under which f-MICL's values or gradients overflow float32.

    Over the reachable :math:`\log u \in [\log\mu - 2/\sigma^2, \log\mu]`, every
    :math:`u`, :math:`|f'(u)|`, :math:`\alpha |f^*(f'(u))|` and the derivatives of the
    last two with respect to the cosine must stay below :data:`FLOAT32_LIMIT`
    (float32's maximum over 2^10). For squared Hellinger,
    :math:`f'(u) = 1 - u^{-1/2}` reaches :math:`1 - e^{1/\sigma^2}/\sqrt{\mu}` and its
    derivative :math:`e^{1/\sigma^2}/(2\sigma^2\sqrt{\mu})`: with :math:`\mu = 1` the
    bound is :math:`\sigma \ge 0.1131`. Tsallis with order :math:`a < 1` has
    :math:`f' \propto u^{a-1}`, which overflows in the same way.

    Raises:
        ValueError: naming the bound on sigma (and on the Tsallis order, or on mu).
    """

    def ok_sigma(sigmas: Tensor) -> Tensor:
        return _largest_magnitudes(div, sigmas, mu, alpha).amax(dim=0) <= FLOAT32_LIMIT

    here = _largest_magnitudes(div, torch.tensor([sigma], dtype=torch.float64), mu, alpha)[:, 0]
    if float(here.max()) <= FLOAT32_LIMIT:
        return
    which = int(here.argmax())
    params = f"mu={mu!r}, alpha={alpha!r}"
    if isinstance(div, Tsallis):
        params += f", tsallis_alpha={div.order!r}"
    head = (
        f"{owner}: divergence {div.name!r} with sigma={sigma!r}, {params} overflows float32: "
        f"{_CHECKED[which]} reaches {float(here[which]):.3g} over the reachable range u in "
        f"[mu*exp(-2/sigma^2), mu] (limit {FLOAT32_LIMIT:.3g}, float32's maximum over 2^10)"
    )
    widest = 1e6
    if not bool(ok_sigma(torch.tensor([widest], dtype=torch.float64))):
        raise ValueError(f"{head}; mu or alpha is too large for float32 at any sigma")
    bound = _round_up(_search(ok_sigma, sigma, widest, True))
    message = f"{head}; needs sigma >= {bound} at these settings"
    if isinstance(div, Tsallis) and div.order < 1:
        sigmas = torch.tensor([sigma], dtype=torch.float64)

        def ok_order(orders: Tensor) -> Tensor:
            return (
                _largest_magnitudes(_tsallis_orders(orders), sigmas, mu, alpha).amax(0)
                <= FLOAT32_LIMIT
            )

        near_one = 1.0 - 1e-9
        if bool(ok_order(torch.tensor([near_one], dtype=torch.float64))):
            message += (
                f", or tsallis_alpha >= {_round_up(_search(ok_order, div.order, near_one, False))}"
            )
    raise ValueError(message)
