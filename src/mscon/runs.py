"""The run folder: the only code that knows its layout (DESIGN.md, "A run folder").

::

    RUN/
      config.yaml        the fully resolved config (read back through mscon.config)
      classes.json       each label column's class names in index order
      checkpoints/       last.pt (+ epoch_NNNN.pt), written atomically
      metrics.jsonl      one JSON object per logged step
      eval.json          written atomically by the evaluation
      tensorboard/       event files

Checkpoints hold tensors and plain containers only (the config inside as YAML
text) and are always read with ``torch.load(weights_only=True)``: a checkpoint
from a stranger cannot run code. Training, evaluation, reports and the API all
reach a run folder through the functions here.

Example:
    >>> import tempfile, torch
    >>> run = Path(tempfile.mkdtemp())
    >>> path = save_checkpoint(run, {"step": 3, "model": {"w": torch.ones(2)}})
    >>> load_checkpoint(path)["step"], path == checkpoint_path(run)
    (3, True)
    >>> append_metrics(run, {"step": 1, "loss": 2.0}); append_metrics(run, {"step": 2, "loss": 1.5})
    >>> truncate_metrics(run, 1); [r["step"] for r in read_metrics(run)]
    [1]
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mscon.errors import RunError

if TYPE_CHECKING:
    from mscon.config import Config

__all__ = [
    "CHECKPOINT_DIR",
    "append_metrics",
    "checkpoint_path",
    "clear_run",
    "config_file",
    "encoder_from_checkpoint",
    "has_checkpoint",
    "load_checkpoint",
    "load_run_config",
    "metrics_file",
    "read_eval",
    "read_metrics",
    "save_checkpoint",
    "save_run_config",
    "tensorboard_dir",
    "truncate_metrics",
    "write_classes",
    "write_eval",
]

CHECKPOINT_DIR = "checkpoints"
_CONFIG = "config.yaml"
_CLASSES = "classes.json"
_METRICS = "metrics.jsonl"
_EVAL = "eval.json"


def config_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / _CONFIG


def metrics_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / _METRICS


def tensorboard_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "tensorboard"


# ----------------------------------------------------------------------------- atomic writes


def _write_atomic(path: Path, write: Any) -> None:
    """``write(handle)`` to a temporary file, fsync, rename into place, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


# ----------------------------------------------------------------------------- config, classes


def save_run_config(config: Config, run_dir: str | Path) -> None:
    """Write the fully resolved config as ``config.yaml``."""
    from mscon.config import config_to_yaml

    text = config_to_yaml(config).encode()
    _write_atomic(config_file(run_dir), lambda handle: handle.write(text))


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config saved in a run folder (RunError when it has none)."""
    from mscon.config import config_from_yaml

    path = config_file(run_dir)
    if not path.is_file():
        raise RunError(f"{path}: not a run folder (no {_CONFIG})")
    return config_from_yaml(path.read_text(), str(path))


def write_classes(run_dir: str | Path, classes: dict[str, list[str]]) -> None:
    text = json.dumps(classes, indent=1).encode()
    _write_atomic(Path(run_dir) / _CLASSES, lambda handle: handle.write(text))


# ----------------------------------------------------------------------------- metrics


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one record to ``metrics.jsonl``."""
    with open(metrics_file(run_dir), "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (empty when there is none)."""
    path = metrics_file(run_dir)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | Path, last_step: int) -> None:
    """Drop records logged after ``last_step`` (they are replayed after a resume)."""
    path = metrics_file(run_dir)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r["step"] <= last_step]
    text = "".join(json.dumps(r) + "\n" for r in kept).encode()
    _write_atomic(path, lambda handle: handle.write(text))


# ----------------------------------------------------------------------------- eval.json


def write_eval(run_dir: str | Path, results: dict[str, Any]) -> None:
    text = json.dumps(results, indent=1).encode()
    _write_atomic(Path(run_dir) / _EVAL, lambda handle: handle.write(text))


def read_eval(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / _EVAL
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_path(run_dir: str | Path, checkpoint: str = "last") -> Path:
    """The file of checkpoint ``checkpoint`` (a name such as ``last``, or a ``.pt`` path)."""
    candidate = Path(checkpoint)
    if candidate.suffix == ".pt" and candidate.is_file():
        return candidate
    path = Path(run_dir) / CHECKPOINT_DIR / f"{checkpoint}.pt"
    if not path.is_file():
        raise RunError(f"{path}: no such checkpoint (train the run first)")
    return path


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CHECKPOINT_DIR / "last.pt").is_file()


def save_checkpoint(run_dir: str | Path, state: dict[str, Any], name: str = "last") -> Path:
    """Write ``state`` atomically as ``checkpoints/NAME.pt`` (tensors and plain containers)."""
    path = Path(run_dir) / CHECKPOINT_DIR / f"{name}.pt"
    _write_atomic(path, lambda handle: torch.save(state, handle))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; RunError for a file torch cannot read."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(
            f"{path}: not a readable mscon checkpoint (truncated, or holding objects other "
            f"than tensors and plain containers): {first}"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise RunError(f"{path}: not an mscon checkpoint (no 'model' entry)")
    return state


def unwrap_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's weights out of a method's state dict."""
    prefix = "encoder."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def encoder_from_state(config: Config, state: dict[str, Any]) -> nn.Module:
    """Rebuild ``config``'s backbone with the checkpoint's encoder weights (eval, frozen)."""
    from mscon.models.backbones import build_backbone

    encoder, _ = build_backbone(config.model.backbone)
    encoder.load_state_dict(unwrap_encoder(state["model"]))
    encoder.eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return encoder


def encoder_from_checkpoint(run_dir: str | Path, checkpoint: str = "last") -> nn.Module:
    """The run's trained encoder, frozen and in eval mode."""
    config = load_run_config(run_dir)
    return encoder_from_state(config, load_checkpoint(checkpoint_path(run_dir, checkpoint)))


# ----------------------------------------------------------------------------- the folder


def clear_run(run_dir: str | Path) -> None:
    """Remove a run's metrics, evaluation and checkpoints (``--overwrite``)."""
    run_dir = Path(run_dir)
    for name in (_METRICS, _EVAL):
        (run_dir / name).unlink(missing_ok=True)
    for stale in (run_dir / CHECKPOINT_DIR).glob("*.pt"):
        stale.unlink()
