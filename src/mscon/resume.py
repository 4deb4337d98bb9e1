"""What ``--resume`` may change, and following a new learning rate after a resume.

A resumed run continues the saved one exactly, so its config must be the
saved one except for :data:`RESUMABLE` keys: the learning rate (the exit-3
advice "resume with a lower train.lr"), the number of epochs or steps
(the cosine schedule then runs over the new total), logging, checkpointing, device and
progress. Any other change is refused naming the key. Each resume is recorded
in ``resume.jsonl`` (:func:`mscon.runs.append_resume`) with the changes.

Example:
    >>> from mscon.config import load_config
    >>> saved = load_config(None, ["train.lr=0.1"])
    >>> changes(saved, load_config(None, ["train.lr=0.01"]), "runs/x/config.yaml")
    {'train.lr': [0.1, 0.01]}
    >>> changes(saved, load_config(None, ["seed=1"]), "runs/x/config.yaml")
    Traceback (most recent call last):
    ...
    mscon.errors.ConfigError: runs/x/config.yaml: --resume cannot change seed (saved 0, now 1); ...
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mscon import runs
from mscon.config import Config, config_from_yaml
from mscon.errors import ConfigError, RunError

__all__ = [
    "RESUMABLE",
    "changes",
    "follow_base_lrs",
    "load_states",
    "non_finite_message",
    "resume_record",
    "saved_config",
]

RESUMABLE = (
    "train.lr",
    "train.epochs",
    "train.max_steps",
    "train.log_every",
    "train.tensorboard",
    "train.progress",
    "train.device",
    "train.checkpoint_every",
    "train.keep_checkpoints",
)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changes(saved: Config, current: Config, source: str) -> dict[str, list[Any]]:
    """The changed keys of ``current`` against the ``saved`` config, as {key: [saved, now]}.

    Raises:
        ConfigError: a key outside :data:`RESUMABLE` changed (``source`` names the
            saved config's file).
    """
    old, new = _flatten(saved.to_dict()), _flatten(current.to_dict())
    keys = sorted((old.keys() | new.keys()) - {"out"})  # a run folder may be moved
    changed = {k: [old.get(k), new.get(k)] for k in keys if old.get(k) != new.get(k)}
    refused = sorted((k for k in changed if k not in RESUMABLE), key=lambda k: k != "method.name")
    if refused:
        key, others = refused[0], refused[1:]
        more = ""
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            more = f" (and {len(others)} more: {shown})"
        raise ConfigError(
            f"{source}: --resume cannot change {key} (saved {changed[key][0]!r}, now "
            f"{changed[key][1]!r}){more}; only {', '.join(RESUMABLE)} may change; "
            "start a new run (another out) for other changes"
        )
    return changed


def follow_base_lrs(
    scheduler: torch.optim.lr_scheduler.LambdaLR, base_lrs: Sequence[float]
) -> None:
    """Make a restored schedule follow the current config's learning rates.

    ``load_state_dict`` brings back the saved run's base rates; this puts
    ``base_lrs`` (those of the optimiser built from the current config) back and
    sets each group's rate to ``base * lambda(step)``, the value the schedule
    would have reached with them, so ``--resume --set train.lr=...`` takes effect.
    """
    scheduler.base_lrs = list(base_lrs)
    groups = scheduler.optimizer.param_groups
    for group, base, schedule in zip(groups, base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * schedule(scheduler.last_epoch)


def saved_config(path: Path, state: dict[str, Any]) -> Config:
    """The config a checkpoint was written with (its ``config`` entry, YAML text)."""
    if not isinstance(state.get("config"), str):
        raise RunError(f"{path}: the checkpoint holds no config (not written by mscon train)")
    return config_from_yaml(state["config"], str(path), retired_ok=True)


def load_states(path: Path, state: dict[str, Any], parts: Mapping[str, Any]) -> None:
    """``part.load_state_dict(state[name])`` for each part; RunError naming ``path`` when a
    saved state does not fit (a checkpoint of another run or another mscon version)."""
    for name, part in parts.items():
        try:
            part.load_state_dict(state[name])
        except (KeyError, RuntimeError, ValueError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise RunError(
                f"{path}: its {name} state does not fit this config ({first[:200]}); "
                "a checkpoint of another run or another mscon version?"
            ) from None


def resume_record(path: Path, step: int, changed: dict[str, list[Any]]) -> dict[str, Any]:
    """The ``resume.jsonl`` record of one resume: when, from which checkpoint, what changed."""
    return {
        "step": step,
        "checkpoint": path.name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "changes": changed,
    }


def non_finite_message(run_dir: Path, step: int, loss: torch.Tensor, method: Any) -> str:
    """The exit-3 line: the step, the loss and each similarity's loss, and what to do."""
    per_similarity = method.log_values().get("loss_per_similarity", {})
    parts = ", ".join(f"{column} {value:.4g}" for column, value in per_similarity.items())
    detail = f" ({parts})" if parts else ""
    last = runs.last_checkpoint_step(run_dir)
    kept = f"checkpoint of step {last} kept" if last is not None else "no checkpoint yet"
    return (
        f"{run_dir}: non-finite loss at step {step}: loss {loss.item():.4g}{detail}; {kept}; "
        "continue with --resume --set train.lr=LOWER (or lower method.temperature)"
    )
