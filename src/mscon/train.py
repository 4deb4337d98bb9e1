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

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mscon import runs
from mscon.config import Config, config_to_yaml
from mscon.data import load_experiment_data
from mscon.data.augment import ViewAugment, make_views
from mscon.errors import ConfigError, NonFiniteLossError, RunError
from mscon.methods import Method, build_method
from mscon.models.backbones import build_backbone

__all__ = ["NonFiniteLossError", "RunError", "build_model", "build_optimizer", "train"]


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
        lr = method.task_weight_lr if method.task_weight_lr is not None else t.lr
        groups.append({"params": loss_params, "weight_decay": 0.0, "lr": lr})
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)


@dataclass
class _Logger:
    """metrics.jsonl, TensorBoard and the progress bar."""

    run_dir: Path
    config: Config
    total_steps: int
    start_step: int

    def __post_init__(self) -> None:
        from tqdm.auto import tqdm

        self.writer = None
        if self.config.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(runs.tensorboard_dir(self.run_dir)), purge_step=self.start_step
            )
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.start_step,
            desc=f"{self.config.name} [{self.config.method.name}]",
            disable=not self.config.train.progress,
            dynamic_ncols=True,
        )

    def log(self, record: dict[str, Any]) -> None:
        runs.append_metrics(self.run_dir, record)
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
        if self.writer is not None:
            self.writer.close()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_run_dir(config: Config, resume: bool, overwrite: bool) -> Path:
    """The run folder, after checking that it can be started or resumed (nothing written)."""
    run_dir = config.run_dir
    if resume:
        if not runs.has_checkpoint(run_dir):
            raise RunError(f"{run_dir}: no checkpoint to resume from")
        saved = _flatten(runs.load_run_config(run_dir).to_dict())
        current = _flatten(config.to_dict())
        ignored = {"train.progress", "train.tensorboard", "train.device"}
        diff = [
            k
            for k in sorted(saved.keys() | current.keys() - ignored)
            if k not in ignored and saved.get(k) != current.get(k)
        ]
        if diff:
            raise ConfigError(
                f"{runs.config_file(run_dir)}: --resume with a different config ({', '.join(diff)})"
            )
        return run_dir
    if runs.has_checkpoint(run_dir) and not overwrite:
        raise RunError(
            f"{run_dir}: already holds a trained run; pass --resume to continue it "
            "or --overwrite to start again"
        )
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
    run_dir = _check_run_dir(config, resume, overwrite)
    device = config.train.torch_device()
    data = load_experiment_data(config.data, config.seed).select("train")
    columns = list(config.data.similarities)
    labels = data.label_matrix(columns)
    num_classes = [len(data.classes[c]) for c in columns]
    t = config.train
    steps_per_epoch = len(data) // t.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size: {t.batch_size} is larger than the train split ({len(data)} images)"
        )
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    if not resume:
        if overwrite and run_dir.is_dir():
            runs.clear_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    method = build_model(config, num_classes).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, method)
    warmup = round(t.warmup_epochs * steps_per_epoch)
    frozen = round(method.task_weight_warmup_epochs * steps_per_epoch)

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
        state = runs.load_checkpoint(runs.checkpoint_path(run_dir), map_location=device)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        step = state["step"]
        runs.truncate_metrics(run_dir, step)
    else:
        runs.save_run_config(config, run_dir)
        runs.write_classes(run_dir, data.classes)

    augments = [
        ViewAugment(config.data.image_size, kind, **config.augment.overrides)
        for kind in method.view_recipes(config.augment)
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
            "config": config_to_yaml(config),
            "trained_columns": method.trained_columns,
        }
        runs.save_checkpoint(run_dir, state, name)

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
                loss = method(views, batch_labels, index.to(device))["loss"]
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
            with torch.no_grad():
                method.after_step(step, total_steps)
            window_images += t.batch_size
            logger.bar.update(1)
            end_of_epoch = step % steps_per_epoch == 0
            last_step = step == total_steps  # also mid-epoch, with train.max_steps
            if step % t.log_every == 0 or end_of_epoch or last_step:
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
            if end_of_epoch or last_step or (t.checkpoint_every and step % t.checkpoint_every == 0):
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
