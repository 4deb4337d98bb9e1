r"""How many of a similarity's labels are random? An estimate from encoder features.

MSCon's ``consistency`` weighting (``method.weighting: consistency``) gives each
similarity a weight from the share of its training labels that look random to
the encoder, instead of from its head's loss (a head that collapsed on clean
labels and one trained on noise have the same loss; docs/results.md).

The estimate (:func:`label_noise`) assumes symmetric noise: a wrong label is
drawn uniformly from the K classes. Around an image whose true class the
encoder has isolated, a share :math:`1 - \rho + \rho/K` of the neighbours'
labels is that class and :math:`\rho/K` each other class, so the classes the
neighbourhood holds least of still hold :math:`\rho/K` each; a clean
similarity the encoder confuses puts its errors on a few near classes and
leaves the rest at 0. So, over a bank of features and labels:

1. each entry's k nearest neighbours (cosine; entries of the same image, by
   dataset index, left out) give the share :math:`p_{ik}` of each class;
2. the entries of the purest neighbourhoods (the top ``purest`` fraction by
   largest share) are where the encoder isolates a class;
3. there :math:`\hat\rho = K \cdot` mean share of the :math:`\lfloor K/2
   \rfloor` classes the neighbourhood holds least of (one class for K <= 3),
   clipped to [0, 1].

The neighbours of odd rank choose the pure entries and their least-held classes,
those of even rank measure the shares: chosen and measured on the same labels,
the estimate would read low (the entries with the fewest random labels by chance
look purest).

It measures how uniform the disagreement is, not how well the encoder predicts
the labels, so a fine similarity the encoder has not learnt yet is not taken for
a noisy one. Measured on a trained synthetic encoder (k = 100, ``purest`` 0.1,
seed 0, docs/results.md): clean ``shape_color`` (64 classes) 0.01, clean
``color`` 0.00, clean ``size`` (3 classes) 0.07; ``color`` with 25 / 50 / 100 %
random labels 0.28 / 0.62 / 0.89 (``benchmarks/label_consistency.py``).

Uniform noise is an assumption: noise that confuses neighbouring classes only
looks like a clean similarity the encoder confuses, and reads low; so do labels
moved to another class at a rate above (K - 1)/K (at 100 % on 3 classes the true
class is the one a neighbourhood holds none of: measured 0.02-0.06). A
similarity the encoder cannot separate at all reads high (a 3-class grouping of
shapes the features separate to 46 %: 0.67-0.76 with clean labels).

:class:`LabelNoiseBank` keeps the bank: the encoder's features of the plain
(un-augmented) images, their labels and dataset indices of the last ``size``
images (gathered from every rank under DDP, so every rank holds the same bank and computes the same
weights), and re-estimates every ``every`` training steps once it is full.
Its buffers are in the method's ``state_dict``, so a resumed run continues
with the same bank.

Example:
    >>> import torch
    >>> features = torch.eye(4).repeat_interleave(25, dim=0)  # 4 tight clusters
    >>> labels = torch.arange(4).repeat_interleave(25)  # the clusters' classes
    >>> round(label_noise(features, labels, torch.arange(100), 4, neighbours=10), 3)
    0.0
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mscon import distributed

__all__ = [
    "label_noise",
    "nearest",
    "noise_from_neighbours",
    "LabelNoiseBank",
    "consistency_weights",
]


def label_noise(
    features: Tensor,
    labels: Tensor,
    index: Tensor,
    num_classes: int,
    *,
    neighbours: int = 100,
    purest: float = 0.1,
) -> float:
    """Estimated share of uniformly random labels among ``labels`` (see the module doc).

    Args:
        features: (n, D) encoder features (any scale: cosine similarity).
        labels: (n,) class ids in [0, num_classes), -1 where missing (a row with a
            missing label is neither read nor counted among neighbours).
        index: (n,) dataset index of each row; rows of the same image are never
            each other's neighbours.
        num_classes: K >= 2, the similarity's number of classes (noise spreads
            over all of them, present in the rows or not).
        neighbours: k; fewer when fewer other rows exist.
        purest: the fraction of rows, those with the purest neighbourhoods, that
            the estimate is read from.

    Returns 0.0 when no row has 2 other-image rows to be its neighbours.
    """
    if features.shape[0] < 2:
        return 0.0
    return noise_from_neighbours(
        nearest(features, index, neighbours), labels, num_classes, purest=purest
    )


def nearest(features: Tensor, index: Tensor, neighbours: int) -> Tensor:
    """(n, k) each row's k nearest rows by cosine, rows of the same ``index`` left out.

    k is ``neighbours`` or, when smaller, the fewest other-image rows any row has.
    """
    f = nn.functional.normalize(features.float(), dim=1)
    same = index[:, None] == index[None, :]
    similarity = (f @ f.T).masked_fill_(same, -float("inf"))
    k = min(neighbours, int((~same).sum(1).min()))
    return similarity.topk(k, dim=1).indices


def noise_from_neighbours(
    near: Tensor, labels: Tensor, num_classes: int, *, purest: float = 0.1
) -> float:
    """:func:`label_noise` from each row's neighbours ``near`` (n, k), nearest first
    (one neighbour search serves every similarity)."""
    if near.shape[1] < 2:
        return 0.0
    near = near[labels >= 0]
    # alternate neighbours pick the classes and the pure rows (a), the others measure
    # the floor (b): picked on the same counts, the floor would read low (the rows
    # with the fewest random labels by chance look purest)
    shares_a, seen_a = _shares(labels[near[:, 0::2]], num_classes)
    shares_b, seen_b = _shares(labels[near[:, 1::2]], num_classes)
    usable = seen_a & seen_b
    if not bool(usable.any()):
        return 0.0
    shares_a, shares_b = shares_a[usable], shares_b[usable]
    lowest = shares_a.argsort(dim=1, stable=True)[:, : max(num_classes // 2, 1)]
    floor = shares_b.gather(1, lowest).mean(1)
    largest = shares_a.max(dim=1).values
    pure = largest >= torch.quantile(largest, 1.0 - purest)
    return float((num_classes * floor[pure].mean()).clamp(0.0, 1.0))


def _shares(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(n, K) share of each class among each row's (n, m) neighbour labels (-1 not
    counted), and (n,) whether a row has any labelled neighbour."""
    known = labels >= 0
    counts = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    counts.scatter_add_(1, labels.clamp_min(0), known.float())
    total = known.sum(1)
    return counts / total.clamp_min(1)[:, None], total > 0


