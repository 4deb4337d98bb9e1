"""The interface every training method implements, and the registry of methods.

A method owns the model parts it trains (the shared encoder and its heads) and
maps one batch to a dict of losses; the training loop never knows which method
it runs. Methods know nothing about files or the command line.

Adding a method is one module in this package that defines a :class:`Method`
subclass with its typed config section (a :class:`~mscon.config.MethodConfig`
subclass whose ``name`` is a ``Literal`` of the registered name) and decorates
it with ``@register_method("name")``; ``mscon/methods/__init__.py`` imports it.

What a method may ask of the loop (none of it needs an edit of ``train.py``):

* :meth:`Method.view_recipes`: the augmentation recipe of each view (e.g. a
  teacher's weak view and a student's strong one);
* :meth:`Method.after_step`: called after every optimiser step with the step
  count and the total (an EMA teacher on a cosine momentum schedule, a queue);
  state the hook keeps in buffers, parameters or ``get_extra_state`` is in the
  method's ``state_dict`` and so in every checkpoint, restored on resume;
* :meth:`Method.no_weight_decay_parameters` with ``task_weight_lr`` and
  ``task_weight_warmup_epochs``: learned task weights in their own optimiser group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from mscon.registry import Registry

if TYPE_CHECKING:
    from mscon.config import AugmentConfig, Config, MethodConfig, TaskWeightsConfig

__all__ = [
    "METHODS",
    "Method",
    "with_heads",
    "register_method",
    "task_log_values",
    "with_task_weight_options",
]

METHODS: Registry[type[Method]] = Registry("method.name")


def register_method(name: str):
    """Class decorator: make a :class:`Method` subclass available as ``method.name: NAME``."""

    def add(cls: type[Method]) -> type[Method]:
        declared = cls.config_class.model_fields["name"].annotation
        if getattr(declared, "__args__", None) != (name,):
            raise ValueError(
                f"register_method: {cls.__name__}.config_class.name must be Literal[{name!r}]"
            )
        return METHODS.register(name)(cls)

    return add


def with_heads(
    cls: type[Method], config: Config, encoder: nn.Module, feature_dim: int, **options: Any
) -> Method:
    """``cls(encoder, feature_dim, data.similarities, **options)`` with ``config.model``'s
    projection-head options (``projection_dim``, ``hidden_dim``, ``batch_norm``,
    ``weight_norm``)."""
    return cls(
        encoder,
        feature_dim,
        list(config.data.similarities),
        projection_dim=config.model.projection_dim,
        hidden_dim=config.model.hidden_dim,
        batch_norm=config.model.head_batch_norm,
        weight_norm=config.model.head_weight_norm,
        **options,
    )


class Method(nn.Module):
    """Base class: an encoder plus method-specific heads and loss.

    Subclasses set ``config_class``, implement :meth:`from_config` and
    :meth:`forward`, and override ``trained_columns`` when they do not learn from
    every column handed to them.

    Args:
        encoder: maps float images (n, 3, H, W) to features (n, D).
        feature_dim: D.
        columns: the label columns handed to the method, in the order of the
            batch's label matrix (``data.similarities``).
    """

    config_class: ClassVar[type[MethodConfig]]
    task_weight_lr: float | None = None  # lr of no_weight_decay_parameters (None: train.lr)
    task_weight_warmup_epochs: float = 0.0  # epochs those parameters stay put

    def __init__(self, encoder: nn.Module, feature_dim: int, columns: list[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_dim = feature_dim
        self.columns = list(columns)

    @classmethod
    def from_config(
        cls, config: Config, encoder: nn.Module, feature_dim: int, num_classes: list[int]
    ) -> Method:
        """Build the method of ``config`` around ``encoder`` (``num_classes`` per column)."""
        raise NotImplementedError

    @property
    def trained_columns(self) -> list[str]:
        """The label columns whose labels this method trains on (in-domain tasks)."""
        return list(self.columns)

    def encode_views(self, views: torch.Tensor) -> torch.Tensor:
        """Encode a batch of views (B, V, 3, H, W) to features (B, V, D)."""
        batch, num_views = views.shape[:2]
        features = self.encoder(views.flatten(0, 1))
        return features.view(batch, num_views, -1)

    def forward(
        self, views: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Map views (B, V, 3, H, W), labels (B, C) and the images' dataset indices (B,)
        to ``{"loss": scalar, ...}``."""
        raise NotImplementedError

    def view_recipes(self, augment: AugmentConfig) -> list[str]:
        """The augmentation recipe of each view (default: ``augment.recipes()``)."""
        return augment.recipes()

    def after_step(self, step: int, total_steps: int) -> None:
        """Called (without gradients) after optimiser step ``step`` (1-based) of ``total_steps``."""

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters trained without weight decay (the learned task weights)."""
        return []

    def log_values(self) -> dict[str, Any]:
        """Values to log after the last forward (per-similarity losses and weights)."""
        return {}


def with_task_weight_options(method: Method, options: TaskWeightsConfig) -> Method:
    """Give ``method`` the learning rate and warm-up of its task weights from its config."""
    method.task_weight_lr = options.log_var_lr
    method.task_weight_warmup_epochs = options.weight_warmup_epochs
    return method


def task_log_values(names: list[str], loss_fn: Any) -> dict[str, Any]:
    """``loss_per_similarity`` and ``weights`` of a multi-task loss, keyed by column."""
    losses = loss_fn.last_losses.tolist()
    weights = loss_fn.task_weights().detach().tolist()
    return {
        "loss_per_similarity": dict(zip(names, losses, strict=True)),
        "weights": dict(zip(names, weights, strict=True)),
    }
