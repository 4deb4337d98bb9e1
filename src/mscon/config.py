"""Typed experiment configuration: YAML files, dotted ``--set`` overrides, validation.

A config is a tree of pydantic models (:class:`Config`). Files hold any subset of
the keys; the rest take the defaults below. ``--set KEY=VALUE`` parses VALUE as
YAML, so ``--set data.similarities=[shape,color]`` and ``--set train.lr=0.05``
work. Unknown keys and bad values raise :class:`ConfigError` naming the file and
the dotted key (with the closest valid key for a misspelt one), before any data
is read or any folder is created.

The ``method`` section is typed per method: each registered method
(:mod:`mscon.methods`) declares its own :class:`MethodConfig` subclass, chosen by
``method.name``, and a key the chosen method does not read is refused. Which keys
a method reads may depend on its own options (:meth:`MethodConfig.inactive_keys`).

Switching methods (or a method's options) over a file written for another one
(``--set method.name=X``, as ``mscon demo`` and the grid scripts do, or
``--set method.base_loss=fmicl``): when ``--set`` touches the ``method`` section,
the ``method`` keys that come from the file and that the resulting method does
not read are dropped, with a one-line notice on stderr; the keys given with
``--set`` are checked strictly, and so is a file given without method overrides.

Example:
    >>> cfg = load_config(None, ["train.epochs=3", "data.similarities=[shape,size]"])
    >>> cfg.train.epochs, cfg.data.similarities, cfg.method.name, cfg.method.weighting
    (3, ['shape', 'size'], 'mscon', 'consistency')
    >>> load_config(None, ["method.queue_size=4096"])
    Traceback (most recent call last):
    ...
    mscon.errors.ConfigError: defaults with --set method.queue_size=4096: method.queue_size: ...
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from mscon.errors import ConfigError
from mscon.registry import Registry, did_you_mean

__all__ = [
    "CONFIG_DIR",
    "Config",
    "ConfigError",
    "MethodConfig",
    "TaskWeightsConfig",
    "available_configs",
    "check_registered",
    "config_from_dict",
    "config_from_yaml",
    "config_to_yaml",
    "load_config",
    "resolve_config_path",
]

CONFIG_DIR = resources.files("mscon") / "configs"
DEFAULT_METHOD = "mscon"


def check_registered(registry: Registry, name: str) -> str:
    """``registry.check(name)`` with the message's key prefix left to pydantic's location."""
    try:
        return registry.check(name)
    except ValueError as error:
        raise ValueError(str(error).removeprefix(f"{registry.key}: ")) from None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# data.corrupt_mode: how mscon.data.corrupt_labels redraws a corrupted label
CorruptMode = Literal["other", "uniform"]


class DataConfig(_Section):
    """Which images and which label columns (DESIGN.md, "Config keys")."""

    path: str | None = None
    similarities: list[str] = Field(default_factory=lambda: ["shape", "color", "size"])
    eval_tasks: list[str] = Field(default_factory=lambda: ["pattern"])
    image_size: int = Field(32, ge=8, le=1024)
    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2})
    corrupt: dict[str, float] = Field(default_factory=dict)
    # how corrupt redraws a label: a random other class, or any class (mscon.data)
    corrupt_mode: CorruptMode = "other"
    synthetic_size: int = Field(6000, ge=16)
    synthetic_structure: Literal["standard", "grouped"] = "standard"

    @model_validator(mode="after")
    def _corrupt_mode_with_corrupt(self) -> DataConfig:
        if self.corrupt_mode != "other" and not self.corrupt:
            raise ValueError("data.corrupt_mode is only read with data.corrupt (nothing to redraw)")
        return self

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
    head_weight_norm: bool = False  # each projection head's last layer: unit-norm rows, no bias
    sync_batch_norm: bool = False  # SyncBatchNorm under torchrun (CUDA only; docs/distributed.md)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        from mscon.models.backbones import BACKBONES

        return check_registered(BACKBONES, value)

    @field_validator("weights")
    @classmethod
    def _weights_file_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"file not found: {value} (weights are never downloaded)")
        return value


class MethodConfig(_Section):
    """Base of every method's typed ``method`` section (one subclass per method).

    A subclass sets ``name`` to a ``Literal`` of its registered name, adds the keys
    the method reads, and may override :meth:`inactive_keys` (keys that its own
    options switch off) and :meth:`check_config` (checks against the rest of the
    config, e.g. the batch size).
    """

    name: str

    @classmethod
    def inactive_keys(cls, values: dict[str, Any]) -> set[str]:
        """Keys this method does not read given the raw section ``values``."""
        return set()

    @classmethod
    def reads(cls, values: dict[str, Any]) -> list[str]:
        """The keys the method reads with these ``values``, in declaration order."""
        inactive = cls.inactive_keys(values)
        return [k for k in cls.model_fields if k not in inactive]

    @model_validator(mode="before")
    @classmethod
    def _refuse_inactive(cls, values: Any) -> Any:
        if isinstance(values, dict):
            # a full field set is a model being revalidated (assignment): its inactive
            # keys hold their defaults unless something set them
            full = set(cls.model_fields) <= set(values)
            for key in cls.inactive_keys(values):
                if key in values and (not full or values[key] != cls.model_fields[key].default):
                    raise ValueError(
                        f"{key} is not read by method {values.get('name')!r} with these options"
                    )
        return values

    def check_config(self, config: Config) -> None:
        """Raise ValueError when this section does not fit the rest of ``config``."""

    def config_defaults(self) -> dict[str, Any]:
        """Defaults this method (with these options) gives keys of other sections:
        ``{"section.key": value}``, applied where the config leaves the key out."""
        return {}


class TaskWeightsConfig(MethodConfig):
    """Keys of the methods that weight several tasks (mscon, multitask_ce)."""

    weighting: str = "uncertainty"
    weights: list[float] | None = None
    log_var_lr: float | None = Field(None, ge=0)
    weight_warmup_epochs: float = Field(0.0, ge=0)

    LEARNED_WEIGHT_KEYS: ClassVar[tuple[str, ...]] = ("log_var_lr", "weight_warmup_epochs")

    @classmethod
    def default_weighting(cls, values: dict[str, Any]) -> str:
        """The weighting when ``values`` leave it out (a method may make it depend on
        its other keys)."""
        return cls.model_fields["weighting"].default

    @classmethod
    def inactive_keys(cls, values: dict[str, Any]) -> set[str]:
        """``log_var_lr`` and ``weight_warmup_epochs`` only act on learned weights."""
        from mscon.losses.weighting import WEIGHTING_MODES

        mode = WEIGHTING_MODES.get(values.get("weighting") or cls.default_weighting(values))
        return set() if mode is None or mode.learnable else set(cls.LEARNED_WEIGHT_KEYS)

    @field_validator("weighting")
    @classmethod
    def _known_weighting(cls, value: str) -> str:
        from mscon.losses.weighting import WEIGHTING_MODES

        return check_registered(WEIGHTING_MODES, value)

    @model_validator(mode="after")
    def _weights_with_fixed(self) -> TaskWeightsConfig:
        from mscon.losses.weighting import WEIGHTING_MODES

        if WEIGHTING_MODES[self.weighting].uses_weights != (self.weights is not None):
            raise ValueError(
                f"weights must be given with weighting={self.weighting!r} and only then, "
                f"got weights={self.weights}"
            )
        return self

    def num_tasks(self, config: Config) -> int:
        """How many losses the weighting combines."""
        return len(config.data.similarities)

    def check_config(self, config: Config) -> None:
        count = self.num_tasks(config)
        if self.weights is not None and len(self.weights) != count:
            raise ValueError(
                f"method.weights: expected {count} values (one per weighted loss), "
                f"got {len(self.weights)}"
            )


class AugmentConfig(_Section):
    """The views: ``views`` is a count of ``kind`` views, or one recipe per view."""

    kind: Literal["simclr", "weak", "strong", "none"] = "simclr"
    views: int | list[Literal["simclr", "weak", "strong", "none"]] = Field(2)
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("views")
    @classmethod
    def _at_least_one(cls, value: int | list[str]) -> int | list[str]:
        if (value if isinstance(value, int) else len(value)) < 1:
            raise ValueError(f"expected at least one view, got {value}")
        return value

    @field_validator("overrides")
    @classmethod
    def _known_overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        from mscon.data.augment import ViewAugment

        ViewAugment(8, "simclr", **value)  # ValueError naming augment.overrides.KEY
        return value

    def recipes(self) -> list[str]:
        """The recipe of each view, in order."""
        return [self.kind] * self.views if isinstance(self.views, int) else list(self.views)


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    # the run's length in optimiser steps instead of epochs (the schedule ends there)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    # weight decay of every trained parameter outside the encoder (None: weight_decay)
    head_weight_decay: float | None = Field(None, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    checkpoint_every: int = Field(0, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    device: str = "auto"
    amp: bool = True
    tensorboard: bool = True
    progress: bool = True

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        import torch

        if value != "auto":
            try:
                torch.device(value)
            except RuntimeError:
                raise ValueError(
                    f"unknown device {value!r} (auto, cpu, cuda, cuda:1, ...)"
                ) from None
        return value

    def torch_device(self):  # -> torch.device (torch is imported lazily)
        """``auto`` -> CUDA when available, else CPU; anything else as given."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


