"""Encoders by name: the shared network f(x) that every method trains (SPEC section 4).

Every factory in :data:`BACKBONES` returns ``(encoder, D)`` where the encoder maps
float images (B, 3, H, W) to features (B, D). A new encoder is a factory decorated
with ``@BACKBONES.register("name")`` (:class:`mscon.registry.Registry`).

* ``resnet18`` / ``resnet50``: torchvision's ResNets, ``fc`` replaced by ``Identity``
  (D = 512 / 2048).
* ``resnet18_small`` / ``resnet50_small``: the same with the CIFAR-style stem used by
  SupCon and solo-learn for small images: a 3x3 stride-1 first convolution and no
  max-pool, so a 32 px image reaches ``layer1`` at 32x32.
* ``cnn_small``: four 3x3 convolutions (widths 32-64-128-256) with BatchNorm and ReLU,
  global average pooling (D = 256); a fast encoder for CPU demos and tests.
* ``cnn_small_gn``: ``cnn_small`` with GroupNorm (8 groups) in place of BatchNorm. It
  has no batch statistics, so an image's features do not depend on the other images
  of its batch: a run on K processes (each a shard of the batch) trains exactly as
  one process on the whole batch, which no BatchNorm encoder does (docs/distributed.md).

Weights are never downloaded. ``weights`` names a local file holding a torchvision
``state_dict`` (or a checkpoint dict with a ``"state_dict"`` or ``"model"`` entry); it
is loaded non-strictly, ignoring ``fc.*`` and tensors whose shapes differ (e.g. the 7x7
first convolution of a pretrained ResNet on a small stem).

Example:
    >>> import torch
    >>> encoder, dim = build_backbone("cnn_small")
    >>> encoder(torch.zeros(2, 3, 32, 32)).shape, dim
    (torch.Size([2, 256]), 256)
    >>> "resnet18_small" in available_backbones()
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from mscon.errors import ConfigError
from mscon.registry import Registry

BackboneFactory = Callable[[], tuple[nn.Module, int]]


def _resnet(depth: int, small: bool) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its classifier; ``small`` swaps in the CIFAR stem."""
    net = {18: models.resnet18, 50: models.resnet50}[depth](weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    if small:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    return net, dim


Norm = Callable[[int], nn.Module]  # channels -> normalisation layer


def group_norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups (fewer when ``channels`` is not divisible)."""
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def _conv_block(in_channels: int, out_channels: int, stride: int, norm: Norm) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        norm(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four conv-norm-ReLU blocks, each after the first halving the resolution, then average pool.

    Args:
        widths: output channels of the four blocks; the last is the feature dimension D.
        norm: the normalisation layer of each block (BatchNorm2d; :func:`group_norm`
            for ``cnn_small_gn``).

    Example:
        >>> import torch
        >>> SmallCNN()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 256])
    """

    def __init__(
        self, widths: tuple[int, ...] = (32, 64, 128, 256), norm: Norm = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        channels = (3, *widths)
        self.features = nn.Sequential(
            *(
                _conv_block(channels[i], channels[i + 1], 1 if i == 0 else 2, norm)
                for i in range(len(widths))
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = widths[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # channels-last conv weights make the convolutions pick the NHWC kernels: about 1.7x
        # faster training on CPU (and the layout AMP prefers on CUDA); outputs are unchanged.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, 3, H, W) to features (B, D)."""
        return self.pool(self.features(x)).flatten(1)


BACKBONES: Registry[BackboneFactory] = Registry("model.backbone")


@BACKBONES.register("cnn_small")
def _cnn_small() -> tuple[nn.Module, int]:
    net = SmallCNN()
    return net, net.out_dim


@BACKBONES.register("cnn_small_gn")
def _cnn_small_gn() -> tuple[nn.Module, int]:
    net = SmallCNN(norm=group_norm)
    return net, net.out_dim


for _depth in (18, 50):
    BACKBONES.register(f"resnet{_depth}")(lambda d=_depth: _resnet(d, small=False))
    BACKBONES.register(f"resnet{_depth}_small")(lambda d=_depth: _resnet(d, small=True))


def available_backbones() -> list[str]:
    """The registered backbone names, sorted."""
    return sorted(BACKBONES)


def build_backbone(name: str, weights: str | Path | None = None) -> tuple[nn.Module, int]:
    """Build the encoder registered as ``name``.

    Args:
        name: a key of :data:`BACKBONES` (see :func:`available_backbones`).
        weights: optional local path to a state dict to initialise from (never downloaded).

    Returns:
        ``(encoder, D)``: the encoder maps float (B, 3, H, W) to (B, D).

    Raises:
        ValueError: unknown ``name``; ``weights`` missing or sharing no tensor with the model.

    Example:
        >>> encoder, dim = build_backbone("resnet18_small")
        >>> dim
        512
    """
    encoder, dim = BACKBONES.lookup(name)()
    if weights is not None:
        load_weights(encoder, weights)
    return encoder, dim


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:  # weights_only: a weights file never runs code when read
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling and format errors have many types
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"model.weights: cannot read {path} as tensors only (weights_only): {first}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ConfigError(
            f"model.weights: {path} does not hold a state dict (got {type(state).__name__})"
        )
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("encoder.") for k in state):  # an mscon run checkpoint's "model"
        state = {
            k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")
        }
    return state


def load_weights(encoder: nn.Module, weights: str | Path) -> list[str]:
    """Load matching tensors from a local state-dict file into ``encoder`` (non-strict).

    Keys ``fc.*`` (the classifier) are ignored, a ``module.`` prefix (DataParallel) is
    stripped, and tensors whose shape differs from the encoder's are skipped with a warning.

    Args:
        encoder: the module to initialise (modified in place).
        weights: path to a file written by ``torch.save`` of a state dict, or of a dict
            with a ``"state_dict"`` (or ``"model"``) entry.

    Returns:
        The encoder keys that were loaded.

    Raises:
        ConfigError: the file does not exist or cannot be read, or no key matches the encoder.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights: file not found: {path} (weights are never downloaded)")
    state = _read_state_dict(path)
    own = encoder.state_dict()
    matched = {k: v for k, v in state.items() if k in own and not k.startswith("fc.")}
    mismatched = sorted(k for k, v in matched.items() if v.shape != own[k].shape)
    if mismatched:
        warnings.warn(
            f"model.weights: skipping {len(mismatched)} tensors with other shapes: "
            f"{', '.join(mismatched[:5])}",
            stacklevel=2,
        )
    loadable = {k: v for k, v in matched.items() if k not in mismatched}
    if not loadable:
        raise ConfigError(
            f"model.weights: no tensor of {path} matches the encoder "
            f"(file keys like {sorted(state)[:3]}, encoder keys like {sorted(own)[:3]})"
        )
    encoder.load_state_dict(loadable, strict=False)
    return sorted(loadable)
