"""The one image policy shared by the converters and the training-time image cache.

* An image Pillow decodes is used.
* A **truncated** image (typically a JPEG cut short by an interrupted download)
  that Pillow decodes with its truncated-image tolerance
  (``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``) is **kept** (the missing part is
  grey) and counted in a warning naming the first few files. The tolerance is
  switched on only inside :func:`tolerate_truncated_images`, which restores the
  previous value; it is never left on globally.
* A file that is not a decodable image even with the tolerance is **bad**: the
  converters drop its row and name it in a warning (count and first files); the
  training-time cache refuses the dataset with an error naming the first files
  and the count.

Files are decoded strictly first (in a thread pool); only the failures are
retried, one at a time, with the tolerance on, so no strict decode runs while
the flag is set.

Example:
    >>> from PIL import ImageFile
    >>> with tolerate_truncated_images():
    ...     ImageFile.LOAD_TRUNCATED_IMAGES
    True
    >>> ImageFile.LOAD_TRUNCATED_IMAGES
    False
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")
SHOW = 3  # files named in a warning or error message
_FLAG_LOCK = threading.Lock()


@contextmanager
def tolerate_truncated_images() -> Iterator[None]:
    """Set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` for the block, then restore it."""
    from PIL import ImageFile

    with _FLAG_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


@dataclass
class Decoded(Generic[T]):
    """What :func:`decode_files` made of each file."""

    values: dict[Path, T] = field(default_factory=dict)  # every usable file
    truncated: list[Path] = field(default_factory=list)  # kept, decoded with the tolerance
    bad: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason), not usable


def decode_files(
    files: Sequence[Path],
    decode: Callable[[Path], T],
    progress: str | None = None,
) -> Decoded[T]:
    """Apply ``decode`` to each distinct file under the image policy.

    Args:
        files: image files (duplicates are decoded once).
        decode: file -> value; any exception means "not decodable".
        progress: a tqdm label, shown for large sets.
    """
    from tqdm.auto import tqdm

    unique = list(dict.fromkeys(files))
    result: Decoded[T] = Decoded()

    def strict(file: Path):
        try:
            return True, decode(file)
        except Exception as error:  # any decoder failure is retried, then named
            return False, error

    workers = min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(
            tqdm(
                pool.map(strict, unique, chunksize=64),
                total=len(unique),
                desc=progress or "decoding images",
                disable=len(unique) < 2000 or None,
                leave=False,
            )
        )
    failed = []
    for file, (ok, value) in zip(unique, outcomes, strict=True):
        if ok:
            result.values[file] = value
        else:
            failed.append(file)
    for file in failed:  # rare: one at a time with the tolerance on
        try:
            with tolerate_truncated_images():
                result.values[file] = decode(file)
            result.truncated.append(file)
        except Exception as error:
            result.bad.append((file, f"undecodable: {type(error).__name__}"))
    return result


def first_files(names: Sequence[object], show: int = SHOW) -> str:
    """``a, b, c, ...``: the first few names of a list, for one-line messages."""
    text = ", ".join(str(n) for n in names[:show])
    return text + (", ..." if len(names) > show else "")


def warn_truncated(where: object, names: Sequence[object], stacklevel: int = 2) -> None:
    """The policy's warning for truncated images kept (no-op for none)."""
    if names:
        warnings.warn(
            f"{where}: {len(names)} truncated image(s) decoded with Pillow's "
            f"truncated-image tolerance and kept (missing part grey), first: {first_files(names)}",
            stacklevel=stacklevel + 1,
        )


def warn_conversion(where: object, decoded: Decoded, root: str | Path) -> None:
    """A converter's warnings for the dropped (undecodable) and the kept truncated images,
    named relative to ``root``; they point at the converter's caller."""
    if decoded.bad:
        names = [os.path.relpath(f, root) for f, _ in decoded.bad]
        warnings.warn(
            f"{where}: {len(names)} file(s) are not decodable images; their rows dropped, "
            f"first: {first_files(names)}",
            stacklevel=3,
        )
    warn_truncated(where, [os.path.relpath(f, root) for f in decoded.truncated], stacklevel=3)


def check_image(file: str | Path) -> None:
    """Decode ``file`` fully at a tiny size (raises on an undecodable file)."""
    decode_image(file, 8)


def decode_image(file: str | Path, size: int) -> np.ndarray:
    """One image -> uint8 (3, size, size): RGB, center square crop, antialiased resize."""
    from PIL import Image, ImageOps

    with Image.open(file) as image:
        image.draft("RGB", (size, size))
        image = ImageOps.exif_transpose(image).convert("RGB")
        w, h = image.size
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
