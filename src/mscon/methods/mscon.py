"""MSCon (SPEC section 4): one projection head and one SupCon loss per similarity."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from mscon import distributed
from mscon.config import AugmentConfig, Config, TaskWeightsConfig
from mscon.losses import MSConFMICLLoss, MSConLoss, MultiTaskCELoss
from mscon.methods.base import (
    Method,
    register_method,
    task_log_values,
    with_heads,
    with_task_weight_options,
)
from mscon.methods.consistency import LabelNoiseBank, consistency_weights
from mscon.methods.fmicl import FMICL_KEYS, FMICLOptions, tsallis_only
from mscon.models.heads import MultiHead, Prototypes

# method.weighting when the config leaves it out, per base loss: chosen by measurement
# (docs/results.md). f-MICL losses can be negative: only MSConFMICLLoss.WEIGHTINGS apply.
DEFAULT_WEIGHTING = {"supcon": "consistency", "fmicl": "equal"}
# keys of other sections MSCon sets when the config leaves them out, per base loss: the
# head options that end the coarse-head collapse (docs/results.md, issue 15)
DEFAULT_HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    "supcon": {"model.head_weight_norm": True, "train.head_weight_decay": 0.05},
    "fmicl": {},
}
SUPCON_KEYS = ("temperature", "form", "instance_mix")
CONSISTENCY_KEYS = ("consistency_bank", "consistency_neighbours", "consistency_every")


class MSConConfig(TaskWeightsConfig, FMICLOptions):
    """``method`` keys of ``mscon``.

    ``base_loss`` is each similarity's loss: ``supcon`` (the paper's; reads
    ``temperature``, ``form``, ``instance_mix``) or ``fmicl`` (supervised f-MICL;
    reads the f-MICL keys and allows only the weightings of
    :class:`~mscon.losses.MSConFMICLLoss`). ``weighting`` defaults per base loss
    (:data:`DEFAULT_WEIGHTING`): ``consistency`` for supcon, chosen by the
    issue-15 study (docs/results.md, "MSCon's default"), which also turns on the
    head options of :data:`DEFAULT_HEAD_OPTIONS` where the config leaves them out
    (:meth:`config_defaults`); ``uncertainty`` is the paper's form.
    ``head_center_momentum`` (None: off) subtracts a running mean from each head's
    output before the loss normalises it (:class:`~mscon.models.heads.RunningCenter`),
    against the coarse-head collapse.
    ``prototype_weight`` > 0 adds that times a cross-entropy on learned class
    prototypes of each head's embeddings (:class:`~mscon.models.heads.Prototypes`).
    ``weighting: consistency`` weights each similarity by how random its labels look
    to the encoder (:mod:`mscon.methods.consistency`) and reads ``consistency_bank``
    (images whose features are kept), ``consistency_neighbours`` (k) and
    ``consistency_every`` (steps between estimates).
    """

    name: Literal["mscon"] = "mscon"
    base_loss: Literal["supcon", "fmicl"] = "supcon"
    temperature: float = Field(0.1, gt=0)
    form: Literal["out", "in"] = "out"
    weighting: str = DEFAULT_WEIGHTING["supcon"]
    instance_similarity: bool = False
    instance_mix: float = Field(0.0, ge=0, lt=1)
    head_center_momentum: float | None = Field(None, ge=0, lt=1)
    prototype_weight: float = Field(0.0, ge=0)
    consistency_bank: int = Field(4096, ge=2)
    consistency_neighbours: int = Field(100, ge=1)
    consistency_every: int = Field(10, ge=1)

    @classmethod
    def default_weighting(cls, values: dict[str, Any]) -> str:
        return DEFAULT_WEIGHTING.get(values.get("base_loss", "supcon"), "relative")

    @classmethod
    def inactive_keys(cls, values: dict[str, Any]) -> set[str]:
        base = values.get("base_loss", "supcon")
        weighting = values.get("weighting") or cls.default_weighting(values)
        inactive = super().inactive_keys(values)
        if weighting != "consistency":
            inactive |= set(CONSISTENCY_KEYS)
        if base == "fmicl":
            return inactive | set(SUPCON_KEYS) | tsallis_only(values)
        return inactive | set(FMICL_KEYS)

    @model_validator(mode="before")
    @classmethod
    def _default_weighting(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("weighting") is None:
            values = {**values, "weighting": cls.default_weighting(values)}
        return values

    @model_validator(mode="after")
    def _weighting_fits_the_base_loss(self) -> MSConConfig:
        allowed = MSConFMICLLoss.WEIGHTINGS
        if self.base_loss == "fmicl" and self.weighting not in allowed:
            raise ValueError(
                f"weighting {self.weighting!r} does not apply to base_loss fmicl (its losses "
                f"can be negative and have no temperature); use one of {', '.join(allowed)}"
            )
        return self

    def num_tasks(self, config: Config) -> int:
        return len(config.data.similarities) + int(self.instance_similarity)

    def config_defaults(self) -> dict[str, Any]:
        """:data:`DEFAULT_HEAD_OPTIONS` of the base loss."""
        return dict(DEFAULT_HEAD_OPTIONS[self.base_loss])

    def consistency_kwargs(self) -> dict[str, int]:
        """:class:`~mscon.methods.consistency.LabelNoiseBank`'s options from this section."""
        return {
            "size": self.consistency_bank,
            "neighbours": self.consistency_neighbours,
            "every": self.consistency_every,
        }


