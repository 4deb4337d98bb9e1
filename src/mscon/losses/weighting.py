r"""Task weighting shared by MSConLoss and MultiTaskCELoss (SPEC sections 4 and 5).

:class:`TaskWeighting` turns C per-task losses :math:`L_c` (and which tasks had a
valid anchor or row in the batch) into one scalar. It owns the learned
:math:`s_c = \log\sigma_c^2` (``log_vars``, initialised to 0; put it in a
parameter group without weight decay). The modes (the config value
``method.weighting``):

* ``uncertainty`` (Kendall et al. 2018, the MSCon paper's form):
  :math:`L = \sum_c [e^{-s_c} L_c + s_c/2]`; effective multiplier :math:`e^{-s_c}`.
* ``temperature``: :math:`\sigma_c^2 = e^{s_c}` scales the task's temperature
  (contrastive: :math:`\tau e^{s_c}` inside the softmax; cross-entropy: logits
  times :math:`e^{-s_c}`), plus :math:`s_c/2`:
  :math:`L = \sum_c [L_c(\tau e^{s_c}) + s_c/2]`. The loss itself is not
  multiplied, so the effective multiplier on :math:`L_c` is 1;
  :meth:`TaskWeighting.temperature_factors` gives :math:`e^{s_c}`. :math:`s_c`
  is clamped to [-3, 3] (no gradient beyond) so a collapsed head cannot drive
  the temperature to 0.
* ``equal``: :math:`L = \sum_c L_c` (s fixed at 0, not trained).
* ``fixed``: :math:`L = \sum_c w_c L_c` with user weights :math:`w_c \ge 0`.
* ``normalized``: :math:`s_c` learns on the detached losses,
  :math:`\sum_c [e^{-s_c} \mathrm{sg}(L_c) + s_c/2]` (so :math:`s_c \to \log 2L_c`),
  and the encoder sees :math:`\sum_c m_c L_c` with the detached multipliers
  :math:`m = C \cdot \mathrm{softmax}(-s)` (they sum to C: the encoder's total
  gradient is not shrunk, only shared out).
* ``relative``: ``normalized`` on the relative excess
  :math:`r_c = (L_c - H_c)/(U_c - H_c)`, with :math:`U_c` the loss at chance
  (:math:`\log(N-1)`, that of a collapsed head): :math:`s_c \to \log 2r_c`,
  multipliers :math:`C\cdot\mathrm{softmax}(-s) \propto 1/r_c`. :math:`r_c` is
  about 1 for a similarity the encoder cannot learn (noisy labels) and falls as it
  is learnt, whatever its number of classes. Batches where :math:`U_c - H_c`
  is about 0 (every view a positive) do not move :math:`s_c`.
* ``consistency``: :math:`L = \sum_c w_c L_c` with weights the caller supplies
  (:meth:`TaskWeighting.set_weights`; ones until then). MSCon sets them each
  step from how random each similarity's labels look to the encoder
  (:mod:`mscon.methods.consistency`), a signal the losses cannot compute.
* ``excess``: the uncertainty form on the excess over the loss's floor,
  :math:`\sum_c [e^{-s_c} (L_c - H_c) + s_c/2]`, with :math:`H_c` the mean of
  :math:`\log|P(i)|` over the valid anchors (the L_out floor; SPEC section 4).
  The encoder's gradient is that of ``uncertainty``; only the weights differ.

A task with no valid anchor in the batch contributes nothing, its
:math:`s_c/2` term included (else :math:`s_c` drifts down without bound).

New modes are classes registered with :func:`register_weighting_mode`; the
loss modules only call ``task_weights()``, ``temperature_factors()`` and the
module itself, so a new mode is a new config value and nothing else.

Example:
    >>> import torch
    >>> w = TaskWeighting(2, "uncertainty")
    >>> w(torch.tensor([1.0, 2.0]), torch.tensor([True, True]))
    tensor(3., grad_fn=<SumBackward0>)
    >>> w.task_weights()
    tensor([1., 1.], grad_fn=<ExpBackward0>)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from mscon.registry import Registry

__all__ = [
    "WEIGHTING_MODES",
    "WeightingMode",
    "register_weighting_mode",
    "TaskWeighting",
    "WeightedTaskLoss",
]


class WeightingMode:
    """How a mode maps (losses, valid) to a total; subclass and register to add one.

    Class attributes:
        name: the config value.
        learnable: whether ``log_vars`` is trained (``requires_grad``).
        uses_weights: whether the mode takes user ``weights`` (C,).
        supplied: whether the weights come from the caller each step
            (:meth:`TaskWeighting.set_weights`).
    """

    name: ClassVar[str] = ""
    learnable: ClassVar[bool] = False
    uses_weights: ClassVar[bool] = False
    supplied: ClassVar[bool] = False
    needs_floors: ClassVar[bool] = False

    def task_weights(self, w: TaskWeighting) -> Tensor:
        """(C,) effective multiplier on each L_c."""
        return torch.ones_like(w.log_vars)

    def temperature_factors(self, w: TaskWeighting) -> Tensor:
        """(C,) factor on each task's temperature (1 unless the mode scales it)."""
        return torch.ones_like(w.log_vars)

    def regularizer(self, w: TaskWeighting) -> Tensor:
        """(C,) term added per task with a valid anchor (s_c / 2 for learned modes)."""
        return torch.zeros_like(w.log_vars)

    def combine(
        self,
        w: TaskWeighting,
        losses: Tensor,
        valid: Tensor,
        floors: Tensor,
        chance: Tensor,
        overall: Tensor,
    ) -> Tensor:
        """Total loss: sum over valid tasks of ``task_weight * L_c + regularizer``.

        ``losses`` carry the gradient (this rank's share times the world size under
        ``gather_distributed``); ``overall`` (C,) are the detached losses of the whole
        batch (their mean over ranks). A mode whose total is not linear in ``losses``
        (a clamp, a ratio) must compute that part from ``overall``, or ranks holding
        different shares would disagree with one process.
        """
        per_task = self.task_weights(w).to(losses.dtype) * losses + self.regularizer(w).to(
            losses.dtype
        )
        return (valid.to(losses.dtype) * per_task).sum()


