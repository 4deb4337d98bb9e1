import json

import pytest
import torch

from mscon.config import ConfigError
from mscon.train import RunError, train, warmup_cosine


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_and_metrics(tiny_config):
    run_dir = train(tiny_config("mscon"))
    assert (run_dir / "config.yaml").is_file()
    classes = json.loads((run_dir / "classes.json").read_text())
    assert {"shape", "color", "size", "pattern"} <= set(classes)
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    records = read_metrics(run_dir)
    steps_per_epoch = 67 // 16
    assert [r["step"] for r in records] == list(range(1, 2 * steps_per_epoch + 1))
    last = records[-1]
    for key in ("step", "epoch", "loss", "lr", "images_per_s"):
        assert key in last
    assert last["epoch"] == 2.0
    assert set(last["loss_per_similarity"]) == {"shape", "color", "size"}
    assert set(last["weights"]) == {"shape", "color", "size"}
    state = torch.load(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 2 * steps_per_epoch
    assert state["trained_columns"] == ["shape", "color", "size"]


def test_resumed_run_ends_where_uninterrupted_one_does(tiny_config, tmp_path):
    full = train(tiny_config("mscon", out=tmp_path / "full"))
    config = tiny_config("mscon", out=tmp_path / "cut")
    train(config, stop_after=3)
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 3
    resumed = train(config, resume=True)
    a = torch.load(full / "checkpoints" / "last.pt")
    b = torch.load(resumed / "checkpoints" / "last.pt")
    assert a["step"] == b["step"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    strip = [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(full)]
    again = [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(resumed)]
    assert strip == again


def test_existing_run_is_protected(tiny_config):
    config = tiny_config("simclr", **{"train.epochs": 1})
    train(config)
    with pytest.raises(RunError, match="--resume"):
        train(config)
    train(config, overwrite=True)
    changed = tiny_config("simclr", **{"train.epochs": 1, "train.lr": 0.01})
    with pytest.raises(ConfigError, match="train.lr"):
        train(changed, resume=True)


def test_resume_without_checkpoint(tiny_config):
    with pytest.raises(RunError, match="no checkpoint"):
        train(tiny_config("supcon"), resume=True)


def test_batch_larger_than_train_split(tiny_config):
    with pytest.raises(ConfigError, match="train.batch_size"):
        train(tiny_config("supcon", **{"train.batch_size": 512}))


def test_unknown_similarity_column(tiny_config):
    with pytest.raises(ValueError, match="nonexistent"):
        train(tiny_config("mscon", **{"data.similarities": "[shape,nonexistent]"}))


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(0, 0, 10) == pytest.approx(1.0)


def test_log_vars_have_no_weight_decay(tiny_config):
    from mscon.train import build_model, build_optimizer

    config = tiny_config("mscon", **{"method.log_var_lr": 0.001})
    method = build_model(config, [8, 8, 3])
    optimizer = build_optimizer(config, method)
    groups = optimizer.param_groups
    assert len(groups) == 2
    assert groups[1]["weight_decay"] == 0.0
    assert groups[1]["lr"] == 0.001
    assert groups[1]["params"][0] is method.loss_fn.log_vars
    assert all(p is not method.loss_fn.log_vars for p in groups[0]["params"])


def test_weight_warmup_keeps_log_vars_fixed(tiny_config, tmp_path):
    config = tiny_config("mscon", **{"method.weight_warmup_epochs": 1, "train.epochs": 2})
    train(config, stop_after=4)  # one epoch = 4 steps: still frozen
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert torch.equal(state["model"]["loss_fn.weighting.log_vars"], torch.zeros(3))
    train(config, resume=True)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert not torch.equal(state["model"]["loss_fn.weighting.log_vars"], torch.zeros(3))


@pytest.mark.parametrize("weighting", ["normalized", "excess", "temperature", "equal"])
def test_weighting_variants_train(tiny_config, weighting):
    config = tiny_config("mscon", **{"method.weighting": weighting, "train.epochs": 1})
    run_dir = train(config)
    last = read_metrics(run_dir)[-1]
    assert set(last["weights"]) == {"shape", "color", "size"}
    if weighting == "normalized":
        assert sum(last["weights"].values()) == pytest.approx(3.0, rel=1e-5)


def test_max_steps_replaces_epochs_and_ends_the_schedule(tiny_config):
    overrides = {"train.max_steps": 6, "train.epochs": 1, "train.log_every": 4}
    run_dir = train(tiny_config("supcon", **overrides))
    records = read_metrics(run_dir)  # 4 steps per epoch: the data order wraps into epoch 2
    assert [r["step"] for r in records] == [4, 6]  # the last step is logged too
    assert records[-1]["epoch"] == 1.5
    assert torch.load(run_dir / "checkpoints" / "last.pt")["step"] == 6  # saved mid-epoch
    assert records[0]["lr"] == pytest.approx(0.05 * warmup_cosine(4, 2, 6))  # logged after
    assert records[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the scheduler's step
    with pytest.raises(ConfigError, match="train.max_steps"):
        tiny_config("supcon", **{"train.max_steps": 0})
