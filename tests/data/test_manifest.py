"""Manifest folders: typing of columns, the image cache, and every validation error."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mscon.data import DataError, load_dataset
from mscon.data import manifest as manifest_module
from mscon.data.manifest import CACHE_DIR, decode_image, type_column

COLOURS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (250, 0, 250)]


def make_folder(root: Path, header: str = "path,split,kind,level,weight", rows=None) -> Path:
    """A manifest written "by another program": a few tiny images and a plain CSV."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (12, 8), colour)
        if i % 2:
            image.save(root / "img" / f"{i}.jpg", quality=95)
        else:
            image.save(root / "img" / f"{i}.png")
    if rows is None:
        rows = [
            "img/0.png,train,cat,2,0.5",
            "img/1.jpg,train,dog,10,1.25",
            "img/2.png,val,,1,",
            "img/3.jpg,test,dog,2,3",
            "img/4.png,test,cat,,2.5",
            "img/5.jpg,train,bird,10,1",
        ]
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_foreign_manifest_loads(tmp_path):
    data = load_dataset(str(make_folder(tmp_path / "m")), image_size=8)
    assert data.images.shape == (6, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.columns() == ["kind", "level", "weight"]
    assert data.classes["kind"] == ["bird", "cat", "dog"]
    assert data.labels["kind"].tolist() == [1, 2, -1, 2, 1, 0]
    assert data.classes["level"] == ["1", "2", "10"]  # integers sort numerically
    assert data.labels["level"].tolist() == [1, 2, 0, 1, -1, 2]
    assert data.is_continuous("weight") and data.labels["weight"].dtype == torch.float32
    assert np.isnan(data.labels["weight"][2].item())
    assert data.split.tolist() == ["train", "train", "val", "test", "test", "train"]
    red = data.images[0].float().mean(dim=(1, 2))
    assert red[0] > 200 and red[1] < 30 and red[2] < 30
    train = data.select("train")
    assert train.label_matrix(["kind", "level"]).shape == (3, 2)


def test_without_split_column_uses_seeded_fractions(tmp_path):
    rows = [f"img/{i}.{'jpg' if i % 2 else 'png'},{'ab'[i % 2]}" for i in range(6)]
    folder = make_folder(tmp_path / "m", header="path,kind", rows=rows)
    a = load_dataset(str(folder), image_size=4, split={"train": 0.5, "test": 0.5}, seed=1)
    b = load_dataset(str(folder), image_size=4, split={"train": 0.5, "test": 0.5}, seed=1)
    assert np.array_equal(a.split, b.split) and (a.split == "train").sum() == 3


def test_type_column_rules():
    assert type_column(["1", "2", "", "1"])[1] == ["1", "2"]
    assert type_column(["1.0", "2.0"])[1] == ["1.0", "2.0"]  # whole numbers: categorical
    values, classes = type_column(["1", "2.5", ""])
    assert classes is None and values.dtype == torch.float32
    assert type_column(["", ""])[1] == []
    assert type_column(["b", "a", "10", "9"])[1] == ["10", "9", "a", "b"]


def test_cache_is_reused_and_rebuilt(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "m")
    calls = []
    original = manifest_module._build
    monkeypatch.setattr(manifest_module, "_build", lambda *a: (calls.append(1), original(*a)))

    def load(size=8):
        return load_dataset(str(folder), image_size=size)

    first = load()
    cache_files = sorted((folder / CACHE_DIR).glob("*.u8"))
    assert len(calls) == 1 and len(cache_files) == 1 and "8px" in cache_files[0].name
    load()
    assert len(calls) == 1  # reused
    load(size=4)
    assert len(calls) == 2  # another size, another file
    csv = folder / "labels.csv"
    csv.write_text(csv.read_text().replace(",cat,2,0.5", ",dog,2,0.5"))
    relabelled = load()
    assert len(calls) == 2  # label edits do not re-decode
    assert relabelled.labels["kind"][0] == 2
    csv.write_text(csv.read_text().replace("img/5.jpg,train,bird", "img/4.png,train,bird"))
    changed_paths = load()
    assert len(calls) == 3
    assert torch.equal(changed_paths.images[5], first.images[4])
    image = folder / "img" / "0.png"
    Image.new("RGB", (12, 8), (10, 20, 30)).save(image)
    stamp = time.time() + 5
    os.utime(image, (stamp, stamp))
    rebuilt = load()
    assert len(calls) == 4
    assert rebuilt.images[0, :, 0, 0].tolist() == [10, 20, 30]
    assert len(list((folder / CACHE_DIR).glob("images_8px_*.u8"))) == 1  # stale file removed


def test_unwritable_folder_uses_user_cache(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "m")
    monkeypatch.setenv("MSCON_CACHE_DIR", str(tmp_path / "user-cache"))
    monkeypatch.setattr(manifest_module, "_writable", lambda directory: False)
    data = load_dataset(str(folder), image_size=8)
    assert len(data) == 6
    assert len(list((tmp_path / "user-cache").glob("*/images_8px_*.u8"))) == 1
    assert not (folder / CACHE_DIR).exists()


def test_missing_and_undecodable_images(tmp_path):
    folder = make_folder(tmp_path / "m")
    for i in (1, 3, 5):
        (folder / "img" / f"{i}.jpg").unlink()
    with pytest.raises(DataError) as error:
        load_dataset(str(folder), image_size=8)
    message = str(error.value)
    assert "labels.csv: 3 image(s) missing or undecodable, first: img/1.jpg (missing)" in message
    assert "\n" not in message
    folder = make_folder(tmp_path / "n")
    (folder / "img" / "2.png").write_bytes(b"not an image")
    with pytest.raises(
        DataError, match=r"1 image\(s\) missing or undecodable, first: img/2.png \(undecodable"
    ):
        load_dataset(str(folder), image_size=8)
    assert not list((folder / CACHE_DIR).glob("*.u8"))  # nothing half-built is kept


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("file,kind", ["img/0.png,a"], "labels.csv: no 'path' column"),
        (
            "path,split,kind",
            ["img/0.png,train,a", "img/2.png,holdout,b"],
            "unknown split 'holdout'",
        ),
        ("path,split,kind", ["img/0.png,train,a", "img/2.png,train,b"], "split 'test' is empty"),
        ("path,split,kind", ["img/0.png,test,a"], "split 'train' is empty"),
        ("path,kind", [], "no rows"),
        ("path,kind,kind", ["img/0.png,a,b"], "'kind' appears more than once"),
        ("path,kind", ["img/0.png,a,extra"], "line 2 has 3 fields"),
    ],
)
def test_table_errors(tmp_path, header, rows, message):
    folder = make_folder(tmp_path / "m", header=header, rows=rows)
    with pytest.raises(DataError, match=message):
        load_dataset(str(folder), image_size=8, split={"train": 0.5, "test": 0.5})


def test_missing_folder_and_dev_alias(tmp_path):
    with pytest.raises(DataError, match="labels.csv: no such file"):
        load_dataset(str(tmp_path / "nothing"))
    rows = ["img/0.png,train,a", "img/2.png,dev,b", "img/4.png,TEST,a"]
    data = load_dataset(str(make_folder(tmp_path / "m", "path,split,kind", rows)), image_size=4)
    assert data.split.tolist() == ["train", "val", "test"]


def test_decode_crops_to_a_centred_square(tmp_path):
    image = Image.new("RGB", (30, 10), (0, 0, 255))
    image.paste((255, 0, 0), (10, 0, 20, 10))  # the centred square is red
    image.save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 5)
    assert out.shape == (3, 5, 5) and out[0].min() > 200 and out[2].max() < 60
