"""Manifest folders: ``labels.csv`` plus images, decoded once into a cached uint8 file.

The format (DESIGN.md, "Data: the manifest format")::

    path,split,category,closure,heel_height
    images/000001.jpg,train,Shoes,Lace up,1.375
    images/000002.jpg,test,Boots,,0.5

* ``path`` (required): image file relative to the folder (or absolute), any
  format Pillow reads.
* ``split`` (optional): train / val / test (``dev``, ``valid`` and ``validation``
  read as val); without it the seeded split fractions apply.
* every other column is a label column. An empty cell is a missing label.
  A column is **continuous** (float32, NaN = missing) when every non-empty cell
  parses as a number and at least one is not a whole number; otherwise it is
  **categorical** (int64, -1 = missing) with classes sorted as strings, or
  numerically when every cell is a number (so ``2`` comes before ``10``).

Images are decoded under the shared image policy (:mod:`mscon.data.images`:
a truncated but decodable image is used, with a warning) and converted to RGB,
center-cropped to a square and resized to ``image_size`` (Pillow, bilinear
with antialiasing; JPEGs use draft mode to decode at a reduced scale first),
then stored in a memory-mapped uint8 file
``<folder>/.mscon-cache/images_<S>px_<key>.u8`` (or
``~/.cache/mscon/<key>/`` when the folder is not writable; ``MSCON_CACHE_DIR``
overrides that location). The key hashes the ordered ``path`` column and each
image file's size and modification time, so the cache is rebuilt when a path
is added, removed or reordered or an image changes, and reused when only label
cells change.

Example:
    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> folder = Path(tempfile.mkdtemp())
    >>> for i in range(4):
    ...     Image.new("RGB", (8, 6), (60 * i, 0, 0)).save(folder / f"{i}.png")
    >>> _ = (folder / "labels.csv").write_text(
    ...     "path,split,kind,weight\\n0.png,train,a,1.5\\n1.png,train,b,\\n"
    ...     "2.png,test,a,2\\n3.png,val,,3\\n")
    >>> data = load_manifest(folder, image_size=4)
    >>> data.images.shape, data.classes, data.labels["kind"].tolist()
    (torch.Size([4, 3, 4, 4]), {'kind': ['a', 'b']}, [0, 1, 0, -1])
    >>> data.labels["weight"].tolist()[:2], data.split.tolist()
    ([1.5, nan], ['train', 'train', 'test', 'val'])
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mscon.data.dataset import DataError, LabelledImages, check_splits, seeded_split
from mscon.data.images import decode_files, decode_image, warn_truncated

LABELS = "labels.csv"
CACHE_DIR = ".mscon-cache"
CACHE_VERSION = "1"
SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}
RESERVED = ("path", "split")
_SHOW = 3  # bad images named in an error message


@dataclass
class Manifest:
    """The parsed ``labels.csv``: raw cells, not yet typed."""

    folder: Path
    paths: list[str]
    split: list[str] | None
    columns: dict[str, list[str]]


def read_manifest(folder: str | Path) -> Manifest:
    """Parse ``labels.csv`` (DataError naming the file on a malformed table)."""
    folder = Path(folder)
    file = folder / LABELS
    if not file.is_file():
        raise DataError(f"{file}: no such file (a manifest folder needs {LABELS})")
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{file}: not a readable UTF-8 CSV ({error})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{file}: empty file, expected a header with a 'path' column")
    header = [h.strip() for h in rows[0]]
    if "path" not in header:
        raise DataError(f"{file}: no 'path' column; columns: {', '.join(header)}")
    if "" in header:
        raise DataError(f"{file}: column {header.index('') + 1} has an empty name")
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise DataError(f"{file}: column '{duplicates[0]}' appears more than once")
    body = rows[1:]
    if not body:
        raise DataError(f"{file}: no rows")
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{file}: line {number} has {len(row)} fields, the header has {len(header)}"
            )
    cells = {h: [row[i].strip() for row in body] for i, h in enumerate(header)}
    paths = cells.pop("path")
    if any(not p for p in paths):
        raise DataError(f"{file}: line {paths.index('') + 2} has an empty path")
    split = cells.pop("split", None)
    if split is not None:
        split = _read_split(split, file)
    return Manifest(folder, paths, split, cells)


def _read_split(cells: list[str], file: Path) -> list[str]:
    out = []
    for number, cell in enumerate(cells, start=2):
        name = SPLIT_NAMES.get(cell.lower())
        if name is None:
            raise DataError(
                f"{file}: line {number}: unknown split '{cell}'; expected train, val or test"
            )
        out.append(name)
    return out


def type_column(cells: Sequence[str]) -> tuple[torch.Tensor, list[str] | None]:
    """Typed labels of one column: (int64 indices, classes) or (float32 values, None).

    Example:
        >>> type_column(["10", "2", "", "2"])
        (tensor([ 1,  0, -1,  0]), ['2', '10'])
        >>> type_column(["0.5", "", "3"])[0]
        tensor([0.5000,    nan, 3.0000])
    """
    filled = [c for c in cells if c != ""]
    numbers = _numbers(filled)
    if numbers is not None and any(math.isfinite(v) and v != int(v) for v in numbers):
        values = [float(c) if c != "" else math.nan for c in cells]
        return torch.tensor(values, dtype=torch.float32), None
    if numbers is not None:
        names = sorted(set(filled), key=lambda c: (float(c), c))
    else:
        names = sorted(set(filled))
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index.get(c, -1) for c in cells], dtype=torch.long), names


def _numbers(cells: Iterable[str]) -> list[float] | None:
    try:
        values = [float(c) for c in cells]
    except ValueError:
        return None
    return None if any(math.isinf(v) for v in values) else values


def load_manifest(
    folder: str | Path,
    image_size: int = 32,
    split: Mapping[str, float] | None = None,
    seed: int = 0,
) -> LabelledImages:
    """A manifest folder as :class:`LabelledImages` (images from the cache, built if stale).

    Args:
        folder: the folder holding ``labels.csv``.
        image_size: side S of the decoded images.
        split: {train, val, test} fractions, used only without a ``split`` column.
        seed: seed of that split.

    Raises:
        DataError: a malformed table, missing or undecodable images, an empty
            train or test split.
    """
    manifest = read_manifest(folder)
    n = len(manifest.paths)
    if manifest.split is not None:
        split_array = np.asarray(manifest.split, dtype=str)
        where = str(Path(folder) / LABELS)
    else:
        split_array = seeded_split(n, split, seed)
        where = f"data.split (no split column in {Path(folder) / LABELS})"
    check_splits(split_array, where)
    labels: dict[str, torch.Tensor] = {}
    classes: dict[str, list[str]] = {}
    for column, cells in manifest.columns.items():
        labels[column], names = type_column(cells)
        if names is not None:
            classes[column] = names
    images = cached_images(manifest.folder, manifest.paths, image_size)
    return LabelledImages(images, labels, classes, split_array, source=str(Path(folder) / LABELS))


def write_manifest(
    folder: str | Path,
    paths: Sequence[str],
    labels: Mapping[str, Sequence],
    split: Sequence[str] | None = None,
) -> Path:
    """Write ``labels.csv`` (floats as given, None / NaN as empty cells); returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header = ["path"] + (["split"] if split is not None else []) + list(labels)
    columns = [list(paths)] + ([list(split)] if split is not None else [])
    columns += [[_cell(v) for v in values] for values in labels.values()]
    if any(len(c) != len(paths) for c in columns):
        raise ValueError("write_manifest: every column needs one value per path")
    file = folder / LABELS
    tmp = file.with_name(LABELS + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(zip(*columns, strict=True))
    os.replace(tmp, file)
    return file


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


# ----------------------------------------------------------------------------- image cache


def cached_images(folder: Path, paths: Sequence[str], image_size: int) -> torch.Tensor:
    """(n, 3, S, S) uint8 of the images, from the cache file (rebuilt when stale)."""
    if int(image_size) < 1:
        raise DataError(f"data.image_size: expected a positive side, got {image_size}")
    files = [_resolve(folder, p) for p in paths]
    key = _cache_key(folder, paths, files, image_size)
    target = _cache_file(folder, key, image_size)
    shape = (len(paths), 3, image_size, image_size)
    if not (target.is_file() and target.stat().st_size == math.prod(shape)):
        _build(target, files, paths, image_size, folder)
    array = np.memmap(target, dtype=np.uint8, mode="c", shape=shape)
    return torch.from_numpy(array)


def _resolve(folder: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else folder / p


def _cache_key(folder: Path, paths: Sequence[str], files: Sequence[Path], size: int) -> str:
    """Hash of the ordered paths and each file's (size, mtime); DataError on missing files."""
    digest = hashlib.sha256(f"mscon-cache {CACHE_VERSION} {size}\n".encode())
    missing = []
    stats: dict[Path, str] = {}
    for path, file in zip(paths, files, strict=True):
        if file not in stats:
            try:
                st = file.stat()
                stats[file] = f"{st.st_size} {st.st_mtime_ns}"
            except OSError:
                stats[file] = "missing"
                missing.append((path, "missing"))
        digest.update(f"{path}\0{stats[file]}\n".encode())
    if missing:
        raise _bad_images(folder, missing)
    return digest.hexdigest()[:16]


def _bad_images(folder: Path, bad: Sequence[tuple[str, str]]) -> DataError:
    first = ", ".join(f"{p} ({why})" for p, why in bad[:_SHOW])
    more = ", ..." if len(bad) > _SHOW else ""
    return DataError(
        f"{folder / LABELS}: {len(bad)} image(s) missing or undecodable, first: {first}{more}"
    )


def _cache_file(folder: Path, key: str, size: int) -> Path:
    name = f"images_{size}px_{key}.u8"
    local = folder / CACHE_DIR
    if _writable(local):
        return local / name
    root = os.environ.get("MSCON_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mscon"
    )
    fallback = Path(root) / key
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback / name


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
        return True
    except OSError:
        return False


def _build(
    target: Path, files: Sequence[Path], paths: Sequence[str], size: int, folder: Path
) -> None:
    """Decode every image into a temporary memmap, then move it into place atomically."""
    n = len(files)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        array = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(n, 3, size, size))
        bad = _decode_all(files, paths, size, array, folder)
        if bad:
            raise _bad_images(folder, bad)
        array.flush()
        del array
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    for stale in target.parent.glob(f"images_{size}px_*.u8"):
        if stale != target:
            stale.unlink(missing_ok=True)


def _decode_all(
    files: Sequence[Path], paths: Sequence[str], size: int, out: np.ndarray, folder: Path
) -> list[tuple[str, str]]:
    """Fill ``out`` under the image policy (images.py); returns the (path, reason) failures.

    Truncated-but-decodable images are used, with a warning naming them.
    """
    first_row: dict[Path, int] = {}
    for row, file in enumerate(files):
        first_row.setdefault(file, row)

    def decode(file: Path) -> None:
        out[first_row[file]] = decode_image(file, size)

    result = decode_files(files, decode, progress=f"decoding images at {size} px")
    warn_truncated(folder / LABELS, [paths[first_row[f]] for f in result.truncated], stacklevel=5)
    bad = [(paths[first_row[f]], why) for f, why in result.bad]
    for row, file in enumerate(files):
        if row != first_row[file]:
            out[row] = out[first_row[file]]
    return bad
