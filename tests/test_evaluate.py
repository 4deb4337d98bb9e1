"""Evaluation protocols: linear probe, weighted kNN, ridge, per-task results, features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mscon.evaluate import (
    default_k,
    evaluate_features,
    extract_features,
    knn_top1,
    linear_probe,
    linear_regression,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def blobs(n: int, dim: int = 16, classes: int = 4, spread: float = 6.0, seed: int = 0):
    """Linearly separable Gaussian blobs: class c centred at spread * e_c."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, dim, generator=g) + spread * nn.functional.one_hot(y, dim).float()
    return x, y


# ----------------------------------------------------------------------------- linear probe


def test_probe_separates_blobs_and_is_deterministic() -> None:
    x, y = blobs(400)
    args = (x[:200], y[:200], x[300:], y[300:], x[200:300], y[200:300])
    out = linear_probe(*args)
    assert out["top1"] == 100.0 and out["num_classes"] == 4 and out["num_test"] == 100
    assert out["l2"] in (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    assert linear_probe(*args) == out
    assert linear_probe(*args[:4])["l2"] == 1e-3  # the documented default without val


def test_probe_is_at_chance_on_random_labels() -> None:
    x, _ = blobs(900, dim=32)
    y = torch.randint(0, 4, (900,), generator=torch.Generator().manual_seed(1))
    out = linear_probe(x[:500], y[:500], x[700:], y[700:], x[500:700], y[500:700])
    assert 10.0 < out["top1"] < 40.0  # chance = 25%


def test_probe_drops_missing_rows_and_remaps_sparse_labels() -> None:
    x, y = blobs(200)
    sparse = torch.tensor([3, 10, 42, 7])[y]
    base = linear_probe(x[:100], sparse[:100], x[100:], sparse[100:])
    noise = 50 * torch.randn(30, 16, generator=torch.Generator().manual_seed(2))
    missing = torch.full((30,), -1)
    padded = linear_probe(
        torch.cat([x[:100], noise]),
        torch.cat([sparse[:100], missing]),
        torch.cat([noise, x[100:]]),
        torch.cat([missing, sparse[100:]]),
    )
    assert base["top1"] == padded["top1"] == 100.0
    assert padded["num_test"] == 100 and padded["num_classes"] == 4


def test_unseen_test_class_counts_as_error() -> None:
    train_x = torch.tensor([[0.0, 0.0], [0.2, 0.1], [5.0, 5.0], [5.1, 4.8]])
    train_y = torch.tensor([0, 0, 1, 1])
    # three test rows of seen classes (all easy) and one of class 9, sitting on class 0
    test_x = torch.tensor([[0.1, 0.0], [5.0, 5.1], [4.9, 5.0], [0.0, 0.1]])
    test_y = torch.tensor([0, 1, 1, 9])
    out = linear_probe(train_x, train_y, test_x, test_y)
    assert out["top1"] == 75.0 and out["num_classes"] == 2 and out["num_test"] == 4
    assert knn_top1(train_x, train_y, test_x, test_y, k=1) == 75.0


def test_single_train_class_scores_its_share_of_test() -> None:
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(3))
    out = linear_probe(x[:6], torch.full((6,), 7), x[6:], torch.tensor([7, 7, 2, 7]))
    assert out["top1"] == 75.0 and out["num_classes"] == 1 and math.isfinite(out["l2"])


def test_zero_variance_dimensions_are_harmless() -> None:
    x, y = blobs(200)
    x = torch.cat([x, torch.full((200, 3), 2.5)], dim=1)
    x[150:, -1] = 100.0  # constant on train, different on test
    out = linear_probe(x[:100], y[:100], x[150:], y[150:], x[100:150], y[100:150])
    assert out["top1"] == 100.0


def test_probe_errors() -> None:
    x, y = blobs(20)
    with pytest.raises(ValueError, match="train_y"):
        linear_probe(x, torch.full((20,), -1), x, y)
    with pytest.raises(ValueError, match="train"):
        linear_probe(x, y[:10], x, y)
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(x, y, torch.full_like(x, float("nan")), y)


# ----------------------------------------------------------------------------- kNN


def knn_reference(train_x, train_y, test_x, test_y, k: int, temperature: float) -> float:
    """One test row at a time: sort the train rows by cosine similarity, sum weights per class."""
    correct = 0
    for x, y in zip(test_x, test_y, strict=True):
        sims = [float(torch.cosine_similarity(x, t, dim=0)) for t in train_x]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes: dict[int, float] = {}
        for i in order:
            label = int(train_y[i])
            votes[label] = votes.get(label, 0.0) + math.exp(sims[i] / temperature)
        correct += max(votes, key=votes.get) == int(y)
    return 100.0 * correct / len(test_y)


