"""LabelledImages, split fractions, load_dataset validation and label corruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mscon.data import DataError, LabelledImages, corrupt_labels, load_dataset, seeded_split


def _data(n: int = 8) -> LabelledImages:
    return LabelledImages(
        images=torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).clone(),
        labels={
            "a": torch.arange(n) % 3,
            "b": torch.tensor([0, -1] * (n // 2)),
            "x": torch.linspace(0, 1, n),
        },
        classes={"a": ["p", "q", "r"], "b": ["only"]},
        split=np.array(["train", "val", "test", "train"] * (n // 4)),
    )


def test_select_columns_and_label_matrix():
    data = _data()
    train = data.select("train")
    assert len(train) == 4 and set(train.split.tolist()) == {"train"}
    assert train.images[:, 0, 0, 0].tolist() == [0, 3, 4, 7]
    assert data.columns() == ["a", "b", "x"]
    assert data.label_matrix(["b", "a"]).tolist()[:2] == [[0, 0], [-1, 1]]
    assert data.label_matrix(["a"]).dtype == torch.long


def test_column_errors_name_the_column_and_list_the_available_ones():
    data = _data()
    with pytest.raises(DataError, match=r"data.similarities: no column 'zz'; available: a, b, x"):
        data.check_columns(["a", "zz"], "data.similarities")
    with pytest.raises(DataError, match="no column 'zz'"):
        data.label_matrix(["zz"])
    with pytest.raises(DataError, match="'x' is continuous"):
        data.label_matrix(["a", "x"])
    with pytest.raises(DataError, match="unknown split"):
        data.select("dev")


def test_seeded_split_is_deterministic_and_exact():
    a = seeded_split(1000, {"train": 0.6, "val": 0.15, "test": 0.25}, seed=1)
    b = seeded_split(1000, {"train": 0.6, "val": 0.15, "test": 0.25}, seed=1)
    c = seeded_split(1000, {"train": 0.6, "val": 0.15, "test": 0.25}, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert [(a == s).sum() for s in ("train", "val", "test")] == [600, 150, 250]
    no_val = seeded_split(10, {"train": 0.8, "test": 0.2}, seed=0)
    assert "val" not in no_val


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"train": 0.5, "test": 0.2}, "sum to 1"),
        ({"train": 0.9, "tset": 0.1}, "unknown split 'tset'"),
        ({"train": 1.2, "test": -0.2}, ">= 0"),
        ({"train": 1.0}, "split 'test' is empty"),
    ],
)
def test_bad_split_fractions(split, message):
    with pytest.raises(DataError, match=message):
        load_dataset(None, image_size=8, synthetic_size=20, split=split)


def test_corrupt_rate_only_train_rows_and_deterministic():
    base = load_dataset(None, image_size=8, synthetic_size=2000, seed=0)
    bad = load_dataset(None, image_size=8, synthetic_size=2000, seed=0, corrupt={"color": 0.3})
    again = load_dataset(None, image_size=8, synthetic_size=2000, seed=0, corrupt={"color": 0.3})
    changed = (base.labels["color"] != bad.labels["color"]).numpy()
    train = base.split == "train"
    assert not changed[~train].any()
    assert changed[train].sum() == round(0.3 * train.sum())  # every chosen label really moves
    assert torch.equal(bad.labels["color"], again.labels["color"])
    assert torch.equal(base.labels["shape"], bad.labels["shape"])
    moved_to = bad.labels["color"][torch.from_numpy(changed)]
    assert len(torch.unique(moved_to)) == 8  # spread over the other classes


def test_corrupt_modes_at_rate_one_on_three_classes():
    # "other": every label wrong, so the true class is the one never given (complementary
    # labels); "uniform": drawn from all three, a third stays right, and the label no
    # longer depends on the true class
    base = load_dataset(
        None, image_size=8, synthetic_size=3000, seed=0, synthetic_structure="grouped"
    )
    train = torch.from_numpy(base.split == "train")
    true = base.labels["tone"][train]
    for mode, kept in (("other", (0.0, 0.0)), ("uniform", (0.30, 0.37))):
        out = corrupt_labels(base, {"tone": 1.0}, seed=0, mode=mode)
        given = out.labels["tone"][train]
        assert kept[0] <= float((given == true).float().mean()) <= kept[1], mode
        assert torch.equal(out.labels["tone"][~train], base.labels["tone"][~train])
        for k in range(3):  # the labels given to each true class
            shares = torch.bincount(given[true == k], minlength=3).float() / (true == k).sum()
            if mode == "uniform":
                assert shares.min() > 0.27 and shares.max() < 0.40
            else:
                assert shares[k] == 0
    again = corrupt_labels(base, {"tone": 0.5}, seed=0, mode="uniform")
    assert torch.equal(
        again.labels["tone"], corrupt_labels(base, {"tone": 0.5}, 0, "uniform").labels["tone"]
    )
    with pytest.raises(DataError, match="data.corrupt_mode: expected one of other, uniform"):
        corrupt_labels(base, {"tone": 0.5}, seed=0, mode="flip")


def test_corrupt_mode_is_refused_without_corrupt():
    from mscon.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.corrupt_mode is only read with data.corrupt"):
        load_config("demo", ["data.corrupt_mode=uniform"])
    config = load_config("demo", ["data.corrupt={color: 0.5}", "data.corrupt_mode=uniform"])
    assert config.data.corrupt_mode == "uniform"


def test_the_config_s_corrupt_mode_reaches_the_training_labels():
    from mscon.config import load_config
    from mscon.data import load_experiment_data

    every = ["data.synthetic_size=300", "data.corrupt={color: 1.0}", "data.image_size=8"]
    other = load_experiment_data(load_config("demo", every).data, seed=0)
    uniform = load_config("demo", [*every, "data.corrupt_mode=uniform"])
    drawn = load_experiment_data(uniform.data, seed=0)
    clean = load_experiment_data(uniform.data, seed=0, clean=True)
    train = torch.from_numpy(clean.split == "train")
    true = clean.labels["color"][train]
    assert (other.labels["color"][train] != true).all()
    assert 0 < (drawn.labels["color"][train] == true).sum() < train.sum()


def test_corrupt_leaves_missing_labels_missing():
    data = _data(40)
    out = corrupt_labels(data, {"a": 1.0, "b": 0.0}, seed=0)
    train = data.split == "train"
    assert (
        out.labels["a"][torch.from_numpy(train)] != data.labels["a"][torch.from_numpy(train)]
    ).all()
    assert torch.equal(out.labels["b"], data.labels["b"])


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        ({"nope": 0.1}, "data.corrupt: no column 'nope'"),
        ({"angle": 0.1}, "'angle' is continuous"),
        ({"color": 1.5}, r"must be in \[0, 1\]"),
    ],
)
def test_bad_corrupt(corrupt, message):
    with pytest.raises(DataError, match=message):
        load_dataset(None, image_size=8, synthetic_size=20, corrupt=corrupt)


def test_inconsistent_construction_is_rejected():
    with pytest.raises(DataError, match="shape"):
        LabelledImages(
            torch.zeros(2, 3, 2, 2, dtype=torch.uint8),
            {"a": torch.zeros(3)},
            {},
            np.array(["train"] * 2),
        )
