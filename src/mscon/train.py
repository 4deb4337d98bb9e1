"""The training loop: data order, views, optimiser, schedule, logs and checkpoints.

Every source of randomness is derived from ``(seed, epoch)`` (the data order)
or ``(seed, step)`` (the augmentations), so a run resumed from a checkpoint
replays exactly the batches and views an uninterrupted run would have seen and
ends with the same weights.

Under torchrun (a process group created by the caller, see
:func:`mscon.distributed.process_group_from_env`) every rank draws the same global
batch and the same augmentation parameters, keeps its shard of the batch
(:func:`mscon.distributed.shard_rows`) and trains the model wrapped in
DistributedDataParallel; the losses gather across ranks, the logged loss is the
mean over ranks (the whole batch's loss), and rank 0 alone writes the run folder.

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

import contextlib
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mscon import distributed, runs
from mscon.config import Config, config_to_yaml
from mscon.data import LabelledImages, load_experiment_data
from mscon.data.augment import ViewAugment, make_views
from mscon.errors import ConfigError, NonFiniteLossError, RunError
from mscon.methods import Method, build_method
from mscon.models.backbones import build_backbone
from mscon.resume import (
    changes,
    follow_base_lrs,
    load_states,
    non_finite_message,
    resume_record,
    saved_config,
)

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
    """SGD (or AdamW) with the learned task weights in a group without weight decay (named
    ``task_weights``) and, with ``train.head_weight_decay``, every trained parameter
    outside the encoder (the heads) in a group of that decay (named ``heads``)."""
    t = config.train
    no_decay = {id(p) for p in method.no_weight_decay_parameters()}
    trained = [p for p in method.parameters() if p.requires_grad and id(p) not in no_decay]
    groups: list[dict[str, Any]] = [{"params": trained, "weight_decay": t.weight_decay}]
    if t.head_weight_decay is not None:
        encoder = {id(p) for p in method.encoder.parameters()}
        groups = [
            {"params": [p for p in trained if id(p) in encoder], "weight_decay": t.weight_decay},
            {
                "params": [p for p in trained if id(p) not in encoder],
                "weight_decay": t.head_weight_decay,
                "name": "heads",
            },
        ]
    loss_params = [p for p in method.no_weight_decay_parameters() if p.requires_grad]
    if loss_params:
        lr = method.task_weight_lr if method.task_weight_lr is not None else t.lr
        groups.append(
            {"params": loss_params, "weight_decay": 0.0, "lr": lr, "name": "task_weights"}
        )
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)


def lr_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: Callable[[int], float],
    task_weight_schedule: Callable[[int], float],
) -> torch.optim.lr_scheduler.LambdaLR:
    """``task_weight_schedule`` for the optimiser's ``task_weights`` group, ``schedule``
    for every other group (see :func:`build_optimizer`)."""
    lambdas = [
        task_weight_schedule if group.get("name") == "task_weights" else schedule
        for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


@dataclass
class _Logger:
    """metrics.jsonl, TensorBoard and the progress bar (``writes``: rank 0 only)."""

    run_dir: Path
    config: Config
    total_steps: int
    start_step: int
    writes: bool = True

    def __post_init__(self) -> None:
        from tqdm.auto import tqdm

        self.writer = None
        if self.config.train.tensorboard and self.writes:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(runs.tensorboard_dir(self.run_dir)), purge_step=self.start_step
            )
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.start_step,
            desc=f"{self.config.name} [{self.config.method.name}]",
            disable=not (self.config.train.progress and self.writes),
            dynamic_ncols=True,
        )

    def log(self, record: dict[str, Any]) -> None:
        if not self.writes:
            return
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


def _check_run_dir(config: Config, resume: bool, overwrite: bool) -> Path:
    """The run folder, after checking that it can be started or resumed (nothing written)."""
    run_dir = config.run_dir
    if run_dir.is_dir():
        runs.check_unlocked(run_dir)
    if resume:
        if not runs.has_checkpoint(run_dir):
            raise RunError(f"{run_dir}: no checkpoint to resume from (train it without --resume)")
        source = str(runs.config_file(run_dir))
        changes(runs.load_run_config(run_dir), config, source)
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

    Config and run-folder checks come first, then the data is read and checked;
    only then is the run folder created and locked (``run.lock``) for the run.

    Args:
        config: the experiment config.
        resume: continue from ``checkpoints/last.pt`` of the run folder; the config
            may differ from the saved one only in :data:`mscon.resume.RESUMABLE` keys.
        overwrite: start again in a run folder that already holds a run.
        stop_after: stop (after checkpointing) once this many steps are done in
            total; the run can be resumed later (used to test interruption).

    Raises:
        ConfigError, DataError, RunError: bad input (exit status 2).
        NonFiniteLossError: the loss became NaN or infinite (exit status 3).
    """
    run_dir = distributed.run_on_main(_check_run_dir, config, resume, overwrite)
    data = load_experiment_data(config.data, config.seed).select("train")
    data.check_similarities(config.data.similarities, "data.similarities")
    if len(data) < config.train.batch_size:
        raise ConfigError(
            f"train.batch_size: {config.train.batch_size} is larger than the train split "
            f"({len(data)} images)"
        )
    if config.train.batch_size < distributed.world_size():
        raise ConfigError(
            f"train.batch_size: {config.train.batch_size} images cannot be shared by "
            f"{distributed.world_size()} processes (it is the global batch)"
        )
    distributed.run_on_main(run_dir.mkdir, parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:  # rank 0 holds the run folder's lock
        distributed.run_on_main(lambda: stack.enter_context(runs.run_lock(run_dir)))
        return _run(config, run_dir, data, resume, overwrite, stop_after)


def _run(
    config: Config,
    run_dir: Path,
    data: LabelledImages,
    resume: bool,
    overwrite: bool,
    stop_after: int | None,
) -> Path:
    """The training loop of :func:`train`, in the locked run folder."""
    device = distributed.local_device(config.train.torch_device())
    columns = list(config.data.similarities)
    labels = data.label_matrix(columns, "data.similarities")
    num_classes = [len(data.classes[c]) for c in columns]
    t = config.train
    steps_per_epoch = len(data) // t.batch_size
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    if not resume and overwrite:
        distributed.run_on_main(runs.clear_run, run_dir)

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

    scheduler = lr_scheduler(optimizer, encoder_schedule, weight_schedule)
    amp_dtype = _amp_dtype(device, t.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step = 0
    if resume:  # rank 0 reads the checkpoint and updates the run folder; every rank loads it
        path = runs.checkpoint_path(run_dir)
        state = distributed.run_on_main(_resume_state, run_dir, config)
        base_lrs = list(scheduler.base_lrs)  # the current config's rates
        parts = {"model": method, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
        load_states(path, state, parts)
        follow_base_lrs(scheduler, base_lrs)
        torch.set_rng_state(state["rng"]["torch"])
        step = state["step"]
    else:
        distributed.run_on_main(_write_run_files, config, run_dir, data.classes)
    model = distributed.wrap_model(method, device, config.model.sync_batch_norm)

    augments = [
        ViewAugment(config.data.image_size, kind, **config.augment.overrides)
        for kind in method.view_recipes(config.augment)
    ]

    def checkpoint() -> None:
        if not distributed.is_main_process():
            return
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
        runs.save_checkpoint(run_dir, state, keep=t.keep_checkpoints)

    logger = _Logger(run_dir, config, total_steps, step, writes=distributed.is_main_process())
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
            rows = distributed.shard_rows(len(index))  # this rank's images of the global batch
            mine = index[rows]
            generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + step)
            images = data.images[mine].to(device, non_blocking=True)
            views = make_views(images, augments, generator, offset=rows.start, total=len(index))
            if device.type == "cuda":
                views = views.contiguous(memory_format=torch.channels_last)
            batch_labels = labels[mine].to(device)
            autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
            with autocast:
                loss = model(views, batch_labels, mine.to(device))["loss"]
            batch_loss = distributed.mean_over_ranks(loss)  # the loss of the whole batch
            if not torch.isfinite(batch_loss):
                raise NonFiniteLossError(non_finite_message(run_dir, step + 1, batch_loss, method))
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
                    "loss": batch_loss.item(),
                    "lr": optimizer.param_groups[0]["lr"],
                    "images_per_s": window_images / max(elapsed, 1e-9),
                    **method.log_values(),
                }
                logger.log(record)
                window_start, window_images = time.perf_counter(), 0
            if end_of_epoch or last_step or (t.checkpoint_every and step % t.checkpoint_every == 0):
                checkpoint()
            if stop_after is not None and step >= stop_after:
                checkpoint()
                break
    finally:
        logger.close()
    return run_dir


def _write_run_files(config: Config, run_dir: Path, classes: dict[str, list[str]]) -> None:
    """config.yaml and classes.json of a new run."""
    runs.save_run_config(config, run_dir)
    runs.write_classes(run_dir, classes)


def _resume_state(run_dir: Path, config: Config) -> dict[str, Any]:
    """The last checkpoint (on CPU), after checking ``config`` against it; metrics.jsonl
    is cut back to its step, the resume recorded in resume.jsonl, config.yaml updated."""
    path = runs.checkpoint_path(run_dir)
    state = runs.load_checkpoint(path, map_location="cpu")
    changed = changes(saved_config(path, state), config, str(path))
    runs.truncate_metrics(run_dir, state["step"])
    runs.append_resume(run_dir, resume_record(path, state["step"], changed))
    runs.save_run_config(config, run_dir)
    return state


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 autocast on CUDA when supported (float16 otherwise); none on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
