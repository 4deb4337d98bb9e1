"""Convert the MEDIC release into a manifest folder.

MEDIC (Alam et al. 2021, crisisnlp.qcri.org/medic) unpacks to::

    SRC/MEDIC_train.tsv  SRC/MEDIC_dev.tsv  SRC/MEDIC_test.tsv
    SRC/data/...                         the images, named by the TSVs' image_path

Each TSV is tab-separated with columns image_id, event_name, image_path,
damage_severity, informative, humanitarian, disaster_types; ``image_path`` is
relative to the release root (``data/<source>/<event>/<file>``) and an empty
task cell is a missing label. SRC may also be the folder that contains
``MEDIC/``. The id columns do not hold what their names say in the published
rows (image_id holds the source, event_name the file name), so they are never
written as labels.

The manifest keeps the official splits (train, dev -> val, test) and the
columns damage_severity, informative, humanitarian, disaster_types, plus
``source`` and ``event`` derived from ``image_path`` (out-of-domain tasks;
``event`` is missing for paths without an event folder). Images stay in place:
``path`` is relative from the output folder to SRC. Every image is decoded at
conversion under the shared image policy (:mod:`mscon.data.images`): a
truncated-but-decodable JPEG is kept and counted in a warning; rows whose image
is missing or not a decodable image are dropped, with a warning naming the
first files and the count.

Example:
    >>> SPLIT_FILES["val"]
    'MEDIC_dev.tsv'
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

from mscon.data.dataset import DataError
from mscon.data.images import check_image, decode_files, first_files, warn_conversion
from mscon.data.manifest import write_manifest

SPLIT_FILES = {"train": "MEDIC_train.tsv", "val": "MEDIC_dev.tsv", "test": "MEDIC_test.tsv"}
TASKS = ("damage_severity", "informative", "humanitarian", "disaster_types")
DERIVED = ("source", "event")  # from image_path: data/<source>/<event>/<file>


def source_and_event(image_path: str) -> tuple[str, str]:
    """(source, event) of a MEDIC ``image_path``; event "" when the path has none.

    Example:
        >>> source_and_event("data/ASONAM17_Damage_Image_Dataset/ecuador_eq/a.jpg")
        ('ASONAM17_Damage_Image_Dataset', 'ecuador_eq')
        >>> source_and_event("data/aidr_info/b.jpg")
        ('aidr_info', '')
    """
    parts = [p for p in image_path.replace("\\", "/").split("/") if p not in ("", ".")]
    if parts and parts[0] == "data":
        parts = parts[1:]
    source = parts[0] if len(parts) >= 2 else ""
    event = parts[1] if len(parts) >= 3 else ""
    return source, event


def convert_medic(src: str | Path, out: str | Path) -> Path:
    """Write ``OUT/labels.csv`` for the MEDIC release in ``src``; returns OUT.

    Every image is decoded once under the shared image policy
    (:mod:`mscon.data.images`): truncated-but-decodable images are kept and
    counted in a warning; rows whose image is missing or not a decodable image
    are dropped, with a warning naming the first files and the count.

    Raises:
        DataError: a split file or a required column missing (naming the file
            and column), or no usable image found.
    """
    root = _find_root(Path(src))
    out = Path(out)
    rows: list[tuple[str, dict[str, str]]] = []
    missing: list[str] = []
    for name, file in SPLIT_FILES.items():
        for row in _read_tsv(root / file):
            if (root / row["image_path"]).is_file():
                rows.append((name, row))
            else:
                missing.append(row["image_path"])
    decoded = decode_files([root / r["image_path"] for _, r in rows], check_image)
    bad = {file for file, _ in decoded.bad}
    paths: list[str] = []
    split: list[str] = []
    labels: dict[str, list[str]] = {c: [] for c in (*TASKS, *DERIVED)}
    for name, row in rows:
        image = root / row["image_path"]
        if image in bad:
            continue
        paths.append(os.path.relpath(os.path.abspath(image), os.path.abspath(out)))
        split.append(name)
        for column in TASKS:
            labels[column].append(row.get(column, ""))
        source, event = source_and_event(row["image_path"])
        labels["source"].append(source)
        labels["event"].append(event)
    where = f"convert_medic: {root}"
    if not paths:
        raise DataError(
            f"{root}: none of the {len(missing) + len(rows)} images named in the TSV files "
            "exists and decodes"
        )
    if missing:
        warnings.warn(
            f"{where}: {len(missing)} rows name a missing image; dropped, first: "
            f"{first_files(missing)}",
            stacklevel=2,
        )
    warn_conversion(where, decoded, root)
    for column in DERIVED:
        if not any(labels[column]):
            del labels[column]  # paths without a <source>/<event> level
    write_manifest(out, paths, labels, split=split)
    return out


def _find_root(src: Path) -> Path:
    for candidate in (src, src / "MEDIC"):
        if (candidate / SPLIT_FILES["train"]).is_file():
            return candidate
    raise DataError(f"{src}: no {SPLIT_FILES['train']} (expected the unpacked MEDIC release)")


def _read_tsv(file: Path) -> list[dict[str, str]]:
    if not file.is_file():
        raise DataError(f"{file}: no such file (MEDIC has train, dev and test TSV files)")
    with open(file, newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.strip() for h in reader.fieldnames or []]
        for column in ("image_path", *TASKS):
            if column not in header:
                raise DataError(f"{file}: no column '{column}'; available: {', '.join(header)}")
        reader.fieldnames = header
        rows = [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    return [r for r in rows if r["image_path"]]