WEIGHTING_MODES: Registry[type[WeightingMode]] = Registry("method.weighting")


def register_weighting_mode(cls: type[WeightingMode]) -> type[WeightingMode]:
    """Class decorator: make ``cls`` available as ``weighting=cls.name``."""
    if not cls.name:
        raise ValueError(f"register_weighting_mode: {cls.__name__}.name must be set")
    return WEIGHTING_MODES.register(cls.name)(cls)


@register_weighting_mode
class UncertaintyWeighting(WeightingMode):
    """``sum_c exp(-s_c) L_c + s_c / 2`` (Kendall et al. 2018; SPEC section 4)."""

    name = "uncertainty"
    learnable = True

    def task_weights(self, w: TaskWeighting) -> Tensor:
        return torch.exp(-w.log_vars)

    def regularizer(self, w: TaskWeighting) -> Tensor:
        return 0.5 * w.log_vars


@register_weighting_mode
class TemperatureWeighting(WeightingMode):
    """``sum_c L_c(tau exp(s_c)) + s_c / 2``: sigma_c^2 scales the temperature (SPEC 4).

    s_c is used clamped to [S_MIN, S_MAX] in both terms (no gradient beyond): a
    collapsed head's loss is log(N - 1) at every temperature, so the s_c / 2 term
    alone would drive s_c, and the temperature, towards 0 until the logits
    overflow (measured: a NaN loss at step 55 on the synthetic suite).
    """

    name = "temperature"
    learnable = True
    S_MIN: ClassVar[float] = -3.0  # temperature factor >= e^-3 ~ 0.05
    S_MAX: ClassVar[float] = 3.0  # temperature factor <= e^3 ~ 20

    def _bounded(self, w: TaskWeighting) -> Tensor:
        return w.log_vars.clamp(self.S_MIN, self.S_MAX)

    def temperature_factors(self, w: TaskWeighting) -> Tensor:
        return torch.exp(self._bounded(w))

    def regularizer(self, w: TaskWeighting) -> Tensor:
        return 0.5 * self._bounded(w)


