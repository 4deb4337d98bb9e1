"""Evaluation of a frozen encoder: features, linear probe, weighted kNN, per-task results (SPEC §9).

The functions here are pure functions on tensors; reading a run folder is separate glue.

Protocols (fixed so that runs compare):

* **Features.** :func:`extract_features` runs the encoder in eval mode, without
  augmentation, on the images the caller's ``preprocess`` turns into the network input.
* **Linear probe** (:func:`linear_probe`). Rows labelled -1 are dropped from every split.
  Features are standardised with the train split's mean and standard deviation (a
  dimension whose train std is below 1e-6 is only centred). The classes are the train
  split's classes (labels may be sparse integers; they are remapped); a val/test row of a
  class unseen in training counts as an error. The classifier is multinomial logistic
  regression, zero-initialised, minimising

      mean cross-entropy + (l2 / 2) * ||W||_F^2        (the bias is not penalised)

  full-batch with L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search, history 20,
  at most ``max_iter`` = 200 iterations per L2 value, gradient tolerance 1e-5), in float32.
  With a val split the L2 strength is chosen from ``L2_GRID`` = (1, 1e-1, ..., 1e-6),
  fitted from strong to weak, each fit warm-started from the previous one; the val top-1
  picks the value (ties go to the stronger one) and the classifier fitted on the train
  split alone with that value is the one tested (no refit on train + val, so the val
  split never trains the probe). Without a val split (or one with no labelled row),
  l2 = ``DEFAULT_L2`` = 1e-3. A task with a single train class scores the share of test
  rows of that class. The fit starts from zero and is deterministic; ``seed`` only seeds
  torch's generator during the fit. The fit agrees with scikit-learn's
  ``LogisticRegression(C=1 / (n * l2))`` (same weights to 3 digits, >= 98.8% equal test
  predictions at l2 = 1e-5, 100% at l2 >= 1e-3, on 2,000 x 128 x 20 classes).
* **Weighted kNN** (:func:`knn_top1`, Wu et al. 2018 as in lightly and solo-learn):
  cosine similarity to the L2-normalised train features, the k most similar train rows
  vote for their class with weight exp(sim / 0.07), top-1 of the summed votes.
  k = 200, or 20 when the train split has fewer than 10,000 rows, never more than the
  train split's size.
* **Continuous tasks** (:func:`linear_regression`): ridge regression on standardised
  features with an unpenalised intercept, closed form, minimising
  mean squared error + alpha * ||w||^2; alpha chosen on val (lowest MSE) from
  ``ALPHA_GRID`` = (1e-5, ..., 10) when there is a val split, else ``DEFAULT_ALPHA`` = 1e-3.
  NaN targets are dropped; reports R² and mean absolute error on test.

Accuracies are percentages in [0, 100].

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(60) % 3
    >>> x = torch.randn(60, 8, generator=g) + 4 * torch.nn.functional.one_hot(y, 8)
    >>> tasks = evaluate_features(
    ...     {"train": x[:40], "test": x[40:]},
    ...     {"train": {"shape": y[:40]}, "test": {"shape": y[40:]}},
    ...     {"shape": "in"},
    ... )
    >>> tasks["shape"]["linear_top1"], tasks["shape"]["knn_top1"], tasks["shape"]["num_classes"]
    (100.0, 100.0, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from mscon.config import Config

L2_GRID: tuple[float, ...] = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
DEFAULT_L2 = 1e-3
MAX_ITER = 200
ALPHA_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_ALPHA = 1e-3
_MIN_STD = 1e-6


# ----------------------------------------------------------------------------- features


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: torch.Tensor | np.ndarray,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Encoder features of uint8 images, in batches, without augmentation.

    The encoder runs in eval mode on ``device``; its previous mode and device are restored
    afterwards.

    Args:
        encoder: maps float (b, 3, H', W') to (b, D).
        images: uint8 (n, 3, H, W) on the CPU (a tensor or a possibly memory-mapped array).
        preprocess: maps a uint8 batch (on ``device``) to the encoder's float input.
        batch_size: images per forward pass.
        device: where the encoder runs.

    Returns:
        float32 (n, D) on the CPU ((0, 0) when n = 0).

    Example:
        >>> import torch
        >>> encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
        >>> images = torch.zeros(7, 3, 2, 2, dtype=torch.uint8)
        >>> extract_features(encoder, images, lambda b: b.float() / 255, batch_size=3).shape
        torch.Size([7, 5])
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if len(images.shape) != 4:
        raise ValueError(f"images: expected shape (n, 3, H, W), got {tuple(images.shape)}")
    n, device = len(images), torch.device(device)
    if n == 0:
        return torch.empty(0, 0)
    was_training = encoder.training
    home = next((p.device for p in encoder.parameters()), None)
    encoder.eval().to(device)
    try:
        out: torch.Tensor | None = None
        for start in range(0, n, batch_size):
            batch = _to_device(images[start : start + batch_size], device)
            features = encoder(preprocess(batch)).float().cpu()
            if out is None:
                out = torch.empty(n, features.shape[1])
            out[start : start + len(features)] = features
    finally:
        encoder.train(was_training)
        if home is not None:
            encoder.to(home)
    return out


def _to_device(batch: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    if not isinstance(batch, torch.Tensor):
        batch = torch.from_numpy(np.array(batch))  # copies out of a read-only memmap
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


# ----------------------------------------------------------------------------- labels


def _check_pair(x: torch.Tensor, y: torch.Tensor, name: str, dim: int | None = None) -> None:
    if x.dim() != 2 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(
            f"{name}_x, {name}_y: expected features (n, D) and labels (n,), "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}_x: expected {dim} feature columns (as train), got {x.shape[1]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}_x: features contain NaN or inf")


def _require_rows(train_y: torch.Tensor, test_y: torch.Tensor, what: str) -> None:
    for name, y in (("train", train_y), ("test", test_y)):
        if len(y) == 0:
            raise ValueError(f"{name}_y: no {what}")


def _as_labels(y: torch.Tensor, name: str) -> torch.Tensor:
    """Integer labels (n,), -1 = missing; floats must be whole numbers or NaN (missing)."""
    if y.is_floating_point():
        if not torch.all(torch.isnan(y) | (y == y.round())):
            raise ValueError(f"{name}_y: expected integer class labels, got non-integer floats")
        y = torch.nan_to_num(y, nan=-1.0)
    return y.long()


def _labelled(
    x: torch.Tensor, y: torch.Tensor, name: str, dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with a label (>= 0) of the split ``name``, checked."""
    _check_pair(x, y, name, dim)
    y = _as_labels(y, name)
    keep = y >= 0
    return x[keep].float(), y[keep]