@register_method("mscon")
class MSCon(Method):
    """Shared encoder, a head per similarity, learned similarity weights.

    With ``fmicl`` (the f-MICL keyword arguments) each similarity's loss is
    supervised f-MICL (:class:`~mscon.losses.MSConFMICLLoss`) instead of SupCon.
    With ``instance_similarity`` one more head (logged as ``instance``) treats
    the views of each image as its only positives (SimCLR's similarity), weighted
    like the labelled ones. With ``instance_mix`` > 0 each head's target mixes in
    the anchor's own views (see :class:`~mscon.losses.MSConLoss`). With
    ``head_center_momentum`` each head's output is centred by a running mean
    (:class:`~mscon.models.heads.RunningCenter`). With ``prototype_weight`` λ > 0
    the loss is the weighted MSCon loss plus λ Σ_c CE_c, CE_c the cross-entropy of
    the cosine logits of head c's embeddings (every view) against learned class
    prototypes at ``temperature`` (:class:`~mscon.models.heads.Prototypes`; missing
    labels left out): a gradient for a head where SupCon has none. With
    ``consistency`` (a dict of :class:`~mscon.methods.consistency.LabelNoiseBank`'s
    options) the loss's weighting must be ``consistency``: the method asks for one
    more view, the plain resized image (:meth:`view_recipes`), and each training step
    adds its encoder features (eval mode, no gradient) to the bank and, when it
    re-estimates, sets the weights to
    :func:`~mscon.methods.consistency.consistency_weights` of the estimates (the
    instance similarity counts as clean).
    """

    INSTANCE = "instance"
    config_class = MSConConfig

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        columns: list[str],
        *,
        temperature: float = 0.1,
        form: str = "out",
        weighting: str = "uncertainty",
        weights: list[float] | None = None,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        batch_norm: bool = False,
        weight_norm: bool = False,
        instance_similarity: bool = False,
        instance_mix: float = 0.0,
        head_center_momentum: float | None = None,
        num_classes: list[int] | None = None,
        prototype_weight: float = 0.0,
        fmicl: dict[str, Any] | None = None,
        consistency: dict[str, int] | None = None,
    ) -> None:
        super().__init__(encoder, feature_dim, columns)
        self.instance_similarity = instance_similarity
        heads = len(columns) + int(instance_similarity)
        self.heads = MultiHead(
            feature_dim,
            heads,
            projection_dim,
            hidden_dim,
            batch_norm,
            head_center_momentum,
            weight_norm,
        )
        self.prototype_weight = prototype_weight
        self.prototypes: Prototypes | None = None
        if prototype_weight > 0:
            if num_classes is None or len(num_classes) != len(columns):
                raise ValueError(
                    f"prototype_weight needs num_classes per column, got {num_classes}"
                )
            self.prototypes = Prototypes(num_classes, projection_dim, temperature)
            self.prototype_loss = MultiTaskCELoss(num_classes, weighting="equal")
        self.loss_fn: MSConLoss | MSConFMICLLoss
        if fmicl is not None:
            self.loss_fn = MSConFMICLLoss(
                heads, weighting, weights, **fmicl, gather_distributed=True
            )
        else:
            self.loss_fn = MSConLoss(
                heads,
                temperature=temperature,
                weighting=weighting,
                weights=weights,
                form=form,
                instance_mix=instance_mix,
                gather_distributed=True,
            )
        self.noise_bank: LabelNoiseBank | None = None
        if (consistency is not None) != (weighting == "consistency"):
            raise ValueError("MSCon: consistency options go with weighting='consistency' only")
        if consistency is not None:
            if num_classes is None or len(num_classes) != len(columns):
                raise ValueError(
                    f"weighting consistency needs num_classes per column, got {num_classes}"
                )
            self.noise_bank = LabelNoiseBank(num_classes, feature_dim, **consistency)

    @classmethod
    def from_config(
        cls, config: Config, encoder: nn.Module, feature_dim: int, num_classes: list[int]
    ) -> MSCon:
        m: MSConConfig = config.method  # type: ignore[assignment]
        method = with_heads(
            cls,
            config,
            encoder,
            feature_dim,
            temperature=m.temperature,
            form=m.form,
            weighting=m.weighting,
            weights=m.weights,
            instance_similarity=m.instance_similarity,
            instance_mix=m.instance_mix,
            head_center_momentum=m.head_center_momentum,
            num_classes=num_classes,
            prototype_weight=m.prototype_weight,
            fmicl=m.fmicl_kwargs() if m.base_loss == "fmicl" else None,
            consistency=m.consistency_kwargs() if m.weighting == "consistency" else None,
        )
        return with_task_weight_options(method, m)

    def forward(
        self, views: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if self.noise_bank is not None:  # the last view is the plain image, for the bank
            views, plain = views[:, :-1], views[:, -1]
            if self.training:
                self._update_consistency_weights(plain, labels, index)
        batch, num_views = views.shape[:2]
        z = self.heads(self.encode_views(views).flatten(0, 1))  # (C, B*V, d)
        z = z.view(z.shape[0], batch, num_views, -1)
        prototype_loss = None
        if self.prototypes is not None:  # per-rank mean: DDP's gradient average is global
            columns = len(self.columns)
            logits = self.prototypes(z[:columns].flatten(1, 2))  # (B*V, K_c) per column
            view_labels = labels.repeat_interleave(num_views, dim=0)
            prototype_loss = self.prototype_loss(logits, view_labels)
        if self.instance_similarity:  # one class per image of the global batch
            first = distributed.row_offset(batch, labels.device)
            instance = torch.arange(first, first + batch, device=labels.device).unsqueeze(1)
            labels = torch.cat([labels, instance], dim=1)
        loss = self.loss_fn(z, labels)
        if prototype_loss is not None:
            loss = loss + self.prototype_weight * prototype_loss
        return {"loss": loss}

    def view_recipes(self, augment: AugmentConfig) -> list[str]:
        """``augment``'s views, plus a plain (resized) one with weighting ``consistency``."""
        return augment.recipes() + ["none"] * (self.noise_bank is not None)

    def _update_consistency_weights(
        self, plain: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None
    ) -> None:
        """Feed the bank the encoder's features of the un-augmented images (eval mode:
        batch-norm statistics untouched; augmented views blur what the encoder knows,
        e.g. crops change the apparent ``size``: docs/results.md)
        and, when it re-estimates, set the loss's weights."""
        assert self.noise_bank is not None
        if index is None:
            raise ValueError("MSCon: weighting 'consistency' needs each image's dataset index")
        modes = [(m, m.training) for m in self.encoder.modules()]
        self.encoder.eval()
        try:
            with torch.no_grad():
                features = self.encoder(plain)
        finally:
            for module, training in modes:
                module.training = training
        if self.noise_bank.update(features, labels, index):
            noise = self.noise_bank.noise
            if self.instance_similarity:  # the instance labels are exact
                noise = torch.cat([noise, noise.new_zeros(1)])
            self.loss_fn.weighting.set_weights(consistency_weights(noise))

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        return [self.loss_fn.log_vars]

    def log_values(self) -> dict[str, Any]:
        values = task_log_values(
            self.columns + [self.INSTANCE] * self.instance_similarity, self.loss_fn
        )
        if self.noise_bank is not None:
            noise = self.noise_bank.noise.tolist()
            values["label_noise"] = dict(zip(self.columns, noise, strict=True))
        return values