@register_weighting_mode
class EqualWeighting(WeightingMode):
    """``sum_c L_c`` (the plain-sum ablation)."""

    name = "equal"


@register_weighting_mode
class NormalizedWeighting(WeightingMode):
    """Encoder: ``sum_c m_c L_c``, ``m = C softmax(-s)`` detached; s: uncertainty on sg(L)."""

    name = "normalized"
    learnable = True

    def task_weights(self, w: TaskWeighting) -> Tensor:
        return w.num_tasks * torch.softmax(-w.log_vars, dim=0)

    def combine(
        self,
        w: TaskWeighting,
        losses: Tensor,
        valid: Tensor,
        floors: Tensor,
        chance: Tensor,
        overall: Tensor,
    ) -> Tensor:
        s = w.log_vars.to(losses.dtype)
        encoder = self.task_weights(w).detach().to(losses.dtype) * losses
        # s_c learns on the whole batch's losses: the same on every rank, so that DDP's
        # average of the s gradients is the single-process gradient
        signal, learns = self.signal(overall.to(losses.dtype), valid, floors, chance)
        weights = torch.exp(-s) * signal + 0.5 * s
        return (valid.to(losses.dtype) * encoder).sum() + (learns.to(losses.dtype) * weights).sum()

    def signal(
        self, losses: Tensor, valid: Tensor, floors: Tensor, chance: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(C,) what s_c learns on (detached) and (C,) bool which tasks update s_c."""
        return losses, valid


@register_weighting_mode
class ExcessWeighting(UncertaintyWeighting):
    """``sum_c exp(-s_c) (L_c - H_c) + s_c / 2``: uncertainty on the excess loss."""

    name = "excess"
    needs_floors = True

    def combine(
        self,
        w: TaskWeighting,
        losses: Tensor,
        valid: Tensor,
        floors: Tensor,
        chance: Tensor,
        overall: Tensor,
    ) -> Tensor:
        excess = losses - floors.to(losses.dtype)
        return super().combine(w, excess, valid, floors, chance, overall)


@register_weighting_mode
class RelativeWeighting(NormalizedWeighting):
    """``normalized`` on the relative excess ``r_c = (L_c - H_c) / (U_c - H_c)``.

    U_c is the loss at chance (log(N - 1), a constant or collapsed embedding);
    r_c is 0 at the floor and about 1 at chance whatever the granularity, so the
    weights ``C softmax(-s)`` (``s_c -> log 2 r_c``) follow how far each similarity
    is from being learnable, not its number of classes.
    """

    name = "relative"
    needs_floors = True
    MIN_RANGE: ClassVar[float] = 1e-3  # U_c - H_c below this: the batch says nothing

    def signal(
        self, losses: Tensor, valid: Tensor, floors: Tensor, chance: Tensor
    ) -> tuple[Tensor, Tensor]:
        span = (chance - floors).to(losses.dtype)
        informative = valid & torch.isfinite(span) & (span > self.MIN_RANGE)
        safe_span = torch.where(informative, span, torch.ones_like(span))
        relative = ((losses - floors.to(losses.dtype)) / safe_span).clamp_min(0.0)
        return relative, informative


@register_weighting_mode
class FixedWeighting(WeightingMode):
    """``sum_c w_c L_c`` with user-given weights."""

    name = "fixed"
    uses_weights = True

    def task_weights(self, w: TaskWeighting) -> Tensor:
        return w.fixed_weights.clone()


@register_weighting_mode
class SuppliedWeighting(FixedWeighting):
    """``sum_c w_c L_c`` with weights the caller sets (MSCon: from label consistency)."""

    name = "consistency"
    uses_weights = False
    supplied = True


class TaskWeighting(nn.Module):
    r"""Combine C task losses into one scalar (SPEC section 4).

    Args:
        num_tasks: C >= 1.
        mode: a key of :data:`WEIGHTING_MODES` (``uncertainty``, ``temperature``,
            ``equal``, ``fixed``).
        weights: (C,) non-negative finite weights, required for ``fixed`` and
            rejected otherwise.
        owner: class name used in error messages.

    Attributes:
        log_vars: ``nn.Parameter`` (C,), :math:`s_c = \log\sigma_c^2`, zeros at start;
            ``requires_grad`` only in learned modes.
        fixed_weights: (C,) buffer, the ``fixed`` weights, or the supplied ones of
            ``consistency`` (ones otherwise).

    Calling the module with ``losses`` (C,) and ``valid`` (C,) bool returns
    :math:`\sum_{c:\,valid_c} [m_c L_c + r_c]`, with the mode's multiplier
    :math:`m_c` (:meth:`task_weights`) and regulariser :math:`r_c`.

    Example:
        >>> import torch
        >>> w = TaskWeighting(3, "fixed", weights=[1.0, 0.5, 0.0])
        >>> w(torch.tensor([2.0, 2.0, 2.0]), torch.tensor([True, True, True]))
        tensor(3.)
    """

    def __init__(
        self,
        num_tasks: int,
        mode: str = "uncertainty",
        weights: Sequence[float] | Tensor | None = None,
        *,
        owner: str = "TaskWeighting",
    ) -> None:
        super().__init__()
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"{owner}: num_tasks must be an integer >= 1, got {num_tasks!r}")
        if not isinstance(mode, str) or mode not in WEIGHTING_MODES:
            known = ", ".join(repr(k) for k in WEIGHTING_MODES)
            raise ValueError(f"{owner}: weighting must be one of {known}, got {mode!r}")
        strategy = WEIGHTING_MODES[mode]()
        fixed = torch.ones(num_tasks)
        if strategy.uses_weights:
            if weights is None:
                raise ValueError(
                    f"{owner}: weights must be given for weighting={mode!r}: "
                    f"{num_tasks} non-negative numbers, got None"
                )
            fixed = self._check_weights(owner, weights, num_tasks)
        elif weights is not None:
            raise ValueError(
                f"{owner}: weights are only used with weighting='fixed', got weights={weights!r} "
                f"with weighting={mode!r}"
            )
        self.num_tasks = num_tasks
        self.mode = mode
        self.strategy = strategy
        self.log_vars = nn.Parameter(torch.zeros(num_tasks), requires_grad=strategy.learnable)
        self.register_buffer("fixed_weights", fixed)

    @staticmethod
    def _check_weights(owner: str, weights: Sequence[float] | Tensor, c: int) -> Tensor:
        try:
            values = [
                float(x) for x in (weights.tolist() if isinstance(weights, Tensor) else weights)
            ]
        except (TypeError, ValueError):
            raise ValueError(
                f"{owner}: weights must be a sequence of {c} non-negative numbers, got {weights!r}"
            ) from None
        if len(values) != c:
            raise ValueError(
                f"{owner}: weights must have one value per task ({c}), got {len(values)}: {values}"
            )
        if any(not math.isfinite(x) or x < 0 for x in values):
            raise ValueError(f"{owner}: weights must be finite and non-negative, got {values}")
        return torch.tensor(values, dtype=torch.float32)

    def task_weights(self) -> Tensor:
        """(C,) effective multiplier on each L_c (exp(-s_c), 1, or the fixed weights)."""
        return self.strategy.task_weights(self)

    def set_weights(self, weights: Tensor) -> None:
        """Set the (C,) weights of a mode with supplied weights (``consistency``)."""
        if not self.strategy.supplied:
            raise ValueError(
                f"TaskWeighting: set_weights is for weighting='consistency', not {self.mode!r}"
            )
        if tuple(weights.shape) != (self.num_tasks,) or not bool(
            torch.isfinite(weights).all() and (weights >= 0).all()
        ):
            raise ValueError(
                f"TaskWeighting: set_weights needs {self.num_tasks} finite non-negative "
                f"weights, got {weights.tolist()}"
            )
        self.fixed_weights.copy_(weights.detach())

    def temperature_factors(self) -> Tensor:
        """(C,) factor on each task's temperature (exp(s_c) for ``temperature``, else 1)."""
        return self.strategy.temperature_factors(self)

    @property
    def needs_floors(self) -> bool:
        """Whether the mode uses the per-task loss floors H_c (``excess``)."""
        return self.strategy.needs_floors

    def forward(
        self,
        losses: Tensor,
        valid: Tensor,
        floors: Tensor | None = None,
        chance: Tensor | None = None,
        overall: Tensor | None = None,
    ) -> Tensor:
        """Total loss from per-task ``losses`` (C,), ``valid`` (C,) bool, ``floors`` (C,).

        ``floors`` (the per-task lower bounds H_c, zeros when None) and ``chance``
        (C,) (each task's loss at a uniform prediction, e.g. log(N - 1) for a
        contrastive loss over N - 1 candidates; infinite when None) only matter
        for modes with ``needs_floors``. ``overall`` (C,) are the detached per-task
        losses of the whole batch over all ranks (``losses.detach()`` when None, right in
        one process); modes that are not linear in ``losses`` read them from there.
        """
        if tuple(losses.shape) != (self.num_tasks,) or tuple(valid.shape) != (self.num_tasks,):
            raise ValueError(
                f"TaskWeighting: losses and valid must have shape (C,) = ({self.num_tasks},), "
                f"got {tuple(losses.shape)} and {tuple(valid.shape)}"
            )
        if floors is None:
            floors = torch.zeros_like(losses)
        if chance is None:
            chance = torch.full_like(losses, float("inf"))
        if overall is None:
            overall = losses.detach()
        return self.strategy.combine(self, losses, valid.to(torch.bool), floors, chance, overall)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, mode={self.mode!r}"


class WeightedTaskLoss(nn.Module):
    """Base of the losses that weight C task losses (MSConLoss, MultiTaskCELoss).

    It owns the :class:`TaskWeighting`, the ``last_losses`` / ``last_valid``
    record of the last call (over all ranks) and :meth:`combine`, so that a
    subclass only computes its per-task means.

    Args:
        num_tasks: C >= 1.
        weighting, weights: as :class:`TaskWeighting`.
        owner: class name for error messages.
        gather_distributed: the per-task means were taken over all ranks.
    """

    def __init__(
        self,
        num_tasks: int,
        weighting: str,
        weights: Sequence[float] | Tensor | None,
        *,
        owner: str,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.gather_distributed = bool(gather_distributed)
        self.weighting = TaskWeighting(num_tasks, weighting, weights, owner=owner)
        self.register_buffer("last_losses", torch.zeros(num_tasks), persistent=False)
        self.register_buffer(
            "last_valid", torch.zeros(num_tasks, dtype=torch.bool), persistent=False
        )

    @property
    def log_vars(self) -> nn.Parameter:
        """(C,) learned :math:`s_c = \\log\\sigma_c^2` (the weighting's parameter)."""
        return self.weighting.log_vars

    def task_weights(self) -> Tensor:
        """(C,) effective multiplier on each task loss: exp(-s_c), ones, or the fixed weights."""
        return self.weighting.task_weights()

    def combine(
        self,
        losses: Tensor,
        counts: Tensor,
        floors: Tensor | None = None,
        chance: Tensor | None = None,
    ) -> Tensor:
        """Record the per-task ``losses`` (C,) and combine them by the weighting.

        ``counts`` (C,) are the valid anchors (rows) per task over all ranks; a
        task with none is left out. ``losses`` are this rank's shares (times the
        world size) under ``gather_distributed``; the recorded values are their
        mean over ranks, the single-process losses.
        """
        from mscon import distributed

        valid = counts > 0
        detached = losses.detach()
        if self.gather_distributed and distributed.is_distributed():
            detached = distributed.all_reduce_sum(detached) / distributed.world_size()
        self.last_losses = detached.to(self.last_losses.device, torch.float32)
        self.last_valid = valid.to(self.last_valid.device)
        return self.weighting(losses, valid, floors, chance, overall=detached)
