"""Datasets and views: the embedded synthetic data, manifest folders, converters, augmentation.

Every dataset loads as one :class:`LabelledImages` (uint8 images, label columns,
a train / val / test split) through :func:`load_dataset`; views for training
come from :mod:`mscon.data.augment`. See docs/data.md.

Example:
    >>> data = load_dataset(None, image_size=16, synthetic_size=64, seed=0)
    >>> len(data), data.columns()
    (64, ['shape', 'color', 'size', 'pattern', 'shape_color', 'angle'])
    >>> sorted(set(data.split.tolist()))
    ['test', 'train', 'val']
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mscon.data.dataset import (
    DEFAULT_SPLIT,
    SPLITS,
    DataError,
    LabelledImages,
    check_splits,
    corrupt_labels,
    seeded_split,
)
from mscon.data.manifest import load_manifest, write_manifest
from mscon.data.medic import convert_medic
from mscon.data.zappos import convert_zappos50k

if TYPE_CHECKING:
    from mscon.config import DataConfig

__all__ = [
    "DEFAULT_SPLIT",
    "SPLITS",
    "DataError",
    "LabelledImages",
    "convert_medic",
    "convert_zappos50k",
    "corrupt_labels",
    "load_dataset",
    "load_experiment_data",
    "load_manifest",
    "make_synthetic",
    "seeded_split",
    "write_manifest",
    "write_synthetic",
]


def make_synthetic(*args, **kwargs) -> LabelledImages:
    """The embedded dataset; see :func:`mscon.data.synthetic.make_synthetic`."""
    from mscon.data import synthetic  # imported lazily, on first use

    return synthetic.make_synthetic(*args, **kwargs)


def write_synthetic(
    out: str | Path, size: int, seed: int = 0, image_size: int = 32, structure: str = "standard"
) -> Path:
    """Write the embedded dataset as a manifest folder; see :mod:`mscon.data.synthetic`."""
    from mscon.data import synthetic

    return synthetic.write_synthetic(out, size, seed, image_size, structure)


def load_dataset(
    path: str | Path | None,
    image_size: int = 32,
    split: Mapping[str, float] | None = None,
    seed: int = 0,
    corrupt: Mapping[str, float] | None = None,
    synthetic_size: int = 6000,
    synthetic_structure: str = "standard",
    corrupt_mode: str = "other",
) -> LabelledImages:
    """The dataset of ``data.path``: a manifest folder, or the embedded one when None.

    Args:
        path: manifest folder (with ``labels.csv``), or None for the embedded
            synthetic dataset (``synthetic_size`` images generated from ``seed``).
        image_size: side S of the images.
        split: {train, val, test} fractions (default 0.7 / 0.1 / 0.2), used
            when there is no ``split`` column; shuffled by ``seed``.
        seed: the seed of the split, of the synthetic images and of ``corrupt``.
        corrupt: {column: rate}: that share of the column's non-missing train
            labels is redrawn at random (deterministic).
        corrupt_mode: ``other`` (each redrawn label moves to a random other
            class) or ``uniform`` (drawn from all classes); see
            :func:`corrupt_labels`.
        synthetic_size: images of the embedded dataset.
        synthetic_structure: its label columns (``standard`` or ``grouped``; see
            :mod:`mscon.data.synthetic`).

    Raises:
        DataError: bad manifest, images, split or corrupt settings (one line,
            naming the file, key or column).
    """
    if path is None:
        data = make_synthetic(
            int(synthetic_size),
            seed=seed,
            image_size=image_size,
            split=split,
            structure=synthetic_structure,
        )
        check_splits(data.split, f"data.split ({synthetic_size} synthetic images)")
    else:
        data = load_manifest(path, image_size=image_size, split=split, seed=seed)
    return corrupt_labels(data, corrupt, seed, corrupt_mode)


def load_experiment_data(data: DataConfig, seed: int, clean: bool = False) -> LabelledImages:
    """The dataset of a config's ``data`` section, its label columns checked.

    Args:
        data: the ``data`` section (path, image size, split, corrupt, ...).
        seed: the experiment seed.
        clean: leave out ``data.corrupt`` (evaluation uses the clean labels).

    Raises:
        DataError: as :func:`load_dataset`, or a column of ``data.similarities`` /
            ``data.eval_tasks`` the dataset does not have.
    """
    dataset = load_dataset(
        data.path,
        image_size=data.image_size,
        split=data.split,
        seed=seed,
        corrupt=None if clean else (data.corrupt or None),
        synthetic_size=data.synthetic_size,
        synthetic_structure=data.synthetic_structure,
        corrupt_mode=data.corrupt_mode,
    )
    dataset.check_columns(data.similarities, "data.similarities")
    dataset.check_columns(data.eval_tasks, "data.eval_tasks")
    return dataset
