"""Deterministic fault injection for crash tests (never set in normal use).

``MSCON_FAULT_INJECT=POINT:N[:KIND]`` makes the ``N``-th write at ``POINT``
(counted from 1 within the process) fail in a chosen way:

* ``checkpoint_write`` (:func:`mscon.runs.save_checkpoint`), after half of the
  temporary file is written: ``crash`` (the default) ends the process at once
  (``os._exit(99)``: no cleanup, no ``finally``, as a power cut leaves it);
  ``enospc`` raises ``OSError(ENOSPC)``, as a full disk does.
* ``metrics_append`` (:func:`mscon.runs.append_metrics`), after the record is
  written: ``stop`` stops the process with SIGSTOP, so a test can SIGKILL it at
  a known step between two checkpoints.

Example:
    >>> import io, os
    >>> os.environ[ENV] = "checkpoint_write:2:enospc"
    >>> handle = io.BytesIO()
    >>> handle.write(b"0123456789")
    10
    >>> inject("checkpoint_write", handle)  # the first write passes
    >>> try:
    ...     inject("checkpoint_write", handle)
    ... except OSError as error:
    ...     error.errno == errno.ENOSPC, handle.getvalue()
    (True, b'01234')
    >>> del os.environ[ENV]; reset()
"""

from __future__ import annotations

import errno
import os
import signal
from typing import BinaryIO

from mscon.errors import ConfigError

__all__ = ["CRASH_STATUS", "ENV", "KINDS", "inject", "reset"]

ENV = "MSCON_FAULT_INJECT"
KINDS = {"checkpoint_write": ("crash", "enospc"), "metrics_append": ("stop",)}
CRASH_STATUS = 99
_counts: dict[str, int] = {}


def _parse(value: str) -> tuple[str, int, str]:
    """``POINT:N[:KIND]`` -> (point, n, kind); ConfigError naming the variable."""
    parts = value.split(":")
    point = parts[0]
    count = parts[1] if len(parts) in (2, 3) else ""
    kinds = KINDS.get(point, ())
    kind = parts[2] if len(parts) == 3 else (kinds[0] if kinds else "")
    if not count.isdigit() or int(count) < 1 or kind not in kinds:
        choices = "; ".join(f"{p}:N[:{'|'.join(k)}]" for p, k in KINDS.items())
        raise ConfigError(f"{ENV}={value}: expected {choices} (N >= 1)")
    return point, int(count), kind


def inject(point: str, handle: BinaryIO | None = None) -> None:
    """Count one write at ``point``; on the armed one, fail as ``MSCON_FAULT_INJECT`` says.

    ``handle`` (``checkpoint_write``) holds the file's whole content, not yet
    synced or renamed; it is cut to half before the failure.
    """
    value = os.environ.get(ENV)
    if not value:
        return
    armed, count, kind = _parse(value)
    if armed != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] != count:
        return
    if kind == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    handle.flush()
    handle.truncate(handle.tell() // 2)
    handle.flush()
    if kind == "crash":
        os.fsync(handle.fileno())
        os._exit(CRASH_STATUS)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def reset() -> None:
    """Forget the write counts (tests)."""
    _counts.clear()
