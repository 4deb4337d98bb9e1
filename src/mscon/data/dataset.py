"""The in-memory form of every dataset: uint8 images, label columns, a split.

Every source (the embedded synthetic data, a manifest folder, a converted real
release) ends as one :class:`LabelledImages`. Categorical labels are int64 with
-1 = missing; continuous labels are float32 with NaN = missing.

Example:
    >>> import numpy as np, torch
    >>> data = LabelledImages(
    ...     images=torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
    ...     labels={"shape": torch.tensor([0, 1, -1, 1]),
    ...             "angle": torch.tensor([0.5, 1.0, 2.0, 3.0])},
    ...     classes={"shape": ["circle", "square"]},
    ...     split=np.array(["train", "train", "val", "test"]),
    ... )
    >>> len(data.select("train")), data.columns(), data.is_continuous("angle")
    (2, ['shape', 'angle'], True)
    >>> data.label_matrix(["shape"]).squeeze(1).tolist()
    [0, 1, -1, 1]
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import get_args

import numpy as np
import torch

from mscon.config import CorruptMode
from mscon.errors import DataError

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = {"train": 0.7, "val": 0.1, "test": 0.2}


@dataclass
class LabelledImages:
    """Images with several label columns and a train / val / test split.

    Attributes:
        images: (n, 3, H, W) uint8 on CPU (possibly memory-mapped).
        labels: column -> (n,) int64 (-1 = missing) or float32 (NaN = missing).
        classes: categorical column -> class names in index order.
        split: (n,) array of str, each "train", "val" or "test".
        source: where the data came from, for messages.
    """

    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    classes: dict[str, list[str]]
    split: np.ndarray
    source: str = field(default="data", compare=False)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise DataError(f"{self.source}: images must be (n, 3, H, W), got {self.images.shape}")
        for column, values in self.labels.items():
            if values.shape != (n,):
                raise DataError(f"{self.source}: column '{column}' has shape {values.shape}")
            if values.is_floating_point() == (column in self.classes):
                kind = "float" if values.is_floating_point() else "integer"
                raise DataError(f"{self.source}: column '{column}' is {kind} but classes say not")
        self.split = np.asarray(self.split, dtype=str)
        if self.split.shape != (n,):
            raise DataError(f"{self.source}: split has shape {self.split.shape}, expected ({n},)")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def columns(self) -> list[str]:
        """The label columns, in file order."""
        return list(self.labels)

    def is_continuous(self, column: str) -> bool:
        """True for a float column (NaN = missing), False for a categorical one."""
        self.check_columns([column], "column")
        return column not in self.classes

    def num_classes(self, column: str) -> int:
        """Classes of a categorical column."""
        self.check_columns([column], "column")
        if column not in self.classes:
            raise DataError(f"column '{column}' is continuous, it has no classes")
        return len(self.classes[column])

    def check_columns(self, columns: Sequence[str], what: str) -> None:
        """DataError ``"WHAT: no column 'x'; available: a, b"`` for an unknown column."""
        for column in columns:
            if column not in self.labels:
                available = ", ".join(self.labels) or "(none)"
                raise DataError(f"{what}: no column '{column}'; available: {available}")

    def label_matrix(self, columns: Sequence[str], what: str = "columns") -> torch.Tensor:
        """Categorical columns stacked as (n, C) int64, -1 = missing (``what`` names the key)."""
        self.check_columns(columns, what)
        for column in columns:
            if column not in self.classes:
                raise DataError(
                    f"{what}: column '{column}' is continuous (float labels); a categorical "
                    "column is needed here"
                )
        if not columns:
            return torch.empty(len(self), 0, dtype=torch.long)
        return torch.stack([self.labels[c].long() for c in columns], dim=1)

    def check_similarities(self, columns: Sequence[str], what: str) -> None:
        """DataError for a column with fewer than two classes among these rows' labels:
        it cannot tell any two images apart (every labelled pair would be positive)."""
        matrix = self.label_matrix(columns, what)
        for c, column in enumerate(columns):
            present = matrix[:, c][matrix[:, c] >= 0].unique().tolist()
            if len(present) < 2:
                names = ", ".join(repr(self.classes[column][k]) for k in present) or "none"
                raise DataError(
                    f"{what}: column '{column}' has {len(present)} class ({names}) in the "
                    f"train split of {self.source}; a similarity needs at least 2"
                )

    def select(self, split: str) -> LabelledImages:
        """The rows of one split (images are an index copy)."""
        if split not in SPLITS:
            raise DataError(f"split: unknown split '{split}'; expected one of {', '.join(SPLITS)}")
        return self.subset(np.flatnonzero(self.split == split))

    def subset(self, rows: np.ndarray | Sequence[int]) -> LabelledImages:
        """The given rows, in the given order."""
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return LabelledImages(
            images=self.images[index],
            labels={c: v[index] for c, v in self.labels.items()},
            classes={c: list(v) for c, v in self.classes.items()},
            split=self.split[index.numpy()],
            source=self.source,
        )


def seeded_split(n: int, fractions: Mapping[str, float] | None, seed: int) -> np.ndarray:
    """Assign n rows to train / val / test by fractions, shuffled by ``seed``.

    Example:
        >>> s = seeded_split(10, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0)
        >>> sorted((k, int((s == k).sum())) for k in set(s.tolist()))
        [('test', 2), ('train', 7), ('val', 1)]
    """
    fractions = check_fractions(fractions)
    bounds = np.rint(np.cumsum([fractions[s] for s in SPLITS]) * n).astype(int)
    labels = np.empty(n, dtype="<U5")
    order = np.random.default_rng([seed, 0x5B117]).permutation(n)
    start = 0
    for name, stop in zip(SPLITS, bounds, strict=True):
        labels[order[start:stop]] = name
        start = stop
    return labels


def check_fractions(fractions: Mapping[str, float] | None) -> dict[str, float]:
    """Validated split fractions (keys of train / val / test, each >= 0, sum 1)."""
    if fractions is None:
        return dict(DEFAULT_SPLIT)
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise DataError(f"data.split: unknown split '{unknown[0]}'; expected train, val, test")
    values = {s: float(fractions.get(s, 0.0)) for s in SPLITS}
    if any(not np.isfinite(v) or v < 0 for v in values.values()):
        raise DataError(f"data.split: fractions must be >= 0, got {dict(fractions)}")
    if abs(sum(values.values()) - 1.0) > 1e-6:
        raise DataError(f"data.split: fractions must sum to 1, got {dict(fractions)}")
    return values


def check_splits(split: np.ndarray, where: str) -> None:
    """DataError when the train or test split is empty (val may be empty)."""
    for name in ("train", "test"):
        if not np.any(split == name):
            raise DataError(f"{where}: split '{name}' is empty")


CORRUPT_MODES: tuple[str, ...] = get_args(CorruptMode)  # the values data.corrupt_mode takes


def corrupt_labels(
    data: LabelledImages,
    corrupt: Mapping[str, float] | None,
    seed: int,
    mode: str = "other",
) -> LabelledImages:
    """Replace a share of train labels of some columns by random ones.

    For each ``column: rate``, round(rate x m) of the m non-missing train-split
    labels, chosen at random, are redrawn: with ``mode="other"`` each moves to a
    uniformly random *other* class (every chosen label is wrong; at rate 1 on K
    classes no label is the true one, which on few classes is informative:
    complementary labels); with ``mode="uniform"`` each is drawn uniformly from all
    K classes (a share 1/K stays right; at rate 1 the labels say nothing). The
    choice depends only on ``seed`` and the column name. Other splits and
    columns are untouched; a new object is returned.

    Example:
        >>> data = LabelledImages(torch.zeros(4, 3, 2, 2, dtype=torch.uint8),
        ...     {"c": torch.tensor([0, 0, 0, 0])}, {"c": ["a", "b"]}, np.array(["train"] * 4))
        >>> corrupt_labels(data, {"c": 0.5}, seed=0).labels["c"].tolist().count(1)
        2
    """
    if mode not in CORRUPT_MODES:
        raise DataError(
            f"data.corrupt_mode: expected one of {', '.join(CORRUPT_MODES)}, got {mode!r}"
        )
    if not corrupt:
        return data
    labels = dict(data.labels)
    for column, rate in corrupt.items():
        data.check_columns([column], "data.corrupt")
        if data.is_continuous(column):
            raise DataError(f"data.corrupt: column '{column}' is continuous; only categorical")
        if not 0.0 <= float(rate) <= 1.0:
            raise DataError(f"data.corrupt: rate for '{column}' must be in [0, 1], got {rate}")
        k = len(data.classes[column])
        values = labels[column].clone()
        rows = np.flatnonzero((data.split == "train") & (values.numpy() >= 0))
        count = int(round(float(rate) * len(rows)))
        if count and k < 2:
            raise DataError(f"data.corrupt: column '{column}' has {k} class; nothing to swap to")
        rng = np.random.default_rng([seed, 0xC0C0, zlib.crc32(column.encode())])
        chosen = rng.choice(rows, size=count, replace=False)
        if mode == "uniform":
            drawn = rng.integers(0, k, size=count)
        else:
            drawn = (values.numpy()[chosen] + rng.integers(1, max(k, 2), size=count)) % max(k, 1)
        values[chosen] = torch.as_tensor(drawn, dtype=values.dtype)
        labels[column] = values
    return LabelledImages(data.images, labels, data.classes, data.split, data.source)