def test_knn_weighted_vote_hand_example() -> None:
    # the test point (1, 0); class 0 has one neighbour at 0.1 rad, class 1 two at 0.5 and 0.6 rad
    angles = torch.tensor([0.1, 0.5, 0.6, 2.5])
    train_x = torch.stack([angles.cos(), angles.sin()], dim=1)
    train_y = torch.tensor([0, 1, 1, 0])
    test_x, test_y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    # T = 0.07: exp(cos .1 / .07) = 1.5e6 beats exp(cos .5 / .07) + exp(cos .6 / .07) = 4.1e5
    assert knn_top1(train_x, train_y, test_x, test_y, k=3, temperature=0.07) == 100.0
    # T = 1: e^0.995 = 2.70 loses to e^0.878 + e^0.825 = 4.69 (a plain majority vote)
    assert knn_top1(train_x, train_y, test_x, test_y, k=3, temperature=1.0) == 0.0
    for t in (0.07, 1.0):
        assert knn_top1(train_x, train_y, test_x, test_y, k=3, temperature=t) == knn_reference(
            train_x, train_y, test_x, test_y, 3, t
        )


def test_knn_matches_loop_reference_on_random_data() -> None:
    g = torch.Generator().manual_seed(4)
    train_x, test_x = torch.randn(40, 5, generator=g), torch.randn(25, 5, generator=g)
    train_y, test_y = (
        torch.randint(0, 3, (40,), generator=g),
        torch.randint(0, 3, (25,), generator=g),
    )
    for k, t in [(1, 0.07), (5, 0.07), (7, 0.5)]:
        expected = knn_reference(train_x, train_y, test_x, test_y, k, t)
        got = knn_top1(train_x, train_y, test_x, test_y, k=k, temperature=t, chunk_size=4)
        assert got == pytest.approx(expected)


def test_knn_blobs_and_k_clamping() -> None:
    x, y = blobs(300)
    assert knn_top1(x[:200], y[:200], x[200:], y[200:]) == 100.0
    assert (default_k(5), default_k(9_999), default_k(10_000), default_k(50_000)) == (
        5,
        20,
        200,
        200,
    )
    small = (x[:5], y[:5], x[200:], y[200:])
    assert knn_top1(*small, k=1000) == knn_top1(*small, k=5) == knn_top1(*small)


def test_knn_drops_missing_rows_and_checks_arguments() -> None:
    x, y = blobs(120)
    y_missing = y.clone()
    y_missing[::3] = -1
    keep = y_missing >= 0
    expected = knn_top1(x[:80][keep[:80]], y[:80][keep[:80]], x[80:][keep[80:]], y[80:][keep[80:]])
    assert knn_top1(x[:80], y_missing[:80], x[80:], y_missing[80:]) == expected
    with pytest.raises(ValueError, match="temperature"):
        knn_top1(x, y, x, y, temperature=0.0)
    with pytest.raises(ValueError, match="k"):
        knn_top1(x, y, x, y, k=0)


# ----------------------------------------------------------------------------- regression


def test_regression_fits_a_linear_target_and_drops_nan() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 8, generator=g)
    target = x @ torch.randn(8, generator=g) + 3.0
    target[::10] = float("nan")
    out = linear_regression(
        x[:150], target[:150], x[200:], target[200:], x[150:200], target[150:200]
    )
    assert out["r2"] > 0.999 and out["mae"] < 0.05 and out["num_test"] == 90
    assert math.isfinite(out["r2"]) and out["alpha"] <= 1e-3


