"""Typed experiment configuration: YAML files, dotted ``--set`` overrides, validation.

A config is a tree of pydantic models (:class:`Config`). Files hold any subset of
the keys; the rest take the defaults below. ``--set KEY=VALUE`` parses VALUE as
YAML, so ``--set data.similarities=[shape,color]`` and ``--set train.lr=0.05``
work. Unknown keys and bad values raise :class:`ConfigError` naming the file and
the dotted key.

Example:
    >>> cfg = load_config(None, ["train.epochs=3", "data.similarities=[shape,size]"])
    >>> cfg.train.epochs, cfg.data.similarities
    (3, ['shape', 'size'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
METHODS = ("simclr", "supcon", "mscon", "multitask_ce")
# Defaults of method.weighting and method.instance_mix per method, filled in when
# the config leaves them out. MSCon's were chosen by the weights study
# (docs/results.md, benchmarks/weights_grid.py); multi-task cross-entropy keeps
# Kendall et al.'s uncertainty weighting (the baseline as published).
DEFAULT_WEIGHTING = {"mscon": "relative", "multitask_ce": "uncertainty"}
DEFAULT_INSTANCE_MIX = {"mscon": 0.0}


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Which images and which label columns (DESIGN.md, "Config keys")."""

    path: str | None = None
    similarities: list[str] = Field(default_factory=lambda: ["shape", "color", "size"])
    eval_tasks: list[str] = Field(default_factory=lambda: ["pattern"])
    image_size: int = Field(32, ge=8, le=1024)
    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2})
    corrupt: dict[str, float] = Field(default_factory=dict)
    synthetic_size: int = Field(6000, ge=16)

    @field_validator("similarities")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"columns must be distinct, got {value}")
        return value


class ModelConfig(_Section):
    backbone: str = "cnn_small"
    weights: str | None = None
    projection_dim: int = Field(128, ge=1)
    hidden_dim: int | None = Field(None, ge=1)
    head_batch_norm: bool = False


class MethodConfig(_Section):
    name: Literal["simclr", "supcon", "mscon", "multitask_ce"] = "mscon"
    temperature: float = Field(0.1, gt=0)
    form: Literal["out", "in"] = "out"
    weighting: str | None = None  # None: the method's default (DEFAULT_WEIGHTING)
    weights: list[float] | None = None
    base_loss: str = "supcon"
    divergence: str = "kl"
    alpha: float = Field(40.0, gt=0)
    sigma: float = Field(0.5**0.5, gt=0)
    coeff: float = Field(0.5, ge=0, le=1)
    temperature_m: float = Field(0.05, gt=0)
    queue_size: int = Field(4096, ge=0)
    momentum: float = Field(0.99, ge=0, le=1)
    log_var_lr: float | None = Field(None, ge=0)
    weight_warmup_epochs: float = Field(0.0, ge=0)
    instance_similarity: bool = False
    instance_mix: float | None = Field(None, ge=0, lt=1)  # None: the method's default


class AugmentConfig(_Section):
    kind: Literal["simclr", "weak", "strong", "none"] = "simclr"
    views: int = Field(2, ge=1)
    overrides: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    checkpoint_every: int = Field(0, ge=0)
    keep_epoch_checkpoints: bool = False
    log_every: int = Field(10, ge=1)
    device: str = "auto"
    amp: bool = True
    tensorboard: bool = True
    progress: bool = True


class EvalConfig(_Section):
    batch_size: int = Field(512, ge=1)
    knn_k: int | None = Field(None, ge=1)


class Config(_Section):
    """The whole experiment; ``out`` defaults to ``runs/NAME``."""

    name: str = "demo"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    out: str | None = None

    @model_validator(mode="after")
    def _method_defaults(self) -> Config:
        name = self.method.name
        if self.method.weighting is None:
            self.method.weighting = DEFAULT_WEIGHTING.get(name, "uncertainty")
        if self.method.instance_mix is None:
            self.method.instance_mix = DEFAULT_INSTANCE_MIX.get(name, 0.0)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def resolve_config_path(path: str | Path) -> Path:
    """Find a config file by path, or by name in the project's ``configs/`` folder."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    for name in (candidate.name, f"{candidate.name}.yaml"):
        bundled = CONFIG_DIR / name
        if bundled.is_file():
            return bundled
    raise ConfigError(f"{path}: no such config file")


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b=VALUE`` into (["a", "b"], parsed YAML value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected KEY=VALUE")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set {item}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {item}: value is not YAML ({error.problem})") from None
    return keys, value


def _apply_override(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def config_from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict into a :class:`Config`, with one-line errors."""
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        count = error.error_count()
        more = f" (and {count - 1} more)" if count > 1 else ""
        raise ConfigError(f"{source}: {key}: {first['msg']}{more}") from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides.

    Args:
        path: a YAML file, or the name of one in ``configs/``; None for defaults.
        overrides: ``KEY=VALUE`` strings with dotted keys; VALUE is parsed as YAML.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: unreadable file, unknown key or invalid value (names file and key).
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        file = resolve_config_path(path)
        source = str(file)
        try:
            loaded = yaml.safe_load(file.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{file}: not valid YAML ({error})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file}: top level must be a mapping, got {type(loaded).__name__}")
        tree = loaded or {}
    for item in overrides:
        keys, value = parse_override(item)
        _apply_override(tree, keys, value)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return config_from_dict(tree, source)


def save_config(config: Config, path: str | Path) -> None:
    """Write the fully resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
