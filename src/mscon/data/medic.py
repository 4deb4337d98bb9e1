"""Convert the MEDIC release into a manifest folder.

MEDIC (Alam et al. 2021, crisisnlp.qcri.org/medic) unpacks to::

    SRC/MEDIC_train.tsv  SRC/MEDIC_dev.tsv  SRC/MEDIC_test.tsv
    SRC/data/...                         the images, named by the TSVs' image_path

Each TSV is tab-separated with columns event_name, image_id, image_path,
damage_severity, informative, humanitarian, disaster_types; ``image_path`` is
relative to the release root and an empty task cell is a missing label. SRC may
also be the folder that contains ``MEDIC/``.

The manifest keeps the official splits (train, dev -> val, test) and the
columns damage_severity, informative, humanitarian, disaster_types and
event_name (the source event, usable as a further out-of-domain task).
Images stay in place: ``path`` is relative from the output folder to SRC.
Rows whose image file does not exist are dropped, with a warning giving the
count.

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
from mscon.data.manifest import write_manifest

SPLIT_FILES = {"train": "MEDIC_train.tsv", "val": "MEDIC_dev.tsv", "test": "MEDIC_test.tsv"}
TASKS = ("damage_severity", "informative", "humanitarian", "disaster_types")
EXTRA = ("event_name",)


def convert_medic(src: str | Path, out: str | Path) -> Path:
    """Write ``OUT/labels.csv`` for the MEDIC release in ``src``; returns OUT.

    Raises:
        DataError: a split file or a required column missing (naming the file
            and column), or no image found.
    """
    root = _find_root(Path(src))
    out = Path(out)
    paths: list[str] = []
    split: list[str] = []
    labels: dict[str, list[str]] = {c: [] for c in (*TASKS, *EXTRA)}
    missing = 0
    for name, file in SPLIT_FILES.items():
        for row in _read_tsv(root / file):
            image = root / row["image_path"]
            if not image.is_file():
                missing += 1
                continue
            paths.append(os.path.relpath(os.path.abspath(image), os.path.abspath(out)))
            split.append(name)
            for column in labels:
                labels[column].append(row.get(column, ""))
    if not paths:
        raise DataError(f"{root}: none of the {missing} images named in the TSV files exists")
    if missing:
        warnings.warn(f"{root}: {missing} rows name a missing image; dropped", stacklevel=2)
    for column in EXTRA:
        if not any(labels[column]):
            del labels[column]  # an older copy without event_name
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
