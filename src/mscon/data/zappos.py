"""Convert the UT-Zappos50K release into a manifest folder.

The release (Yu and Grauman, vision.cs.utexas.edu/projects/finegrained/utzap50k)
unpacks to::

    SRC/ut-zap50k-images/CATEGORY/SUBCATEGORY/BRAND/CID.jpg      (136 x 102 px)
    SRC/ut-zap50k-images-square/...                            (same tree, 136 x 136)
    SRC/ut-zap50k-data/meta-data.csv    CID,Category,SubCategory,HeelHeight,Insole,
                                        Closure,Gender,Material,ToeStyle
    SRC/ut-zap50k-data/image-path.mat   ``imagepath``: each CSV row's image, in order

A CID such as ``7965307-5291`` names the file ``7965307.5291.jpg``. The square
tree is used when present (a center crop of the 4:3 images cuts toes and
heels). Rows are matched to images through ``image-path.mat`` when it is there
and the path exists, else by the CID file name found while walking the tree
(the released paths and folder names disagree for a few brands, e.g. names
ending in '.' or ``Levi's&#174;``). Rows without an image are dropped, with a
warning giving the count.

Written columns (all from the first value of multi-valued cells such as
``Men;Women`` -> ``Men``; empty cells stay missing):

==============  =====================================================================
``category``    Shoes, Boots, Sandals, Slippers
``subcategory`` e.g. Oxfords, Heels, Ankle, Knee High, ...
``closure``     e.g. Lace up, Slip-On, Buckle, Zipper, ...
``gender``      Men, Women, Boys, Girls, ...
``brand``       the brand folder of the image path (``%2E`` and HTML escapes undone)
``heel_height`` continuous, inches: the release's bins mapped to their midpoints
``heel``        the original heel-height bin as a categorical column
``insole``, ``material``, ``toe_style``
==============  =====================================================================

Heel-height bins -> number: Flat 0, Under 1in 0.5, 1in - 1 3/4in 1.375,
2in - 2 3/4in 2.375, 3in - 3 3/4in 3.375, 4in - 4 3/4in 4.375, 5in & over 5.5;
other strings give the mean of the numbers they contain (in inches), or missing.

There is no official split for these attributes: the manifest has no split
column, so the config's seeded ``data.split`` fractions apply. Images stay
where they are: ``path`` holds relative paths from the output folder to SRC
(moving either breaks the manifest; re-run the converter).

Example:
    >>> heel_inches("1in - 1 3/4in"), heel_inches("Flat"), heel_inches("")
    (1.375, 0.0, nan)
"""

from __future__ import annotations

import csv
import html
import math
import os
import re
import warnings
from pathlib import Path
from urllib.parse import unquote

from mscon.data.dataset import DataError
from mscon.data.manifest import write_manifest

IMAGE_DIRS = ("ut-zap50k-images-square", "ut-zap50k-images")
DATA_DIR = "ut-zap50k-data"
META = "meta-data.csv"
REQUIRED = ("CID", "Category", "SubCategory", "HeelHeight", "Closure", "Gender")
OPTIONAL = {"Insole": "insole", "Material": "material", "ToeStyle": "toe_style"}
HEEL_INCHES = {
    "flat": 0.0,
    "under 1in": 0.5,
    "1in - 1 3/4in": 1.375,
    "2in - 2 3/4in": 2.375,
    "3in - 3 3/4in": 3.375,
    "4in - 4 3/4in": 4.375,
    "5in & over": 5.5,
}


def convert_zappos50k(src: str | Path, out: str | Path) -> Path:
    """Write ``OUT/labels.csv`` for the UT-Zappos50K release in ``src``; returns OUT.

    Raises:
        DataError: no ``meta-data.csv`` or image tree under ``src``, a required
            column missing from the CSV, or no row matched to an image.
    """
    src, out = Path(src), Path(out)
    meta = _find_meta(src)
    image_dir = _find_images(src, meta.parent)
    rows = _read_meta(meta)
    listed = _mat_paths(meta.parent / "image-path.mat", len(rows))
    by_name = _index_tree(image_dir)
    paths, labels = [], {name: [] for name in _COLUMNS}
    for i, row in enumerate(rows):
        rel = _match(row, listed[i] if listed else None, image_dir, by_name)
        if rel is None:
            continue
        paths.append(os.path.relpath(os.path.abspath(image_dir / rel), os.path.abspath(out)))
        for name, value in _labels(row, rel).items():
            labels[name].append(value)
    dropped = len(rows) - len(paths)
    if not paths:
        raise DataError(f"{meta}: none of the {len(rows)} rows matched an image under {image_dir}")
    if dropped:
        warnings.warn(f"{meta}: {dropped} of {len(rows)} rows have no image; dropped", stacklevel=2)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, paths, labels)
    return out


