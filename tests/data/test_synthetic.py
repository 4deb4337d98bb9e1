"""The embedded dataset: structure, determinism, round trip through a manifest folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mscon.data import load_dataset, write_synthetic
from mscon.data.synthetic import ATTRIBUTES, make_synthetic, render


def test_columns_classes_and_ranges():
    data = make_synthetic(200, seed=0, image_size=16)
    assert data.columns() == ["shape", "color", "size", "pattern", "shape_color", "angle"]
    sizes = {c: len(data.classes[c]) for c in data.classes}
    assert sizes == {"shape": 8, "color": 8, "size": 3, "pattern": 12, "shape_color": 64}
    for column, names in data.classes.items():
        assert names == sorted(names), column  # the order a manifest would give
        labels = data.labels[column]
        assert labels.dtype == torch.long and 0 <= labels.min() and labels.max() < len(names)
    angle = data.labels["angle"]
    assert angle.dtype == torch.float32 and 0 <= angle.min() and angle.max() < 35
    assert data.is_continuous("angle") and not data.is_continuous("shape")


def test_combination_column_is_consistent():
    data = make_synthetic(300, seed=1, image_size=8)
    for i in range(len(data)):
        shape = data.classes["shape"][int(data.labels["shape"][i])]
        color = data.classes["color"][int(data.labels["color"][i])]
        assert data.classes["shape_color"][int(data.labels["shape_color"][i])] == f"{shape}_{color}"


def test_same_seed_same_bytes_and_other_seed_differs():
    a, attrs_a = render(40, seed=3, image_size=16)
    b, attrs_b = render(40, seed=3, image_size=16)
    c, _ = render(40, seed=4, image_size=16)
    assert torch.equal(a, b)
    assert all(np.array_equal(attrs_a[k], attrs_b[k]) for k in attrs_a)
    assert not torch.equal(a, c)


def test_prefix_stable_across_sizes():
    small, small_attrs = render(30, seed=5, image_size=16)
    large, large_attrs = render(1030, seed=5, image_size=16)  # crosses a block boundary
    assert torch.equal(small, large[:30])
    assert np.array_equal(small_attrs["shape"], large_attrs["shape"][:30])


def test_images_vary_and_classes_are_all_used():
    data = make_synthetic(1200, seed=0, image_size=16)
    images = data.images.float()
    assert images.std() > 30  # not blank
    for column in ATTRIBUTES:
        assert len(torch.unique(data.labels[column])) == len(data.classes[column])


def test_load_dataset_default_split_and_size():
    data = load_dataset(None, image_size=16, synthetic_size=100, seed=0)
    counts = {s: int((data.split == s).sum()) for s in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 10, "test": 20}
    assert data.images.shape == (100, 3, 16, 16)


def test_write_synthetic_round_trip(tmp_path):
    # 600 images: every one of the 64 shape_color classes occurs, so indices match exactly
    folder = write_synthetic(tmp_path / "synth", size=600, seed=2, image_size=16)
    assert (folder / "labels.csv").is_file() and len(list((folder / "images").glob("*.png"))) == 600
    written = load_dataset(str(folder), image_size=16)
    embedded = load_dataset(None, image_size=16, synthetic_size=600, seed=2)
    assert written.classes == embedded.classes
    assert np.array_equal(written.split, embedded.split)
    assert torch.equal(written.images, embedded.images)  # PNG is lossless
    for column in embedded.columns():
        if embedded.is_continuous(column):
            torch.testing.assert_close(written.labels[column], embedded.labels[column])
        else:
            assert torch.equal(written.labels[column], embedded.labels[column]), column


def test_small_written_dataset_keeps_class_names(tmp_path):
    # a manifest only knows the classes that occur; the names per row still agree
    folder = write_synthetic(tmp_path / "small", size=12, seed=0, image_size=8)
    written = load_dataset(str(folder), image_size=8)
    embedded = load_dataset(None, image_size=8, synthetic_size=12, seed=0)
    for column in embedded.classes:
        names_w = [written.classes[column][i] for i in written.labels[column].tolist()]
        names_e = [embedded.classes[column][i] for i in embedded.labels[column].tolist()]
        assert names_w == names_e, column


def test_bad_arguments():
    with pytest.raises(ValueError, match="combos"):
        make_synthetic(10, combos=(("shape", "nope"),))
    with pytest.raises(ValueError, match="size"):
        render(0)


def test_grouped_structure_adds_groupings_of_the_same_images():
    standard = make_synthetic(300, seed=1, image_size=8)
    grouped = make_synthetic(300, seed=1, image_size=8, structure="grouped")
    assert grouped.columns() == [*standard.columns()[:-1], "form", "tone", "angle"]
    assert torch.equal(grouped.images, standard.images)
    assert grouped.classes["tone"] == ["blue", "green", "warm"]
    assert grouped.classes["form"] == ["pointed", "round", "straight"]
    tone = {"red": "warm", "orange": "warm", "magenta": "warm", "lime": "green"}
    tone |= {"green": "green", "cyan": "green", "azure": "blue", "violet": "blue"}
    form = {"star": "pointed", "triangle": "pointed", "arch": "round", "crescent": "round"}
    form |= {"half_disc": "round", "bar": "straight", "cross": "straight", "square": "straight"}
    for i in range(len(grouped)):
        color = grouped.classes["color"][int(grouped.labels["color"][i])]
        shape = grouped.classes["shape"][int(grouped.labels["shape"][i])]
        assert grouped.classes["tone"][int(grouped.labels["tone"][i])] == tone[color]
        assert grouped.classes["form"][int(grouped.labels["form"][i])] == form[shape]
    with pytest.raises(ValueError, match="structure"):
        make_synthetic(10, structure="nested")


def test_structure_from_the_config_and_written_by_the_cli(tmp_path):
    from mscon.cli import main
    from mscon.config import load_config
    from mscon.data import load_experiment_data
    from mscon.errors import ConfigError

    config = load_config("synthetic_grouped", ["data.synthetic_size=40"])
    data = load_experiment_data(config.data, seed=0)
    assert {"shape_color", "form", "tone", "size", "pattern"} <= set(data.columns())
    with pytest.raises(ConfigError, match="data.synthetic_structure"):
        load_config(None, ["data.synthetic_structure=nested"])
    folder = tmp_path / "grouped"
    args = ["data", "synth", "--out", str(folder), "--size", "12", "--image-size", "8"]
    assert main([*args, "--structure", "grouped"]) == 0
    header = (folder / "labels.csv").read_text().splitlines()[0]
    assert header == "path,split,shape,color,size,pattern,shape_color,form,tone,angle"
    loaded = load_dataset(folder, image_size=8)
    embedded = make_synthetic(12, seed=0, image_size=8, structure="grouped")
    assert torch.equal(loaded.labels["tone"], embedded.labels["tone"])
