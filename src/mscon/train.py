"""The training loop: data order, views, optimiser, schedule, logs and checkpoints.

Every source of randomness is derived from ``(seed, epoch)`` (the data order)
or ``(seed, step)`` (the augmentations), so a run resumed from a checkpoint
replays exactly the batches and views an uninterrupted run would have seen and
ends with the same weights.

Example (a tiny run on the embedded data):
    >>> from mscon.config import load_config
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> cfg = load_config("demo", [f"out={out}", "data.synthetic_size=64", "train.epochs=1",
    ...     "train.batch_size=32", "train.progress=false", "train.tensorboard=false"])
    >>> run_dir = train(cfg)
    >>> sorted(p.name for p in run_dir.iterdir())
    ['checkpoints', 'classes.json', 'config.yaml', 'metrics.jsonl']
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mscon.config import Config, ConfigError, config_from_dict, save_config
from mscon.data import LabelledImages, load_dataset
from mscon.data.augment import ViewAugment, make_views
from mscon.methods import Method, build_method
from mscon.models.backbones import build_backbone

CHECKPOINT_DIR = "checkpoints"


class RunError(ValueError):
    """A run folder is missing, incomplete or in the way (exit status 2)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (exit status 3)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {name!r}") from None


def load_training_data(config: Config, clean: bool = False) -> LabelledImages:
    """The dataset of ``config.data`` (with ``data.corrupt`` applied unless ``clean``)."""
    d = config.data
    data = load_dataset(
        d.path,
        image_size=d.image_size,
        split=d.split,
        seed=config.seed,
        corrupt=None if clean else (d.corrupt or None),
        synthetic_size=d.synthetic_size,
    )
    data.check_columns(d.similarities, "data.similarities")
    data.check_columns(d.eval_tasks, "data.eval_tasks")
    return data


