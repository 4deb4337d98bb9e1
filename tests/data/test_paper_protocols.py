"""The shipped paper configs on converted miniature releases (issue 16's outside check).

Each miniature release has the real headers, column order and folder quirks
(tests/data/test_converters.py builds them); it is converted with
``mscon data ...`` and trained one epoch with the shipped paper config on a
small CPU model.
"""

from __future__ import annotations

import warnings

import pytest

from mscon.cli import main
from mscon.config import available_configs, load_config
from mscon.data import load_dataset

from .test_converters import make_medic, make_zappos

SMALL = [
    "--set", "model.backbone=cnn_small",
    "--set", "data.image_size=32",
    "--set", "train.batch_size=8",
    "--set", "train.epochs=1",
    "--set", "train.progress=false",
    "--set", "train.tensorboard=false",
]  # fmt: skip
PER_IMAGE = {"path", "image_id", "event_name", "image_path", "CID", "cid"}


def _convert(kind, tmp_path):
    if kind == "zappos50k":
        src = make_zappos(tmp_path / "src", quirks=True, repeat=4)
    else:
        src = make_medic(tmp_path / "src", quirks=True, repeat=4)
    out = tmp_path / "data"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main(["data", kind, str(src), "--out", str(out)]) == 0
    assert any("truncated image" in str(w.message) for w in record)
    return out


@pytest.mark.parametrize("kind", ["zappos50k", "medic"])
def test_paper_config_trains_on_converted_release(tmp_path, kind, capsys):
    data_dir = _convert(kind, tmp_path)
    config = load_config(f"{kind}-mscon")
    with pytest.warns(UserWarning, match="1 truncated image"):  # kept at training time too
        columns = set(load_dataset(str(data_dir), image_size=4).columns())
    tasks = set(config.data.similarities) | set(config.data.eval_tasks)
    assert tasks <= columns, tasks - columns
    assert not tasks & PER_IMAGE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["train", f"{kind}-mscon", "--set", f"data.path={data_dir}",
                     "--set", f"out={tmp_path / 'runs'}", *SMALL])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "runs"
    assert (run / "checkpoints" / "last.pt").is_file(), sorted(p.name for p in run.rglob("*"))


@pytest.mark.filterwarnings("ignore:.*truncated image")
def test_unisex_not_labelled_men(tmp_path):
    data = load_dataset(str(_convert("zappos50k", tmp_path)), image_size=4)
    gender = data.classes["gender"]
    assert "Men+Women" in gender and "Boys+Girls" in gender
    labels = data.labels["gender"].tolist()
    assert labels.count(gender.index("Men+Women")) >= 2


@pytest.mark.filterwarnings("ignore:.*truncated image")
@pytest.mark.parametrize("kind", ["zappos50k", "medic"])
def test_shipped_configs_columns_exist_in_converter_output(tmp_path, kind):
    """Every shipped config for a release names only columns its converter writes."""
    names = [n for n in available_configs() if n.startswith(f"{kind}-")]
    assert f"{kind}-mscon" in names
    columns = set(load_dataset(str(_convert(kind, tmp_path)), image_size=4).columns())
    for name in names:
        config = load_config(name)
        tasks = set(config.data.similarities) | set(config.data.eval_tasks)
        assert tasks <= columns, (name, tasks - columns)
        assert not tasks & PER_IMAGE, name


@pytest.mark.parametrize("kind", ["zappos50k", "medic"])
@pytest.mark.parametrize("method", ["supcon", "multitask_ce", "simclr"])
def test_baseline_configs_are_the_paper_config_with_another_method(kind, method):
    mscon = load_config(f"{kind}-mscon")
    paper, baseline = mscon.to_dict(), load_config(f"{kind}-{method}").to_dict()
    assert baseline["method"]["name"] == method
    for dotted in mscon.method.config_defaults():  # MSCon's own defaults of other keys
        section, key = dotted.split(".")
        del paper[section][key], baseline[section][key]
    for key in paper:
        if key not in ("name", "method"):
            assert baseline[key] == paper[key], key