def _remap(y: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Indices of ``y`` in the sorted ``classes``; -1 for a class not in ``classes``."""
    index = torch.searchsorted(classes, y).clamp(max=len(classes) - 1)
    return torch.where(classes[index] == y, index, -1)


def _standardise(train: torch.Tensor, *others: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Centre and scale by the train split's statistics (near-constant dimensions only centred)."""
    mean = train.mean(0)
    std = train.std(0, unbiased=False)
    std = torch.where(std > _MIN_STD, std, torch.ones_like(std))
    return tuple(None if x is None else (x - mean) / std for x in (train, *others))


def _accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 in percent; ``target`` -1 (an unseen class) never matches."""
    return 100.0 * (pred == target).double().mean().item()


# ----------------------------------------------------------------------------- linear probe


def _fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    l2: float,
    init: tuple[torch.Tensor, torch.Tensor],
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L-BFGS on mean cross-entropy + l2/2 ||W||^2, from ``init`` = (W (D, K), b (K,))."""
    weight = init[0].clone().requires_grad_(True)
    bias = init[1].clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-5,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(torch.addmm(bias, x, weight), y)
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _predict(x: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.addmm(params[1], x, params[0]).argmax(1)


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    val_x: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    *,
    l2_grid: Sequence[float] = L2_GRID,
    default_l2: float = DEFAULT_L2,
    max_iter: int = MAX_ITER,
    seed: int = 0,
) -> dict[str, Any]:
    """Multinomial logistic regression on frozen features; top-1 on the test split.

    The protocol (standardisation, L-BFGS, the L2 choice on val, label handling) is the
    one in this module's docstring.

    Args:
        train_x, test_x, val_x: features (n_split, D).
        train_y, test_y, val_y: integer labels (n_split,), -1 = missing.
        l2_grid: L2 strengths tried when a val split is given.
        default_l2: the L2 strength without a val split.
        max_iter: L-BFGS iterations per L2 value.
        seed: seeds torch's generator during the fit (the fit itself has no randomness).

    Returns:
        ``{"top1": percent, "l2": the strength used, "num_classes": train classes,
        "num_test": labelled test rows}``.

    Raises:
        ValueError: bad shapes, non-finite features, or no labelled train or test row.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [1.0], [4.0], [5.0]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> linear_probe(x, y, torch.tensor([[0.5], [4.5]]), torch.tensor([0, 1]))["top1"]
        100.0
    """
    if (val_x is None) != (val_y is None):
        raise ValueError("val_x, val_y: give both or neither")
    if not l2_grid or min(l2_grid) < 0 or default_l2 < 0:
        raise ValueError(f"l2_grid, default_l2: expected values >= 0, got {l2_grid}, {default_l2}")
    train_x, train_y = _labelled(train_x, train_y, "train")
    test_x, test_y = _labelled(test_x, test_y, "test", train_x.shape[1])
    _require_rows(train_y, test_y, "labelled rows (all -1)")
    classes = train_y.unique()
    train_t, test_t = _remap(train_y, classes), _remap(test_y, classes)
    result = {"l2": float(default_l2), "num_classes": len(classes), "num_test": len(test_y)}
    if len(classes) == 1:
        return {"top1": _accuracy(torch.zeros_like(test_t), test_t), **result}
    val = None
    if val_x is not None:
        val_x, val_y = _labelled(val_x, val_y, "val", train_x.shape[1])
        val = (val_x, _remap(val_y, classes)) if len(val_y) else None
    train_x, test_x, val_s = _standardise(train_x, test_x, None if val is None else val[0])
    grid = sorted(l2_grid, reverse=True) if val is not None else [default_l2]
    params = (train_x.new_zeros(train_x.shape[1], len(classes)), train_x.new_zeros(len(classes)))
    best: tuple[float, float, tuple[torch.Tensor, torch.Tensor]] | None = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for l2 in grid:
            params = _fit_logistic(train_x, train_t, float(l2), params, max_iter)
            score = _accuracy(_predict(val_s, params), val[1]) if val is not None else 0.0
            if best is None or score > best[0]:
                best = (score, float(l2), params)
    assert best is not None
    result["l2"] = best[1]
    return {"top1": _accuracy(_predict(test_x, best[2]), test_t), **result}


# ----------------------------------------------------------------------------- kNN


def knn_top1(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    k: int | None = None,
    temperature: float = 0.07,
    chunk_size: int | None = None,
) -> float:
    """Weighted kNN top-1 in percent (Wu et al. 2018).

    Each test row's k most cosine-similar train rows vote for their class with weight
    exp(sim / temperature); the class with the largest total wins (the lowest class
    index on a tie). Rows labelled -1 are dropped; a test row whose class is not among
    the train split's counts as an error.

    Args:
        train_x, test_x: features (n_split, D), normalised here.
        train_y, test_y: integer labels (n_split,), -1 = missing.
        k: neighbours; default 200, or 20 when the train split has fewer than 10,000
            labelled rows; at most the train split's size.
        temperature: the vote temperature (> 0).
        chunk_size: test rows per similarity matmul (default: about 16M similarities).

    Returns:
        Top-1 accuracy in percent.

    Example:
        >>> import torch
        >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> test = torch.tensor([[0.1, 1.0], [1.0, 0.2]])
        >>> knn_top1(train, torch.tensor([0, 0, 1]), test, torch.tensor([1, 1]), k=1)
        50.0
    """
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    if k is not None and k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    train_x, train_y = _labelled(train_x, train_y, "train")
    test_x, test_y = _labelled(test_x, test_y, "test", train_x.shape[1])
    _require_rows(train_y, test_y, "labelled rows (all -1)")
    classes = train_y.unique()
    train_t, test_t = _remap(train_y, classes), _remap(test_y, classes)
    k = min(default_k(len(train_y)) if k is None else k, len(train_y))
    train_n, test_n = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
    chunk = chunk_size or max(1, (1 << 24) // len(train_n))
    correct = 0
    for start in range(0, len(test_n), chunk):
        sim, index = (test_n[start : start + chunk] @ train_n.T).topk(k, dim=1)
        # exp((sim - max) / T): the same ranking as exp(sim / T), without overflow.
        weight = ((sim - sim[:, :1]) / temperature).exp()
        votes = sim.new_zeros(len(sim), len(classes)).scatter_add_(1, train_t[index], weight)
        correct += int((votes.argmax(1) == test_t[start : start + chunk]).sum())
    return 100.0 * correct / len(test_t)


def default_k(num_train: int) -> int:
    """The kNN protocol's k: 200, or 20 for a train split under 10,000 rows (then clamped)."""
    return min(200 if num_train >= 10_000 else 20, num_train)


# ----------------------------------------------------------------------------- regression


def _labelled_float(
    x: torch.Tensor, y: torch.Tensor, name: str, dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_pair(x, y, name, dim)
    keep = ~torch.isnan(y.double())
    return x[keep].double(), y[keep].double()


def _ridge_path(x: torch.Tensor, y: torch.Tensor, alphas: Sequence[float]) -> list[torch.Tensor]:
    """Ridge weights for each alpha: argmin mean (y - x w)^2 + alpha ||w||^2 (x, y centred)."""
    n, dim = x.shape
    if dim <= n:  # primal: w = V diag(1 / (lam + n alpha)) V^T x^T y
        lam, vecs = torch.linalg.eigh(x.T @ x)
        proj = vecs.T @ (x.T @ y)
        return [vecs @ (proj / (lam.clamp_min(0) + n * a)) for a in alphas]
    lam, vecs = torch.linalg.eigh(x @ x.T)  # dual: w = x^T U diag(1 / (lam + n alpha)) U^T y
    proj = vecs.T @ y
    return [x.T @ (vecs @ (proj / (lam.clamp_min(0) + n * a))) for a in alphas]


def _r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    ss_res = float((y - pred).pow(2).sum())
    ss_tot = float((y - y.mean()).pow(2).sum())
    if ss_tot == 0.0:  # constant target: 1 if predicted exactly, else 0 (as scikit-learn)
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def linear_regression(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    val_x: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    *,
    alpha_grid: Sequence[float] = ALPHA_GRID,
    default_alpha: float = DEFAULT_ALPHA,
) -> dict[str, float]:
    """Ridge regression of a continuous target on frozen features; R² and MAE on test.

    Args:
        train_x, test_x, val_x: features (n_split, D).
        train_y, test_y, val_y: float targets (n_split,), NaN = missing.
        alpha_grid: ridge strengths tried when a val split is given (lowest val MSE wins).
        default_alpha: the strength without a val split.

    Returns:
        ``{"r2": float, "mae": float, "alpha": the strength used, "num_test": int}``.

    Example:
        >>> import torch
        >>> x = torch.arange(10.0).unsqueeze(1)
        >>> out = linear_regression(x, 3 * x[:, 0] + 1, x, 3 * x[:, 0] + 1)
        >>> round(out["r2"], 4)
        1.0
    """
    if (val_x is None) != (val_y is None):
        raise ValueError("val_x, val_y: give both or neither")
    if not alpha_grid or min(alpha_grid) <= 0 or default_alpha <= 0:
        raise ValueError(
            f"alpha_grid, default_alpha: expected values > 0, got {alpha_grid}, {default_alpha}"
        )
    train_x, train_y = _labelled_float(train_x, train_y, "train")
    test_x, test_y = _labelled_float(test_x, test_y, "test", train_x.shape[1])
    _require_rows(train_y, test_y, "rows with a target (all NaN)")
    val = None if val_x is None else _labelled_float(val_x, val_y, "val", train_x.shape[1])
    if val is not None and len(val[1]) == 0:
        val = None
    train_x, test_x, val_s = _standardise(train_x, test_x, None if val is None else val[0])
    offset = train_y.mean()
    alphas = list(alpha_grid) if val is not None else [default_alpha]
    weights = _ridge_path(train_x, train_y - offset, alphas)
    best = 0
    if val is not None:
        errors = [float((val_s @ w + offset - val[1]).pow(2).mean()) for w in weights]
        best = min(range(len(alphas)), key=errors.__getitem__)
    pred = test_x @ weights[best] + offset
    return {
        "r2": _r2(pred, test_y),
        "mae": float((pred - test_y).abs().mean()),
        "alpha": float(alphas[best]),
        "num_test": len(test_y),
    }


# ----------------------------------------------------------------------------- per task


def evaluate_features(
    features: Mapping[str, torch.Tensor],
    labels: Mapping[str, Mapping[str, torch.Tensor]],
    tasks: Mapping[str, str],
    continuous: set[str] | frozenset[str] = frozenset(),
    knn_k: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Linear probe and kNN per task: the ``"tasks"`` object of eval.json.

    Args:
        features: split ("train", "test", optionally "val") -> features (n_split, D).
        labels: split -> {task: labels (n_split,)}; integer with -1 = missing for
            categorical tasks, float with NaN = missing for continuous ones.
        tasks: task -> "in" (a training similarity) or "out" (never trained on).
        continuous: the tasks evaluated by ridge regression instead of classification.
        knn_k: neighbours for kNN; None = the default (200, or 20 under 10,000 train rows).

    Returns:
        ``{task: {"domain", "linear_top1", "knn_top1", "num_classes"}}`` for categorical
        tasks and ``{task: {"domain", "linear_r2", "linear_mae"}}`` for continuous ones.

    Raises:
        ValueError: a missing split or task column, a bad domain, or a task without
            labelled train or test rows (the message names the task).
    """
    for split in ("train", "test"):
        if split not in features or split not in labels:
            raise ValueError(f"features, labels: the {split!r} split is missing")
    results: dict[str, dict[str, Any]] = {}
    for task, domain in tasks.items():
        if domain not in ("in", "out"):
            raise ValueError(f"tasks[{task!r}]: expected 'in' or 'out', got {domain!r}")
        try:
            results[task] = {
                "domain": domain,
                **_evaluate_task(features, labels, task, continuous, knn_k),
            }
        except ValueError as error:
            raise ValueError(f"task {task!r}: {error}") from error
    return results


def _evaluate_task(
    features: Mapping[str, torch.Tensor],
    labels: Mapping[str, Mapping[str, torch.Tensor]],
    task: str,
    continuous: set[str] | frozenset[str],
    knn_k: int | None = None,
) -> dict[str, Any]:
    def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if task not in labels[name]:
            raise ValueError(f"labels[{name!r}] has no column {task!r}")
        return features[name], labels[name][task]

    train, test = split("train"), split("test")
    has_val = "val" in features and task in labels.get("val", {})
    val = split("val") if has_val else (None, None)
    if task in continuous:
        out = linear_regression(*train, *test, *val)
        return {"linear_r2": out["r2"], "linear_mae": out["mae"]}
    probe = linear_probe(*train, *test, *val)
    return {
        "linear_top1": probe["top1"],
        "knn_top1": knn_top1(*train, *test, k=knn_k),
        "num_classes": probe["num_classes"],
    }


def task_domains(config: Config, trained_columns: Sequence[str]) -> dict[str, str]:
    """Each evaluated column -> "in" (the method trained on it) or "out".

    Every ``data.eval_tasks`` column is "out" for every method; a similarity the
    method did not train on (SupCon's second and later, all of SimCLR's) is "out" too.
    """
    tasks = {c: "in" if c in trained_columns else "out" for c in config.data.similarities}
    tasks.update({c: "out" for c in config.data.eval_tasks})
    return tasks


def evaluate_run(run_dir: str | Path, checkpoint: str = "last") -> dict[str, Any]:
    """Evaluate a run folder's encoder and write ``eval.json`` (DESIGN.md's schema).

    Features of the train, val (when present) and test splits, without
    augmentation, feed a linear probe and a weighted kNN per task. The labels are
    the clean ones: ``data.corrupt`` only affects what training saw.

    Returns:
        The eval.json content: {"tasks": {TASK: {...}}, "method", "checkpoint", "step", ...}.
    """
    from mscon import runs
    from mscon.data import DataError, load_experiment_data
    from mscon.data.augment import to_float

    run_dir = Path(run_dir)
    config = runs.load_run_config(run_dir)
    path = runs.checkpoint_path(run_dir, checkpoint)
    state = runs.load_checkpoint(path)
    encoder = runs.encoder_from_state(config, state, path)
    device = config.train.torch_device()
    data = load_experiment_data(config.data, config.seed, clean=True)
    tasks = task_domains(config, state["trained_columns"])
    features, labels = {}, {}
    for split in ("train", "val", "test"):
        if not (data.split == split).any():
            continue
        part = data.select(split)
        features[split] = extract_features(
            encoder, part.images, to_float, batch_size=config.eval.batch_size, device=device
        )
        labels[split] = {task: part.labels[task] for task in tasks}
    continuous = {task for task in tasks if data.is_continuous(task)}
    try:
        scores = evaluate_features(features, labels, tasks, continuous, knn_k=config.eval.knn_k)
    except ValueError as error:  # a task without labelled train or test rows, no test split
        raise DataError(f"{data.source}: {error}") from None
    results = {
        "tasks": scores,
        "method": config.method.name,
        "checkpoint": path.name,
        "step": state["step"],
        "num_images": {split: len(f) for split, f in features.items()},
    }
    runs.write_eval(run_dir, results)
    return results


def format_results(results: dict[str, dict[str, Any]]) -> str:
    """A markdown table of several runs' eval.json: run, task, domain, linear, kNN."""
    lines = ["| run | task | domain | linear top-1 | kNN top-1 |", "|---|---|---|---|---|"]
    for run, result in results.items():
        for task, row in result["tasks"].items():
            if "linear_top1" in row:
                linear, knn = f"{row['linear_top1']:.1f}", f"{row['knn_top1']:.1f}"
            else:
                linear, knn = f"R² {row['linear_r2']:.3f}", "–"
            lines.append(f"| {run} | {task} | {row['domain']} | {linear} | {knn} |")
    return "\n".join(lines)