def build_model(config: Config, num_classes: list[int]) -> Method:
    """The encoder of ``model.backbone`` wrapped in the method of ``method.name``."""
    encoder, feature_dim = build_backbone(config.model.backbone, config.model.weights)
    return build_method(config, encoder, feature_dim, num_classes)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(config: Config, method: Method) -> torch.optim.Optimizer:
    """SGD (or AdamW) with the learned task weights in a group without weight decay."""
    t = config.train
    exempt = {id(p) for p in method.no_weight_decay_parameters()}
    regular = [p for p in method.parameters() if p.requires_grad and id(p) not in exempt]
    groups: list[dict[str, Any]] = [{"params": regular, "weight_decay": t.weight_decay}]
    loss_params = [p for p in method.no_weight_decay_parameters() if p.requires_grad]
    if loss_params:
        lr = config.method.log_var_lr if config.method.log_var_lr is not None else t.lr
        groups.append({"params": loss_params, "weight_decay": 0.0, "lr": lr})
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` with torch.save to a temporary file, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def checkpoint_path(run_dir: str | Path, checkpoint: str = "last") -> Path:
    """The file of checkpoint ``checkpoint`` (a name such as ``last`` or a path)."""
    candidate = Path(checkpoint)
    if candidate.suffix == ".pt" and candidate.is_file():
        return candidate
    path = Path(run_dir) / CHECKPOINT_DIR / f"{checkpoint}.pt"
    if not path.is_file():
        raise RunError(f"{path}: no such checkpoint (train the run first)")
    return path


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config saved in a run folder."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunError(f"{path}: not a run folder (no config.yaml)")
    return config_from_dict(yaml.safe_load(path.read_text()) or {}, str(path))


@dataclass
class _Logger:
    """metrics.jsonl, TensorBoard and the progress bar."""

    run_dir: Path
    config: Config
    total_steps: int
    start_step: int

    def __post_init__(self) -> None:
        from tqdm.auto import tqdm

        self.metrics = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115
        self.writer = None
        if self.config.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(self.run_dir / "tensorboard"), purge_step=self.start_step
            )
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.start_step,
            desc=f"{self.config.name} [{self.config.method.name}]",
            disable=not self.config.train.progress,
            dynamic_ncols=True,
        )

    def log(self, record: dict[str, Any]) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.writer is not None:
            step = record["step"]
            for key in ("loss", "lr", "images_per_s"):
                self.writer.add_scalar(f"train/{key}", record[key], step)
            for group in ("loss_per_similarity", "weights"):
                for column, value in record.get(group, {}).items():
                    self.writer.add_scalar(f"{group}/{column}", value, step)
        postfix = {"loss": f"{record['loss']:.3f}", "img/s": f"{record['images_per_s']:.0f}"}
        if "weights" in record:
            postfix["w"] = ",".join(f"{w:.2f}" for w in record["weights"].values())
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()
        if self.writer is not None:
            self.writer.close()


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records logged after ``last_step`` (they are replayed after a resume)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _prepare_run_dir(config: Config, resume: bool, overwrite: bool) -> Path:
    run_dir = config.run_dir
    last = run_dir / CHECKPOINT_DIR / "last.pt"
    if resume:
        if not last.is_file():
            raise RunError(f"{last}: no checkpoint to resume from")
        saved = _flatten(load_run_config(run_dir).to_dict())
        current = _flatten(config.to_dict())
        ignored = {"train.progress", "train.tensorboard", "train.device"}
        diff = [
            k
            for k in sorted(saved.keys() | current.keys() - ignored)
            if k not in ignored and saved.get(k) != current.get(k)
        ]
        if diff:
            raise ConfigError(
                f"{run_dir / 'config.yaml'}: --resume with a different config ({', '.join(diff)})"
            )
        return run_dir
    if last.is_file() and not overwrite:
        raise RunError(
            f"{run_dir}: already holds a trained run; pass --resume to continue it "
            "or --overwrite to start again"
        )
    if overwrite and run_dir.is_dir():
        for name in ("metrics.jsonl", "eval.json"):
            (run_dir / name).unlink(missing_ok=True)
        for stale in (run_dir / CHECKPOINT_DIR).glob("*.pt"):
            stale.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(
    config: Config, resume: bool = False, overwrite: bool = False, stop_after: int | None = None
) -> Path:
    """Train ``config`` and return its run folder.

    Args:
        config: the experiment config.
        resume: continue from ``checkpoints/last.pt`` of the run folder.
        overwrite: start again in a run folder that already holds a run.
        stop_after: stop (after checkpointing) once this many steps are done in
            total; the run can be resumed later (used to test interruption).

    Raises:
        ConfigError, DataError, RunError: bad input (exit status 2).
        NonFiniteLossError: the loss became NaN or infinite (exit status 3).
    """
    run_dir = _prepare_run_dir(config, resume, overwrite)
    device = resolve_device(config.train.device)
    data = load_training_data(config).select("train")
    columns = list(config.data.similarities)
    labels = data.label_matrix(columns)
    num_classes = [len(data.classes[c]) for c in columns]
    t = config.train
    steps_per_epoch = len(data) // t.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size: {t.batch_size} is larger than the train split ({len(data)} images)"
        )
    total_steps = t.epochs * steps_per_epoch

    torch.manual_seed(config.seed)
    method = build_model(config, num_classes).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, method)
    warmup = round(t.warmup_epochs * steps_per_epoch)
    frozen = round(config.method.weight_warmup_epochs * steps_per_epoch)

    def encoder_schedule(s: int) -> float:
        return warmup_cosine(s, warmup, total_steps)

    def weight_schedule(s: int) -> float:  # the task weights stay put for `frozen` steps
        return 0.0 if s < frozen else warmup_cosine(s, warmup, total_steps)

    schedules = [encoder_schedule, weight_schedule][: len(optimizer.param_groups)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    amp_dtype = _amp_dtype(device, t.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step = 0
    if resume:
        state = torch.load(run_dir / CHECKPOINT_DIR / "last.pt", map_location=device)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        step = state["step"]
        _truncate_metrics(run_dir / "metrics.jsonl", step)
    else:
        save_config(config, run_dir / "config.yaml")
        (run_dir / "classes.json").write_text(json.dumps(data.classes, indent=1))

    augments = [
        ViewAugment(config.data.image_size, config.augment.kind, **config.augment.overrides)
        for _ in range(config.augment.views)
    ]

    def checkpoint(name: str = "last") -> None:
        state = {
            "model": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "step": step,
            "epoch": step / steps_per_epoch,
            "config": config.to_dict(),
            "trained_columns": method.trained_columns,
        }
        save_checkpoint(run_dir / CHECKPOINT_DIR / f"{name}.pt", state)

    logger = _Logger(run_dir, config, total_steps, step)
    method.train()
    window_start, window_images = time.perf_counter(), 0
    order, order_epoch = torch.empty(0, dtype=torch.long), -1
    try:
        while step < total_steps:
            epoch, position = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                seed = config.seed * 7919 + epoch
                order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
                order_epoch = epoch
            index = order[position * t.batch_size : (position + 1) * t.batch_size]
            generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + step)
            images = data.images[index].to(device, non_blocking=True)
            views = make_views(images, augments, generator)
            if device.type == "cuda":
                views = views.contiguous(memory_format=torch.channels_last)
            batch_labels = labels[index].to(device)
            autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
            with autocast:
                loss = method(views, batch_labels)["loss"]
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"{run_dir}: non-finite loss {loss.item()} at step {step}; "
                    "lower train.lr or method.temperature"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            window_images += t.batch_size
            logger.bar.update(1)
            end_of_epoch = step % steps_per_epoch == 0
            if step % t.log_every == 0 or end_of_epoch:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "loss": loss.item(),
                    "lr": optimizer.param_groups[0]["lr"],
                    "images_per_s": window_images / max(elapsed, 1e-9),
                    **method.log_values(),
                }
                logger.log(record)
                window_start, window_images = time.perf_counter(), 0
            if end_of_epoch or (t.checkpoint_every and step % t.checkpoint_every == 0):
                checkpoint()
            if end_of_epoch and t.keep_epoch_checkpoints:
                checkpoint(f"epoch_{step // steps_per_epoch:04d}")
            if stop_after is not None and step >= stop_after:
                checkpoint()
                break
    finally:
        logger.close()
    return run_dir


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 autocast on CUDA when supported (float16 otherwise); none on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def unwrap_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's weights out of a method's state dict."""
    prefix = "encoder."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def encoder_from_checkpoint(run_dir: str | Path, checkpoint: str = "last") -> nn.Module:
    """Rebuild the run's backbone and load its trained weights (eval mode, frozen)."""
    config = load_run_config(run_dir)
    state = torch.load(checkpoint_path(run_dir, checkpoint), map_location="cpu")
    encoder, _ = build_backbone(config.model.backbone)
    encoder.load_state_dict(unwrap_encoder(state["model"]))
    encoder.eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return encoder