_COLUMNS = ("category", "subcategory", "closure", "gender", "brand", "heel_height", "heel",
            "insole", "material", "toe_style")  # fmt: skip


def heel_inches(cell: str) -> float:
    """The documented number (inches) of a HeelHeight cell; NaN when empty or unknown."""
    text = " ".join(cell.split()).lower()
    if text in HEEL_INCHES:
        return HEEL_INCHES[text]
    numbers = []
    for whole, frac in re.findall(r"(\d+(?:\.\d+)?)(?:\s+(\d+/\d+))?", text):
        value = float(whole)
        if frac:
            num, den = frac.split("/")
            value += float(num) / float(den)
        numbers.append(value)
    return sum(numbers) / len(numbers) if numbers else math.nan


def first_value(cell: str) -> str:
    """The first of ';'-joined values, stripped ("Men;Women" -> "Men")."""
    return cell.split(";")[0].strip()


def _find_meta(src: Path) -> Path:
    for candidate in (src / DATA_DIR / META, src / META, *sorted(src.glob(f"*/{DATA_DIR}/{META}"))):
        if candidate.is_file():
            return candidate
    raise DataError(f"{src}: no {DATA_DIR}/{META} (expected the unpacked UT-Zappos50K release)")


def _find_images(src: Path, data_dir: Path) -> Path:
    for root in (src, data_dir.parent, *sorted(p for p in src.iterdir() if p.is_dir())):
        for name in IMAGE_DIRS:
            if (root / name).is_dir():
                return root / name
    raise DataError(f"{src}: no {' or '.join(IMAGE_DIRS)} folder")


def _read_meta(meta: Path) -> list[dict[str, str]]:
    with open(meta, newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        for column in REQUIRED:
            if column not in header:
                raise DataError(f"{meta}: no column '{column}'; available: {', '.join(header)}")
        reader.fieldnames = header
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def _mat_paths(mat: Path, n: int) -> list[str] | None:
    """The ``imagepath`` list of image-path.mat, or None when absent or unusable."""
    if not mat.is_file():
        return None
    try:
        from scipy.io import loadmat

        cells = loadmat(mat)["imagepath"].ravel()
        paths = [str(c.ravel()[0]) if c.size else "" for c in cells]
    except Exception as error:  # an unreadable .mat falls back to the tree walk
        warnings.warn(f"{mat}: unreadable ({error}); matching by file name", stacklevel=3)
        return None
    if len(paths) != n:
        warnings.warn(
            f"{mat}: {len(paths)} paths for {n} CSV rows; matching by file name", stacklevel=3
        )
        return None
    return [p.replace("\\", "/").lstrip("./") for p in paths]


def _index_tree(image_dir: Path) -> dict[str, list[str]]:
    """File name -> relative paths of every image under the tree."""
    index: dict[str, list[str]] = {}
    for root, _, files in os.walk(image_dir):
        rel_root = os.path.relpath(root, image_dir)
        for name in files:
            if name.lower().endswith((".jpg", ".jpeg", ".png")):
                rel = name if rel_root == "." else f"{rel_root}/{name}".replace(os.sep, "/")
                index.setdefault(name, []).append(rel)
    return index


def _match(
    row: dict[str, str], listed: str | None, image_dir: Path, by_name: dict[str, list[str]]
) -> str | None:
    """The relative image path of a CSV row, or None."""
    if listed and (image_dir / listed).is_file():
        return listed
    names = [Path(listed).name] if listed else []
    names.append(row["CID"].replace("-", ".") + ".jpg")
    for name in names:
        candidates = by_name.get(name, [])
        if candidates:
            wanted = (row.get("Category", ""), row.get("SubCategory", ""))
            preferred = [c for c in candidates if tuple(c.split("/")[:2]) == wanted]
            return sorted(preferred or candidates)[0]
    return None


def _brand(rel: str) -> str:
    parts = rel.split("/")
    folder = parts[2] if len(parts) >= 4 else (parts[-2] if len(parts) >= 2 else "")
    return html.unescape(unquote(folder)).replace("\u00ae", "").strip().rstrip(".").strip()


def _labels(row: dict[str, str], rel: str) -> dict[str, object]:
    heel = first_value(row.get("HeelHeight", ""))
    values: dict[str, object] = {
        "category": first_value(row["Category"]),
        "subcategory": first_value(row["SubCategory"]),
        "closure": first_value(row["Closure"]),
        "gender": first_value(row["Gender"]),
        "brand": _brand(rel),
        "heel_height": heel_inches(heel),
        "heel": heel,
    }
    for source, name in OPTIONAL.items():
        values[name] = first_value(row.get(source, ""))
    return values