class EvalConfig(_Section):
    batch_size: int = Field(512, ge=1)
    knn_k: int | None = Field(None, ge=1)


def method_config_class(name: object) -> type[MethodConfig]:
    """The typed ``method`` section of the registered method ``name``."""
    from mscon.methods import METHODS

    return METHODS.lookup(name).config_class


class Config(_Section):
    """The whole experiment; ``out`` defaults to ``runs/NAME``."""

    name: str = "demo"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: SerializeAsAny[MethodConfig] = Field(
        default_factory=lambda: method_config_class(DEFAULT_METHOD)(name=DEFAULT_METHOD)
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    out: str | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _typed_method(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return method_config_class(value.get("name", DEFAULT_METHOD)).model_validate(
                {"name": DEFAULT_METHOD, **value}
            )
        return value

    @model_validator(mode="after")
    def _method_fits(self) -> Config:
        for dotted, value in self.method.config_defaults().items():
            section_name, key = dotted.split(".")
            section = getattr(self, section_name)
            if key not in section.model_fields_set:  # given keys win, even at the default
                setattr(section, key, value)
        self.method.check_config(self)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data; the ``method`` keys its own options switch off are left out."""
        tree = self.model_dump(mode="json")
        for key in type(self.method).inactive_keys(tree["method"]):
            tree["method"].pop(key, None)
        return tree


def available_configs() -> list[str]:
    """Names of the configs shipped in the package (``mscon train NAME``)."""
    return sorted(
        p.name.removesuffix(".yaml") for p in CONFIG_DIR.iterdir() if p.name.endswith(".yaml")
    )


def resolve_config_path(path: str | Path) -> tuple[str, str]:
    """``(source, text)`` of a config given as a file path or a shipped config's name."""
    candidate = Path(path)
    if candidate.is_file():
        return str(candidate), candidate.read_text()
    for name in (candidate.name, f"{candidate.name}.yaml"):
        bundled = CONFIG_DIR / name
        if bundled.is_file():
            return f"{candidate.name.removesuffix('.yaml')} (shipped config)", bundled.read_text()
    known = available_configs()
    hint = did_you_mean(candidate.name.removesuffix(".yaml"), known)
    raise ConfigError(
        f"{path}: no such config file or shipped config{hint}; shipped: {', '.join(known)}"
    )


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


def _section_keys(tree: dict[str, Any], loc: tuple[Any, ...]) -> tuple[str, list[str]] | None:
    """(what, valid keys) of the section at ``loc`` (for "did you mean")."""
    model: type[BaseModel] = Config
    what = "the config"
    for part in loc:
        if part == "method" and model is Config:
            method = tree.get("method") if isinstance(tree.get("method"), dict) else {}
            name = method.get("name", DEFAULT_METHOD)
            try:
                cls = method_config_class(name)
            except ValueError:
                return None
            return f"method {name!r}", cls.reads(method)
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model, what = annotation, f"section {part!r}"
    return what, list(model.model_fields)


# keys that were renamed or retired: key -> what to use instead
RETIRED = {
    "train.keep_epoch_checkpoints": "replaced by train.keep_checkpoints (how many "
    "checkpoints to keep, last.pt included; default 2)",
}


def _describe(error: dict[str, Any], tree: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(part) for part in loc)
    if error["type"] == "extra_forbidden" and key in RETIRED:
        return f"{key}: {RETIRED[key]}"
    if error["type"] == "extra_forbidden":
        found = _section_keys(tree, loc[:-1])
        if found is not None:
            what, keys = found
            if loc[0] == "method":
                return (
                    f"{key}: not read by {what}{did_you_mean(str(loc[-1]), keys)}; "
                    f"its keys: {', '.join(keys)}"
                )
            return f"{key}: unknown key in {what}{did_you_mean(str(loc[-1]), keys)}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message}" if key and not message.startswith(key) else message


def config_from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict into a :class:`Config`, with one-line errors."""
    method = tree.get("method")
    try:
        if isinstance(method, dict):
            method_config_class(method.get("name", DEFAULT_METHOD))
        return Config.model_validate(tree)
    except ValidationError as error:
        first = error.errors()[0]
        count = error.error_count()
        more = f" (and {count - 1} more)" if count > 1 else ""
        raise ConfigError(f"{source}: {_describe(first, tree)}{more}") from None
    except ValueError as error:  # a registry lookup outside pydantic's own errors
        raise ConfigError(f"{source}: {error}") from None


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML ({first})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(loaded).__name__}")
    return loaded or {}


def _drop_unread_method_keys(tree: dict[str, Any], from_file: set[str], source: str) -> None:
    """Drop the file's method keys that the (switched-to) method does not read, with a notice."""
    section = tree.get("method")
    if not isinstance(section, dict) or not from_file:
        return
    try:
        cls = method_config_class(section.get("name", DEFAULT_METHOD))
    except ValueError:
        return  # reported by the validation
    kept = {k: v for k, v in section.items() if k not in from_file or k in cls.model_fields}
    inactive = cls.inactive_keys(kept) & from_file
    dropped = sorted(k for k in section if k in from_file and (k not in kept or k in inactive))
    for key in dropped:
        del section[key]
    if dropped:
        keys = ", ".join(f"method.{k}" for k in dropped)
        print(
            f"mscon: note: {source}: {keys} not read by method {section.get('name')!r}; ignored",
            file=sys.stderr,
        )


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides.

    Args:
        path: a YAML file, or the name of a shipped config (``demo``); None for defaults.
        overrides: ``KEY=VALUE`` strings with dotted keys; VALUE is parsed as YAML.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: unreadable file, unknown key or invalid value (names file and key).
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source, text = resolve_config_path(path)
        tree = _read_yaml(text, source)
    file_method = tree.get("method") if isinstance(tree.get("method"), dict) else {}
    file_keys = set(file_method)
    parsed = [parse_override(item) for item in overrides]
    for keys, value in parsed:
        _apply_override(tree, keys, value)
        if keys[0] == "method":
            file_keys.discard(keys[1] if len(keys) > 1 else "")
            if len(keys) == 1:  # the whole section given on the command line
                file_keys.clear()
    if any(keys[0] == "method" for keys, _ in parsed):
        _drop_unread_method_keys(tree, file_keys, source)
    if overrides:
        source += " with --set " + " ".join(overrides)
    config = config_from_dict(tree, source)
    _check_device_options(config, source)
    return config


def _check_device_options(config: Config, source: str) -> None:
    """Refuse options this machine's training device cannot run (before anything is read).

    Checked when a config is loaded to train, not when a finished run's config is
    read back (a run trained on CUDA is evaluated anywhere).
    """
    device = config.train.torch_device()
    if config.model.sync_batch_norm and device.type != "cuda":
        raise ConfigError(
            f"{source}: model.sync_batch_norm: SyncBatchNorm needs CUDA, and train.device "
            f"{config.train.device!r} is {device.type} here; leave it false (each process "
            "then normalises with its own shard's statistics) or use model.backbone cnn_small_gn"
        )


def config_to_yaml(config: Config) -> str:
    """The fully resolved config as YAML text."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def config_from_yaml(text: str, source: str, retired_ok: bool = False) -> Config:
    """A :class:`Config` from YAML text (a run's ``config.yaml``, a checkpoint's copy).

    With ``retired_ok`` (a saved run's config, written by an older mscon) the
    :data:`RETIRED` keys are dropped instead of refused, and so are the ``method``
    keys its options do not read when they hold their defaults (older versions
    saved every key).
    """
    tree = _read_yaml(text, source)
    if retired_ok:
        for key in RETIRED:
            section, _, name = key.partition(".")
            if isinstance(tree.get(section), dict):
                tree[section].pop(name, None)
        _drop_unread_defaults(tree.get("method"))
    return config_from_dict(tree, source)


def _drop_unread_defaults(method: Any) -> None:
    """Remove from a saved ``method`` section the inactive keys at their defaults."""
    if not isinstance(method, dict):
        return
    try:
        cls = method_config_class(method.get("name", DEFAULT_METHOD))
    except ValueError:
        return  # config_from_dict names the unknown method
    for key in cls.inactive_keys(method):
        field = cls.model_fields.get(key)
        if key in method and field is not None and method[key] == field.default:
            del method[key]


def save_config(config: Config, path: str | Path) -> None:
    """Write the fully resolved config as YAML."""
    Path(path).write_text(config_to_yaml(config))
