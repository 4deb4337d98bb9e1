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
ending in '.' or ``Levi's&#174;``). Every matched image is decoded once under
the shared image policy (:mod:`mscon.data.images`): truncated-but-decodable
images are kept and counted in a warning; rows without an image, or whose file
is not a decodable image, are dropped, with a warning naming the first ones and
the count.

Cells ``NA``, ``N/A``, ``nan``, ``null``, ``none`` and empty are missing. Cells
with several ';'-joined values (``Men;Women``, ``Boys;Girls``, ``Zipper;Buckle``)
follow a per-column policy (``multi_valued`` argument, ``--multi-valued
COLUMN=POLICY`` on the command line): ``combine`` joins the sorted values with
'+' into one class (``Men+Women``: unisex shoes are not labelled Men),
``first`` keeps the first value, ``missing`` makes the cell missing. Defaults:
gender and closure ``combine``, every other column ``first``.

Written columns:

==============  =====================================================================
``category``    Shoes, Boots, Sandals, Slippers
``subcategory`` e.g. Oxfords, Heels, Ankle, Knee High, ...
``closure``     e.g. Lace up, Slip-On, Buckle, Zipper, ...
``gender``      Men, Women, Boys, Girls, Men+Women, Boys+Girls, ...
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
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote

from mscon.data.dataset import DataError
from mscon.data.images import check_image, decode_files, first_files, warn_conversion
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


MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})
POLICIES = ("combine", "first", "missing")
# Columns whose cells may hold several ';'-joined values, and their default policy.
MULTI_VALUED_DEFAULTS = {
    "category": "first",
    "subcategory": "first",
    "closure": "combine",
    "gender": "combine",
    "heel": "first",
    "insole": "first",
    "material": "first",
    "toe_style": "first",
}


def convert_zappos50k(
    src: str | Path, out: str | Path, multi_valued: Mapping[str, str] | None = None
) -> Path:
    """Write ``OUT/labels.csv`` for the UT-Zappos50K release in ``src``; returns OUT.

    Args:
        src: the unpacked release.
        out: the manifest folder to write.
        multi_valued: column -> policy for cells holding several ';'-joined
            values (``combine``: the sorted values joined by '+', e.g.
            ``Men+Women``; ``first``; ``missing``). Unnamed columns keep
            :data:`MULTI_VALUED_DEFAULTS` (gender and closure ``combine``).

    Raises:
        DataError: no ``meta-data.csv`` or image tree under ``src``, a required
            column missing from the CSV, an unknown multi-valued column or
            policy, or no row matched to a decodable image.
    """
    policy = multi_valued_policy(multi_valued)
    src, out = Path(src), Path(out)
    meta = _find_meta(src)
    image_dir = _find_images(src, meta.parent)
    rows = _read_meta(meta)
    listed = _mat_paths(meta.parent / "image-path.mat", len(rows))
    by_name = _index_tree(image_dir)
    matched = [
        (row, _match(row, listed[i] if listed else None, image_dir, by_name))
        for i, row in enumerate(rows)
    ]
    decoded = decode_files([image_dir / rel for _, rel in matched if rel], check_image)
    bad = {file for file, _ in decoded.bad}
    paths, labels = [], {name: [] for name in _COLUMNS}
    for row, rel in matched:
        if rel is None or image_dir / rel in bad:
            continue
        paths.append(os.path.relpath(os.path.abspath(image_dir / rel), os.path.abspath(out)))
        for name, value in _labels(row, rel, policy).items():
            labels[name].append(value)
    where = f"convert_zappos50k: {meta}"
    unmatched = [row["CID"] for row, rel in matched if rel is None]
    if not paths:
        raise DataError(
            f"{meta}: none of the {len(rows)} rows matched a decodable image under {image_dir}"
        )
    if unmatched:
        warnings.warn(
            f"{where}: {len(unmatched)} of {len(rows)} rows have no image; dropped, first CIDs: "
            f"{first_files(unmatched)}",
            stacklevel=2,
        )
    warn_conversion(where, decoded, image_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, paths, labels)
    return out


def multi_valued_policy(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The defaults updated by ``overrides`` (DataError naming a bad column or policy).

    Example:
        >>> multi_valued_policy({"gender": "first"})["gender"]
        'first'
    """
    policy = dict(MULTI_VALUED_DEFAULTS)
    for column, value in (overrides or {}).items():
        key, value = column.strip().lower(), str(value).strip().lower()
        if key not in policy:
            raise DataError(
                f"multi_valued: unknown column '{column}'; expected one of {', '.join(policy)}"
            )
        if value not in POLICIES:
            raise DataError(
                f"multi_valued: {column}={value}: unknown policy; expected one of "
                f"{', '.join(POLICIES)}"
            )
        policy[key] = value
    return policy


def cell_value(cell: str, policy: str = "first") -> str:
    """A meta-data cell under a multi-valued policy; missing markers (NA, ...) give "".

    Example:
        >>> cell_value("Women;Men", "combine"), cell_value("Men;Women", "first")
        ('Men+Women', 'Men')
        >>> cell_value("Boys;Girls", "missing"), cell_value("NA"), cell_value("Men;n/a")
        ('', '', 'Men')
    """
    values = [v.strip() for v in cell.split(";")]
    values = list(dict.fromkeys(v for v in values if v.lower() not in MISSING))
    if not values:
        return ""
    if len(values) == 1 or policy == "first":
        return values[0]
    if policy == "combine":
        return "+".join(sorted(values))
    return ""


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
    """The first of ';'-joined values, stripped ("Men;Women" -> "Men"); "" when missing."""
    return cell_value(cell, "first")


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


def _labels(row: dict[str, str], rel: str, policy: Mapping[str, str]) -> dict[str, object]:
    heel = cell_value(row.get("HeelHeight", ""), policy["heel"])
    values: dict[str, object] = {
        "category": cell_value(row["Category"], policy["category"]),
        "subcategory": cell_value(row["SubCategory"], policy["subcategory"]),
        "closure": cell_value(row["Closure"], policy["closure"]),
        "gender": cell_value(row["Gender"], policy["gender"]),
        "brand": _brand(rel),
        "heel_height": heel_inches(heel) if "+" not in heel else math.nan,
        "heel": heel,
    }
    for source, name in OPTIONAL.items():
        values[name] = cell_value(row.get(source, ""), policy[name])
    return values
