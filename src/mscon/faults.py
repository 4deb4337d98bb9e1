"""Deterministic fault injection for crash tests (never set in normal use).

``MSCON_FAULT_INJECT=POINT:N[:KIND]`` makes the ``N``-th write at ``POINT``
(counted from 1 within the process) fail after half of the file is written:

* ``crash`` (the default): the process dies at once (``os._exit(99)``, no
  cleanup, no ``finally``), as a power cut or SIGKILL would leave it;
* ``enospc``: the write raises ``OSError(ENOSPC)``, as a full disk does.

The only point is ``checkpoint_write`` (:func:`mscon.runs.save_checkpoint`).

Example:
    >>> import io, os
    >>> os.environ[ENV] = "checkpoint_write:2:enospc"
    >>> handle = io.BytesIO(b"0123456789")
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
from typing import BinaryIO

from mscon.errors import ConfigError

__all__ = ["CRASH_STATUS", "ENV", "POINTS", "inject", "reset"]

ENV = "MSCON_FAULT_INJECT"
POINTS = ("checkpoint_write",)
KINDS = ("crash", "enospc")
CRASH_STATUS = 99
_counts: dict[str, int] = {}


def _parse(value: str) -> tuple[str, int, str]:
    """``POINT:N[:KIND]`` -> (point, n, kind); ConfigError naming the variable."""
    parts = value.split(":")
    point, count, kind = (parts + ["crash"])[:3] if len(parts) in (2, 3) else ("", "", "")
    if point not in POINTS or not count.isdigit() or int(count) < 1 or kind not in KINDS:
        raise ConfigError(
            f"{ENV}={value}: expected POINT:N[:KIND] with POINT in {', '.join(POINTS)}, "
            f"N >= 1 and KIND in {', '.join(KINDS)}"
        )
    return point, int(count), kind


def inject(point: str, handle: BinaryIO) -> None:
    """Count one write at ``point``; on the armed one, cut ``handle`` to half and fail.

    Called after the file's content is written to ``handle`` and before it is
    synced and renamed into place.
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