@pytest.mark.parametrize("n", [40, 8])  # primal (D < n) and dual (D > n) forms
def test_regression_matches_direct_ridge_solve(n: int) -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(n, 12, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    test = torch.randn(5, 12, generator=g, dtype=torch.float64)
    alpha = 0.1
    mean, std = x.mean(0), x.std(0, unbiased=False)
    xs = (x - mean) / std
    w = torch.linalg.solve(
        xs.T @ xs + n * alpha * torch.eye(12, dtype=torch.float64), xs.T @ (y - y.mean())
    )
    pred = (test - mean) / std @ w + y.mean()
    test_y = pred + torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    out = linear_regression(x, y, test, test_y, default_alpha=alpha)
    assert out["mae"] == pytest.approx(0.2, abs=1e-9)


# ----------------------------------------------------------------------------- per task


def test_evaluate_features_schema() -> None:
    x, y = blobs(300)
    height = x[:, 0] * 2.0 + 1.0
    splits = {"train": slice(0, 150), "val": slice(150, 200), "test": slice(200, 300)}
    features = {name: x[s] for name, s in splits.items()}
    brand = (y * 0 + (torch.arange(300) % 2)).clone()
    brand[:10] = -1
    labels = {
        name: {"category": y[s], "brand": brand[s], "height": height[s]}
        for name, s in splits.items()
    }
    tasks = {"category": "in", "brand": "out", "height": "out"}
    out = evaluate_features(features, labels, tasks, continuous={"height"})
    assert list(out) == ["category", "brand", "height"]
    assert set(out["category"]) == {"domain", "linear_top1", "knn_top1", "num_classes"}
    assert out["category"]["domain"] == "in" and out["brand"]["domain"] == "out"
    assert out["category"]["linear_top1"] == 100.0 and out["category"]["num_classes"] == 4
    assert isinstance(out["category"]["num_classes"], int)
    assert all(
        isinstance(out[t][m], float)
        for t in ("category", "brand")
        for m in ("linear_top1", "knn_top1")
    )
    assert set(out["height"]) == {"domain", "linear_r2", "linear_mae"}
    assert out["height"]["linear_r2"] > 0.999
    no_val = evaluate_features(
        {k: features[k] for k in ("train", "test")}, labels, {"category": "out"}
    )
    assert no_val["category"]["linear_top1"] == 100.0


def test_evaluate_features_errors_name_the_task() -> None:
    x, y = blobs(40)
    features = {"train": x[:20], "test": x[20:]}
    labels = {"train": {"a": y[:20]}, "test": {"a": y[20:]}}
    with pytest.raises(ValueError, match="'in' or 'out'"):
        evaluate_features(features, labels, {"a": "both"})
    with pytest.raises(ValueError, match="'b'"):
        evaluate_features(features, labels, {"b": "out"})
    with pytest.raises(ValueError, match="'test'"):
        evaluate_features({"train": x}, labels, {"a": "in"})


# ----------------------------------------------------------------------------- features


class _Recorder(nn.Module):
    """Flatten + linear + BatchNorm (so train and eval mode differ)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_extract_features_batches_in_eval_mode_and_restores_mode(tmp_path) -> None:
    torch.manual_seed(7)
    encoder = _Recorder().train()
    encoder.net[2].running_mean.uniform_()
    images = torch.randint(0, 256, (11, 3, 2, 2), dtype=torch.uint8)

    def preprocess(batch: torch.Tensor) -> torch.Tensor:
        assert batch.dtype == torch.uint8
        return batch.float() / 255

    out = extract_features(encoder, images, preprocess, batch_size=4)
    assert encoder.training
    assert out.shape == (11, 6) and out.dtype == torch.float32
    with torch.no_grad():
        expected = encoder.eval()(images.float() / 255)
    torch.testing.assert_close(out, expected)
    encoder.train()
    memmap = np.lib.format.open_memmap(
        tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(11, 3, 2, 2)
    )
    memmap[:] = images.numpy()
    memmap.flush()
    readonly = np.load(tmp_path / "x.npy", mmap_mode="r")
    torch.testing.assert_close(extract_features(encoder, readonly, preprocess, batch_size=5), out)
    assert encoder.training


def test_argument_errors_name_the_argument() -> None:
    x, y = blobs(40)
    with pytest.raises(ValueError, match="test_x: expected 16 feature columns"):
        linear_probe(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="val_x, val_y"):
        linear_probe(x, y, x, y, val_x=x)
    with pytest.raises(ValueError, match="l2_grid"):
        linear_probe(x, y, x, y, x, y, l2_grid=())
    with pytest.raises(ValueError, match="alpha_grid"):
        linear_regression(x, y.float(), x, y.float(), default_alpha=0.0)
    with pytest.raises(ValueError, match="test_y: no rows with a target"):
        linear_regression(x, y.float(), x, torch.full((40,), float("nan")))
    with pytest.raises(ValueError, match="integer class labels"):
        linear_probe(x, y + 0.5, x, y)


def test_float_labels_with_nan_mean_missing() -> None:
    x, y = blobs(120)
    y_int = y.clone()
    y_int[::4] = -1
    y_float = y.float()
    y_float[::4] = float("nan")
    args_int = (x[:60], y_int[:60], x[60:], y_int[60:])
    args_float = (x[:60], y_float[:60], x[60:], y_float[60:])
    assert linear_probe(*args_float) == linear_probe(*args_int)
    assert knn_top1(*args_float) == knn_top1(*args_int)
