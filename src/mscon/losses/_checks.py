"""Argument validation shared by the losses.

Every check raises ``ValueError("<Owner>: <argument> must ..., got ...")``: the
argument's name, what it got and what it expects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def shape_str(shape: Sequence[int]) -> str:
    """``(8, 2)`` for a torch.Size or tuple (``(8,)`` for one dimension)."""
    shape = tuple(int(s) for s in shape)
    return str(shape)


def check_temperature(owner: str, value: object, name: str = "temperature") -> float:
    """A finite real number > 0, returned as float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(
            f"{owner}: {name} must be a finite number > 0, got {value!r} ({type(value).__name__})"
        )
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a finite number > 0, got {value!r}")
    return value


def check_choice(owner: str, name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{owner}: {name} must be one of {allowed}, got {value!r}")
    return value


def check_float_tensor(owner: str, name: str, x: object, expected: str) -> Tensor:
    """A floating-point tensor with finite values (``expected`` describes the shape)."""
    if not isinstance(x, Tensor):
        raise ValueError(
            f"{owner}: {name} must be a tensor of shape {expected}, got {type(x).__name__}"
        )
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"{owner}: {name} must be a float16, bfloat16, float32 or float64 tensor of shape "
            f"{expected}, got dtype {x.dtype}"
        )
    return x


def check_finite(owner: str, name: str, x: Tensor) -> None:
    """No NaN or inf in ``x``."""
    if not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise ValueError(f"{owner}: {name} must contain only finite values, got {bad}")


def check_embeddings(owner: str, name: str, x: Tensor, expected: str) -> None:
    """Non-empty trailing dimension (d >= 1) and finite values."""
    if x.shape[-1] < 1:
        raise ValueError(
            f"{owner}: {name} must have an embedding dimension d >= 1 in {expected}, "
            f"got shape {shape_str(x.shape)}"
        )
    check_finite(owner, name, x)


def check_labels(
    owner: str,
    name: str,
    labels: object,
    shape: Sequence[int],
    expected: str,
    num_classes: Sequence[int] | None = None,
) -> Tensor:
    """Integer labels of the given shape, values >= -1 (and < num_classes per column).

    Args:
        owner: the class name used in the message.
        name: the argument's name.
        labels: the value to check.
        shape: the expected shape.
        expected: the expected shape in symbols, e.g. ``"(B,)"``.
        num_classes: for (B, C) labels, the class count of each column.
    """
    want = f"{expected} = {shape_str(shape)}"
    if not isinstance(labels, Tensor):
        raise ValueError(
            f"{owner}: {name} must be an integer tensor of shape {want}, "
            f"got {type(labels).__name__}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(
            f"{owner}: {name} must be integer labels (-1 = missing), got dtype {labels.dtype}; "
            "continuous similarities are not supported yet"
        )
    if labels.dtype == torch.bool:
        raise ValueError(
            f"{owner}: {name} must be integer labels (-1 = missing), got dtype torch.bool"
        )
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{owner}: {name} must have shape {want}, got {shape_str(labels.shape)}")
    if labels.numel() == 0:
        return labels
    low = int(labels.min())
    if low < -1:
        raise ValueError(f"{owner}: {name} must be class indices >= 0 or -1 for missing, got {low}")
    if num_classes is not None:
        for c, k in enumerate(num_classes):
            high = int(labels[:, c].max())
            if high >= k:
                raise ValueError(
                    f"{owner}: {name}[:, {c}] must be in [-1, {k - 1}] "
                    f"(num_classes[{c}] = {k}), got {high}"
                )
    return labels
