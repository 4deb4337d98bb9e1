"""The run folder: the only code that knows its layout (DESIGN.md, "A run folder").

::

    RUN/
      config.yaml        the fully resolved config (read back through mscon.config)
      classes.json       each label column's class names in index order
      checkpoints/       step_NNNNNNNN.pt: the last train.keep_checkpoints checkpoints,
                         written atomically; last.pt: a hard link to the newest
      metrics.jsonl      one JSON object per logged step
      resume.jsonl       one JSON object per --resume: the step and the config changes
      eval.json          written atomically by the evaluation
      run.lock           "PID HOST" of the process training in the folder
      tensorboard/       event files

Checkpoints hold tensors and plain containers only (the config inside as YAML
text) and are always read with ``torch.load(weights_only=True)``: a checkpoint
from a stranger cannot run code. A write that fails for lack of disk space
leaves the previous file in place and raises :class:`RunError` ("disk full").
Training, evaluation, reports and the API all reach a run folder through the
functions here.

Example:
    >>> import tempfile, torch
    >>> run = Path(tempfile.mkdtemp())
    >>> path = save_checkpoint(run, {"step": 3, "model": {"w": torch.ones(2)}})
    >>> load_checkpoint(path)["step"], path == checkpoint_path(run), path.name
    (3, True, 'last.pt')
    >>> append_metrics(run, {"step": 1, "loss": 2.0}); append_metrics(run, {"step": 2, "loss": 1.5})
    >>> truncate_metrics(run, 1); [r["step"] for r in read_metrics(run)]
    [1]
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mscon import faults
from mscon.errors import RunError

if TYPE_CHECKING:
    from mscon.config import Config

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_FORMAT",
    "append_metrics",
    "append_resume",
    "check_unlocked",
    "checkpoint_path",
    "clear_run",
    "config_file",
    "encoder_from_checkpoint",
    "has_checkpoint",
    "last_checkpoint_step",
    "load_checkpoint",
    "load_run_config",
    "metrics_file",
    "read_eval",
    "read_metrics",
    "read_resumes",
    "run_lock",
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
_RESUME = "resume.jsonl"
_LOCK = "run.lock"
CHECKPOINT_FORMAT = 1  # the checkpoint layout version this code writes and reads


def config_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / _CONFIG


def metrics_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / _METRICS


def tensorboard_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "tensorboard"


# ----------------------------------------------------------------------------- atomic writes


@contextmanager
def _disk_full_is_a_user_error(path: Path) -> Iterator[None]:
    """Turn ENOSPC while writing ``path`` into a one-line RunError (exit status 2)."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise RunError(
            f"{path}: disk full (no space left on device); the files written before are "
            "intact: free space, then continue with --resume"
        ) from None


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class _Recording:
    """A file proxy that keeps the OSError of a failed write: ``torch.save`` turns it
    into a RuntimeError without the errno, so a full disk would not be recognised."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def _write_atomic(path: Path, write: Callable[[Any], Any], fault_point: str | None = None) -> None:
    """``write(handle)`` to a temporary file, fsync, rename into place, fsync the folder.

    A failure (a full disk, or the fault injected at ``fault_point``, see
    :mod:`mscon.faults`) removes the temporary file and leaves ``path`` as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with _disk_full_is_a_user_error(path):
        try:
            with open(tmp, "wb") as handle:
                recording = _Recording(handle)
                try:
                    write(recording)
                except RuntimeError:
                    if recording.error is None:
                        raise
                    raise recording.error from None
                if fault_point is not None:
                    faults.inject(fault_point, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    _fsync_folder(path.parent)


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
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise RunError(f"{path}: not a text file; the run folder is damaged") from None
    return config_from_yaml(text, str(path), retired_ok=True)


def write_classes(run_dir: str | Path, classes: dict[str, list[str]]) -> None:
    text = json.dumps(classes, indent=1).encode()
    _write_atomic(Path(run_dir) / _CLASSES, lambda handle: handle.write(text))


# ----------------------------------------------------------------------------- metrics


def _append_jsonl(path: Path, record: dict[str, Any], fault_point: str | None = None) -> None:
    with _disk_full_is_a_user_error(path), open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
    if fault_point is not None:
        faults.inject(fault_point)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a cut-off last line (a crash mid-append) is dropped."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RunError(f"{path}: line {number} is not JSON (edited by hand?)") from None
    return records


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one record to ``metrics.jsonl``."""
    _append_jsonl(metrics_file(run_dir), record, "metrics_append")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (empty when there is none)."""
    return _read_jsonl(metrics_file(run_dir))


def append_resume(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one record to ``resume.jsonl`` (one per ``--resume``)."""
    _append_jsonl(Path(run_dir) / _RESUME, record)


def read_resumes(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's resume.jsonl (empty when it was never resumed)."""
    return _read_jsonl(Path(run_dir) / _RESUME)


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
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise RunError(f"{path}: not JSON; run `mscon eval` again to rewrite it") from None


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


def _step_checkpoints(folder: Path) -> list[Path]:
    """``step_NNNNNNNN.pt`` files of a checkpoint folder, oldest first."""
    found = [p for p in folder.glob("step_*.pt") if p.stem.removeprefix("step_").isdigit()]
    return sorted(found, key=lambda p: int(p.stem.removeprefix("step_")))


def last_checkpoint_step(run_dir: str | Path) -> int | None:
    """The step of the newest ``step_NNNNNNNN.pt`` (None when there is none)."""
    found = _step_checkpoints(Path(run_dir) / CHECKPOINT_DIR)
    return int(found[-1].stem.removeprefix("step_")) if found else None


def _link_atomic(source: Path, target: Path) -> None:
    """Make ``target`` name the file ``source`` (a hard link; a copy where links fail)."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with _disk_full_is_a_user_error(target):
        try:
            os.link(source, tmp)
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    _fsync_folder(target.parent)


def save_checkpoint(
    run_dir: str | Path, state: dict[str, Any], name: str = "last", keep: int = 1
) -> Path:
    """Write ``state`` (tensors and plain containers) atomically; return its path.

    With ``name="last"`` the state goes to ``checkpoints/step_NNNNNNNN.pt``
    (``state["step"]``, 0 when absent), ``last.pt`` becomes a hard link to it, and
    only the newest ``keep`` step files stay. Any other name writes ``NAME.pt``.
    A write cut short (a full disk: RunError; a crash) leaves the previous
    checkpoints loadable.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    state = {"format": CHECKPOINT_FORMAT, **state}
    if name != "last":
        path = folder / f"{name}.pt"
        _write_atomic(path, lambda handle: torch.save(state, handle))
        return path
    if keep < 1:
        raise ValueError(f"keep: expected >= 1 checkpoints, got {keep}")
    written = folder / f"step_{int(state.get('step', 0)):08d}.pt"
    _write_atomic(written, lambda handle: torch.save(state, handle), "checkpoint_write")
    last = folder / "last.pt"
    _link_atomic(written, last)
    for old in _step_checkpoints(folder)[:-keep]:
        old.unlink()
    return last


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: a file holding anything but tensors
    and plain containers is refused (RunError) without running any of its code."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise RunError(
            f"{path}: refused: the checkpoint holds pickled objects other than tensors and "
            "plain containers (it could run code); use a checkpoint written by mscon"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        text = str(error).strip() or type(error).__name__
        first = text.splitlines()[0].split(". ")[0]  # torch appends paragraphs of advice
        raise RunError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {first}); "
            "resume or evaluate from an older checkpoints/step_*.pt"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise RunError(f"{path}: not an mscon checkpoint (no 'model' entry)")
    version = state.get("format", 1)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise RunError(
            f"{path}: checkpoint format {version!r} is newer than this mscon reads "
            f"({CHECKPOINT_FORMAT}); upgrade mscon"
        )
    return state


def unwrap_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's weights out of a method's state dict."""
    prefix = "encoder."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def encoder_from_state(
    config: Config, state: dict[str, Any], source: str | Path = "checkpoint"
) -> nn.Module:
    """Rebuild ``config``'s backbone with the checkpoint's encoder weights (eval, frozen).

    Raises:
        RunError: the weights do not fit the backbone (``source`` names the file).
    """
    from mscon.models.backbones import build_backbone

    encoder, _ = build_backbone(config.model.backbone)
    try:
        encoder.load_state_dict(unwrap_encoder(state["model"]))
    except RuntimeError:
        raise RunError(
            f"{source}: the weights do not fit model.backbone {config.model.backbone!r} of the "
            "run's config.yaml (a checkpoint of another run?)"
        ) from None
    encoder.eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return encoder


def encoder_from_checkpoint(run_dir: str | Path, checkpoint: str = "last") -> nn.Module:
    """The run's trained encoder, frozen and in eval mode."""
    config = load_run_config(run_dir)
    path = checkpoint_path(run_dir, checkpoint)
    return encoder_from_state(config, load_checkpoint(path), path)


# ----------------------------------------------------------------------------- the folder


def clear_run(run_dir: str | Path) -> None:
    """Remove a run's metrics, resume log, evaluation and checkpoints (``--overwrite``)."""
    run_dir = Path(run_dir)
    for name in (_METRICS, _RESUME, _EVAL):
        (run_dir / name).unlink(missing_ok=True)
    for pattern in ("*.pt", "*.tmp"):
        for stale in (run_dir / CHECKPOINT_DIR).glob(pattern):
            stale.unlink()


# ----------------------------------------------------------------------------- the run lock


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is running (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _live_holder(lock: Path) -> str | None:
    """A description of the live process holding ``lock``, or None when it is free or stale."""
    try:
        pid_text, _, host = lock.read_text().strip().partition(" ")
    except FileNotFoundError:
        return None
    if not pid_text.isdigit():
        return None  # unreadable: cut off while written, so stale
    pid = int(pid_text)
    if host and host != socket.gethostname():
        return f"pid {pid} on host {host}"
    if pid == os.getpid() or not _process_alive(pid):
        return None
    return f"pid {pid}"


def check_unlocked(run_dir: str | Path) -> None:
    """RunError when a live process holds the run folder (writes nothing)."""
    lock = Path(run_dir) / _LOCK
    holder = _live_holder(lock)
    if holder is not None:
        raise RunError(
            f"{run_dir}: in use by another mscon run ({holder}); wait for it to finish or "
            f"stop it (if it is not running, delete {lock})"
        )


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``RUN/run.lock`` ("PID HOST") for the block; a stale lock of a dead process
    is taken over.

    Raises:
        RunError: a live process holds the folder.
    """
    lock = Path(run_dir) / _LOCK
    mine = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(3):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            check_unlocked(run_dir)
            lock.unlink(missing_ok=True)  # stale: take it over
            continue
        with os.fdopen(handle, "w") as file:
            file.write(mine)
        break
    else:
        raise RunError(f"{lock}: could not take the lock (other processes keep taking it)")
    try:
        yield lock
    finally:
        try:
            if lock.read_text() == mine:
                lock.unlink()
        except FileNotFoundError:
            pass