def consistency_weights(noise: Tensor, smallest: float = 0.01) -> Tensor:
    """Weights ``C (1 - noise) / sum(1 - noise)``: they sum to C, like ``relative``'s."""
    clean = (1.0 - noise).clamp_min(smallest)
    return noise.numel() * clean / clean.sum()


class LabelNoiseBank(nn.Module):
    """A ring buffer of features, labels and indices, and each column's noise estimate.

    Args:
        num_classes: K per label column (C columns).
        feature_dim: D of the encoder's features.
        size: entries kept (the estimate waits until the bank is full).
        neighbours, purest: as :func:`label_noise`.
        every: re-estimate every this many calls of :meth:`update`.

    The estimate reads each image's newest entry only (a bank larger than an epoch
    holds some twice). Buffers: ``features`` (size, D), ``labels`` (size, C) (-1: missing),
    ``index`` (size,), ``filled`` and ``cursor`` (entries written, next slot),
    ``updates`` (calls so far) and ``noise`` (C,), the latest estimates (0 before the
    first).
    """

    def __init__(
        self,
        num_classes: list[int],
        feature_dim: int,
        *,
        size: int = 4096,
        neighbours: int = 100,
        purest: float = 0.1,
        every: int = 10,
    ) -> None:
        super().__init__()
        if size < 2 or neighbours < 1 or every < 1 or not 0 < purest <= 1:
            raise ValueError(
                f"LabelNoiseBank: need size >= 2, neighbours >= 1, every >= 1 and 0 < purest "
                f"<= 1, got size={size}, neighbours={neighbours}, every={every}, purest={purest}"
            )
        self.num_classes = list(num_classes)
        self.size, self.neighbours, self.purest, self.every = size, neighbours, purest, every
        self.register_buffer("features", torch.zeros(size, feature_dim))
        self.register_buffer("labels", torch.full((size, len(num_classes)), -1, dtype=torch.long))
        self.register_buffer("index", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("noise", torch.zeros(len(num_classes)))

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, index: Tensor) -> bool:
        """Add this rank's rows (every rank's under DDP); True when ``noise`` was re-estimated.

        Args:
            features: (B, D) encoder features, one row per image.
            labels: (B, C) labels (-1: missing).
            index: (B,) dataset indices.
        """
        sizes = distributed.gather_sizes(features.shape[0], features.device)
        rows = [
            distributed.gather_no_grad(t.detach(), sizes).to(self.labels.device)
            for t in (features, labels, index)
        ]
        features, labels, index = rows
        features, labels, index = features[-self.size :], labels[-self.size :], index[-self.size :]
        slots = (self.cursor + torch.arange(len(index), device=index.device)) % self.size
        self.features[slots] = features.to(self.features.dtype)
        self.labels[slots] = labels.long()
        self.index[slots] = index.long()
        self.cursor.copy_((self.cursor + len(index)) % self.size)
        self.filled.copy_((self.filled + len(index)).clamp(max=self.size))
        self.updates += 1
        if int(self.filled) < self.size or int(self.updates) % self.every:
            return False
        self.noise.copy_(self.estimate())
        return True

    def newest(self) -> Tensor:
        """Slots of the bank's entries, one per image (its newest): two entries of one
        image would be each other's neighbours' twins and read as agreement."""
        filled = int(self.filled)
        age = (self.cursor - 1 - torch.arange(self.size, device=self.index.device)) % self.size
        slots = torch.argsort(age[:filled], stable=True)  # newest first
        return slots[_first_occurrence(self.index[slots])].sort().values

    def estimate(self) -> Tensor:
        """(C,) :func:`label_noise` of each column over the bank's newest entry per image
        (one neighbour search for all columns)."""
        slots = self.newest()
        noise = torch.zeros_like(self.noise)
        if len(slots) < 2:
            return noise
        near = nearest(self.features[slots], self.index[slots], self.neighbours)
        for column, classes in enumerate(self.num_classes):
            labels = self.labels[slots, column]
            noise[column] = noise_from_neighbours(near, labels, classes, purest=self.purest)
        return noise


def _first_occurrence(values: Tensor) -> Tensor:
    """Position of each distinct value's first occurrence in ``values``."""
    unique, inverse = torch.unique(values, return_inverse=True)
    positions = torch.arange(len(values), device=values.device)
    first = torch.full((len(unique),), len(values), device=values.device, dtype=torch.long)
    return first.scatter_reduce_(0, inverse, positions, reduce="amin")
