"""SCE and MoCo (SPEC sections 7-8): a momentum teacher, a queue and soft similarity targets.

The student (encoder + projection head, optionally a predictor) sees view 1, the
EMA teacher (a frozen copy of encoder + head) sees view 0. Views: the method's
own recipe is ``[weak, strong]`` (teacher weak, student strong, as in SPEC
section 7) unless ``augment.views`` gives a recipe per view (a list of two).

After each optimiser step (the loop's ``after_step`` hook) the teacher moves
towards the student with the momentum of the step (constant, or SPEC's cosine
schedule to 1) and the step's teacher keys enter the FIFO queue with their image
ids. The teacher's BatchNorm runs on shuffled sub-batches (``bn_splits``; MoCo's
shuffle BN in single-process form, see :func:`mscon.models.momentum.shuffled_forward`)
so that a key's normalisation statistics never come from exactly the batch that
normalised its query. The permutation is drawn from a generator seeded by the
step count, so a resumed run replays it.

Under torchrun the loss contrasts with the teacher keys of all ranks, the
teacher's batch is shuffled across ranks (:func:`~mscon.models.momentum.shuffled_keys`)
and every rank enqueues the keys of all ranks in rank order, so the queues stay
identical and hold the keys one process would hold.

``symmetric: true`` adds the swapped term (student on view 0, teacher on view 1);
the two terms are **averaged**, and only the first term's keys (the teacher's
view-0 keys) are enqueued, so the queue fills at B keys per step either way.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from mscon.config import AugmentConfig, Config, MethodConfig
from mscon.losses import SCELoss
from mscon.methods.base import Method, register_method, with_heads
from mscon.models.heads import ProjectionHead
from mscon.models.momentum import (
    MOMENTUM_SCHEDULES,
    EMATeacher,
    MomentumQueue,
    gather_keys,
    predictor_head,
    shuffled_keys,
)

TEACHER_VIEW, STUDENT_VIEW = 0, 1


class MomentumConfig(MethodConfig):
    """Keys shared by ``moco`` and ``sce``: the teacher, the queue, the views."""

    queue_size: int = Field(4096, ge=0)
    momentum: float = Field(0.99, ge=0, le=1)
    momentum_schedule: Literal["constant", "cosine"] = "constant"
    predictor: bool = False
    symmetric: bool = False
    bn_splits: int = Field(4, ge=1)

    def check_config(self, config: Config) -> None:
        batch = config.train.batch_size
        if self.queue_size % batch:
            raise ValueError(
                f"method.queue_size: {self.queue_size} must be 0 or a multiple of "
                f"train.batch_size ({batch})"
            )
        if len(config.augment.recipes()) != 2:
            raise ValueError(
                f"augment.views: {self.name} uses 2 views (teacher, student), "
                f"got {config.augment.views}"
            )
        if config.model.sync_batch_norm:
            raise ValueError(
                f"model.sync_batch_norm: {self.name} keeps the teacher's BatchNorm statistics "
                "apart from the student's by shuffling the batch (shuffle BN); SyncBatchNorm "
                "would share them again. Leave it false"
            )
        if self.bn_splits > batch // 2:
            raise ValueError(
                f"method.bn_splits: {self.bn_splits} sub-batches of a batch of {batch} leave "
                "fewer than 2 images for BatchNorm; use at most train.batch_size / 2"
            )


class SCEConfig(MomentumConfig):
    """``method`` keys of ``sce`` (SPEC section 7's CIFAR-10 defaults)."""

    name: Literal["sce"] = "sce"
    temperature: float = Field(0.1, gt=0)
    temperature_m: float = Field(0.05, gt=0)
    coeff: float = Field(0.5, ge=0, le=1)


class MoCoConfig(MomentumConfig):
    """``method`` keys of ``moco`` (MoCo v2: InfoNCE, SCE with coeff = 1)."""

    name: Literal["moco"] = "moco"
    temperature: float = Field(0.2, gt=0)


@register_method("sce")
class SCE(Method):
    """Student and EMA teacher, a queue of teacher keys, :class:`~mscon.losses.SCELoss`."""

    config_class = SCEConfig

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        columns: list[str],
        *,
        temperature: float = 0.1,
        temperature_m: float = 0.05,
        coeff: float = 0.5,
        queue_size: int = 4096,
        momentum: float = 0.99,
        momentum_schedule: str = "constant",
        predictor: bool = False,
        symmetric: bool = False,
        bn_splits: int = 4,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        batch_norm: bool = False,
        weight_norm: bool = False,
    ) -> None:
        super().__init__(encoder, feature_dim, columns)
        self.head = ProjectionHead(feature_dim, projection_dim, hidden_dim, batch_norm, weight_norm)
        self.predictor = (
            predictor_head(projection_dim, hidden_dim or feature_dim) if predictor else None
        )
        self.teacher = EMATeacher(self._student_trunk())
        self.queue = MomentumQueue(queue_size, projection_dim) if queue_size else None
        self.loss_fn = SCELoss(temperature, temperature_m, coeff, gather_distributed=True)
        self.momentum = float(momentum)
        self.schedule = MOMENTUM_SCHEDULES[momentum_schedule]
        self.symmetric = bool(symmetric)
        self.bn_splits = int(bn_splits)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._last_momentum = self.momentum

    @classmethod
    def loss_options(cls, m: Any) -> dict[str, Any]:
        return {"temperature": m.temperature, "temperature_m": m.temperature_m, "coeff": m.coeff}

    @classmethod
    def from_config(
        cls, config: Config, encoder: nn.Module, feature_dim: int, num_classes: list[int]
    ) -> SCE:
        m: MomentumConfig = config.method  # type: ignore[assignment]
        return with_heads(
            cls,
            config,
            encoder,
            feature_dim,
            **cls.loss_options(m),
            queue_size=m.queue_size,
            momentum=m.momentum,
            momentum_schedule=m.momentum_schedule,
            predictor=m.predictor,
            symmetric=m.symmetric,
            bn_splits=m.bn_splits,
        )

    @property
    def trained_columns(self) -> list[str]:
        return []

    def view_recipes(self, augment: AugmentConfig) -> list[str]:
        if isinstance(augment.views, list):
            return list(augment.views)
        return ["weak", "strong"]

    def _student_trunk(self) -> nn.Sequential:
        """Encoder + projection head: what the teacher copies (same parameter names)."""
        return nn.Sequential(self.encoder, self.head)

    def _student(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.encoder(x))
        return self.predictor(z) if self.predictor is not None else z

    @torch.no_grad()
    def _keys(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return shuffled_keys(self.teacher, x, self.bn_splits, generator)

    def _term(
        self,
        student_view: torch.Tensor,
        teacher_view: torch.Tensor,
        index: torch.Tensor | None,
        seed: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self._keys(teacher_view, seed)
        queue = queue_index = None
        if self.queue is not None and len(self.queue):
            queue = self.queue.keys
            queue_index = self.queue.index if index is not None else None
        loss = self.loss_fn(
            self._student(student_view), keys, queue, index=index, queue_index=queue_index
        )
        return loss, keys

    def forward(
        self, views: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        seed = 1_000_003 * int(self.steps) + 7
        loss, keys = self._term(views[:, STUDENT_VIEW], views[:, TEACHER_VIEW], index, seed)
        if self.symmetric:
            swapped, _ = self._term(views[:, TEACHER_VIEW], views[:, STUDENT_VIEW], index, seed + 1)
            loss = 0.5 * (loss + swapped)
        if self.training:
            self._pending = (keys, index)
        return {"loss": loss}

    def after_step(self, step: int, total_steps: int) -> None:
        self._last_momentum = self.schedule(self.momentum, step, total_steps)
        self.teacher.update(self._student_trunk(), self._last_momentum)
        if self.queue is not None and self._pending is not None:
            keys, index = self._pending
            self.queue.enqueue(*gather_keys(keys, index))  # every rank's keys, rank order
        self._pending = None
        self.steps.fill_(step)

    def log_values(self) -> dict[str, Any]:
        held = len(self.queue) if self.queue is not None else 0
        return {"momentum": self._last_momentum, "queue_filled": held}


@register_method("moco")
class MoCo(SCE):
    """MoCo v2: InfoNCE of the student against the teacher's key and the queue (coeff = 1)."""

    config_class = MoCoConfig

    @classmethod
    def loss_options(cls, m: Any) -> dict[str, Any]:
        return {"temperature": m.temperature, "coeff": 1.0}
