import json
import os
import socket

import pytest
import torch

from mscon import runs
from mscon.config import ConfigError
from mscon.errors import DataError, NonFiniteLossError
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


def test_consistency_weighting_resumes_to_the_uninterrupted_result(tiny_config, tmp_path):
    options = {
        "method.weighting": "consistency",
        "method.consistency_bank": 32,  # full after 2 steps of 16 images
        "method.consistency_neighbours": 8,
        "method.consistency_every": 1,
        "data.corrupt": "{color: 1.0}",
    }
    full = train(tiny_config("mscon", out=tmp_path / "full", **options))
    config = tiny_config("mscon", out=tmp_path / "cut", **options)
    train(config, stop_after=3)
    resumed = train(config, resume=True)
    a, b = (torch.load(d / "checkpoints" / "last.pt")["model"] for d in (full, resumed))
    assert "noise_bank.features" in a
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=0, msg=key)
    records = read_metrics(full)
    assert records[0]["weights"] == {"shape": 1.0, "color": 1.0, "size": 1.0}  # bank not full
    assert records[-1]["weights"] != records[0]["weights"]
    assert sum(records[-1]["weights"].values()) == pytest.approx(3.0, rel=1e-5)
    assert set(records[-1]["label_noise"]) == {"shape", "color", "size"}
    assert [r["weights"] for r in read_metrics(resumed)] == [r["weights"] for r in records]


def test_existing_run_is_protected(tiny_config):
    config = tiny_config("simclr", **{"train.epochs": 1})
    train(config)
    with pytest.raises(RunError, match="--resume"):
        train(config)
    train(config, overwrite=True)
    changed = tiny_config("simclr", **{"train.epochs": 1, "method.temperature": 0.3})
    with pytest.raises(ConfigError, match="--resume cannot change method.temperature .*train.lr"):
        train(changed, resume=True)


def test_resume_follows_a_new_learning_rate_and_records_it(tiny_config, tmp_path):
    config = tiny_config("mscon", **{"train.warmup_epochs": 0})
    run = train(config, stop_after=3)
    lower = tiny_config("mscon", **{"train.warmup_epochs": 0, "train.lr": 0.005})
    train(lower, resume=True)
    records = read_metrics(run)
    total = records[-1]["step"]
    for record in records:  # warmup_cosine(s) * lr after step s; the new lr from step 4
        lr = 0.05 if record["step"] <= 3 else 0.005
        assert record["lr"] == pytest.approx(lr * warmup_cosine(record["step"], 0, total))
    (resumed,) = runs.read_resumes(run)
    assert resumed["step"] == 3 and resumed["changes"] == {"train.lr": [0.05, 0.005]}
    assert runs.load_run_config(run).train.lr == 0.005
    state = torch.load(run / "checkpoints" / "last.pt")
    assert state["scheduler"]["base_lrs"][0] == 0.005


def test_a_checkpoint_of_another_config_is_refused_naming_the_file(tiny_config, tmp_path):
    other = train(tiny_config("simclr", out=tmp_path / "other", **{"train.epochs": 1}))
    config = tiny_config("mscon", **{"train.epochs": 1})
    run = train(config, stop_after=1)
    last = run / "checkpoints" / "last.pt"
    last.unlink()
    last.write_bytes((other / "checkpoints" / "last.pt").read_bytes())
    with pytest.raises(ConfigError, match=f"{last}: --resume cannot change method.name"):
        train(config, resume=True)
    state = torch.load(other / "checkpoints" / "last.pt")
    state["config"] = runs.config_file(run).read_text()
    torch.save(state, last)
    with pytest.raises(RunError, match=f"{last}: its model state does not fit"):
        train(config, resume=True)
    del state["config"]
    torch.save(state, last)
    with pytest.raises(RunError, match=f"{last}: the checkpoint holds no config"):
        train(config, resume=True)
    state["format"] = runs.CHECKPOINT_FORMAT + 1
    torch.save(state, last)
    with pytest.raises(RunError, match="newer than this mscon reads"):
        train(config, resume=True)


def test_a_live_run_holds_its_folder(tiny_config, tmp_path, monkeypatch):
    config = tiny_config("simclr", **{"train.epochs": 1})
    run = train(config, stop_after=1)
    monkeypatch.setattr(runs, "_process_alive", lambda pid: True)
    (run / "run.lock").write_text(f"{os.getpid() + 1} {socket.gethostname()}\n")
    with pytest.raises(RunError, match="in use by another mscon run"):
        train(config, resume=True)
    monkeypatch.setattr(runs, "_process_alive", lambda pid: False)
    train(config, resume=True)  # the holder is dead: the stale lock is taken over
    assert not (run / "run.lock").exists()


def test_non_finite_loss_names_the_step_and_each_similarity_and_keeps_the_checkpoint(
    tiny_config, monkeypatch
):
    from mscon.methods.mscon import MSCon

    config = tiny_config("mscon", **{"train.checkpoint_every": 2})
    real = MSCon.forward

    def blow_up_at_step_4(self, views, labels, index=None):
        out = real(self, views, labels, index)
        if blow_up_at_step_4.calls == 3:
            self.loss_fn.last_losses[1] = float("inf")
            out["loss"] = out["loss"] * float("inf")
        blow_up_at_step_4.calls += 1
        return out

    blow_up_at_step_4.calls = 0
    monkeypatch.setattr(MSCon, "forward", blow_up_at_step_4)
    with pytest.raises(NonFiniteLossError) as error:
        train(config)
    message = str(error.value)
    assert "\n" not in message
    assert "non-finite loss at step 4: loss inf (shape " in message
    assert "color inf, size " in message and "checkpoint of step 2 kept" in message
    assert "--resume --set train.lr=" in message
    monkeypatch.setattr(MSCon, "forward", real)
    train(tiny_config("mscon", **{"train.checkpoint_every": 2, "train.lr": 0.01}), resume=True)
    assert [r["step"] for r in read_metrics(config.run_dir)] == list(range(1, 9))


def test_a_similarity_with_one_class_is_refused_before_the_run_folder(tiny_config, tmp_path):
    data = tmp_path / "data"
    write_manifest_with_one_class(data)
    overrides = {
        "data.path": str(data),
        "data.similarities": "[kind,tone]",
        "data.eval_tasks": "[]",
        "train.batch_size": 4,
    }
    config = tiny_config("mscon", **overrides)
    with pytest.raises(
        DataError, match="data.similarities: column 'tone' has 1 class \\('dark'\\)"
    ):
        train(config)
    assert not config.run_dir.exists()


def write_manifest_with_one_class(folder):
    from PIL import Image

    (folder / "img").mkdir(parents=True)
    rows = ["path,split,kind,tone"]
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / "img" / f"{i}.png")
        tone = "dark" if i % 3 else ""
        rows.append(f"img/{i}.png,{'train' if i < 8 else 'test'},{'ab'[i % 2]},{tone}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


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

    config = tiny_config(
        "mscon",
        **{
            "method.weighting": "relative",
            "method.log_var_lr": 0.001,
            "train.head_weight_decay": "null",  # else the heads get their own group
        },
    )
    method = build_model(config, [8, 8, 3])
    optimizer = build_optimizer(config, method)
    groups = optimizer.param_groups
    assert len(groups) == 2
    assert groups[1]["weight_decay"] == 0.0
    assert groups[1]["lr"] == 0.001
    assert groups[1]["params"][0] is method.loss_fn.log_vars
    assert all(p is not method.loss_fn.log_vars for p in groups[0]["params"])


def test_head_weight_decay_gives_the_heads_their_own_group(tiny_config):
    from mscon.train import build_model, build_optimizer, lr_scheduler

    config = tiny_config(
        "mscon",
        **{
            "method.weighting": "relative",
            "train.head_weight_decay": 0.01,
            "train.weight_decay": 0.001,
        },
    )
    method = build_model(config, [8, 8, 3])
    groups = build_optimizer(config, method).param_groups
    assert [g.get("name") for g in groups] == [None, "heads", "task_weights"]
    assert [g["weight_decay"] for g in groups] == [0.001, 0.01, 0.0]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in method.encoder.parameters()}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in method.heads.parameters()}
    optimizer = build_optimizer(config, method)
    scheduler = lr_scheduler(optimizer, lambda s: 0.5, lambda s: 0.0)  # by name, not position
    assert [g["lr"] for g in optimizer.param_groups] == [
        pytest.approx(config.train.lr * 0.5),
        pytest.approx(config.train.lr * 0.5),
        0.0,
    ]
    assert scheduler.last_epoch == 0


@pytest.mark.parametrize("method_name", ["supcon", "multitask_ce", "sce"])
def test_head_weight_decay_covers_every_method_outside_the_encoder(tiny_config, method_name):
    from mscon.train import build_model, build_optimizer

    config = tiny_config(method_name, **{"train.head_weight_decay": 0.05})
    method = build_model(config, [8, 8, 3])
    groups = build_optimizer(config, method).param_groups
    encoder = {id(p) for p in method.encoder.parameters()}
    assert {id(p) for p in groups[0]["params"]} == encoder
    heads = groups[1]
    assert heads["name"] == "heads" and heads["weight_decay"] == 0.05 and heads["params"]
    assert not encoder & {id(p) for p in heads["params"]}
    assert all(p.requires_grad for g in groups for p in g["params"])  # no teacher


def test_head_options_train_and_resume(tiny_config, tmp_path):
    from mscon.models.heads import NormalizedLinear
    from mscon.train import build_model

    overrides = {
        "model.head_weight_norm": True,
        "model.head_batch_norm": True,
        "train.head_weight_decay": 0.05,
        "train.epochs": 2,
    }
    config = tiny_config("mscon", **overrides)
    train(config, stop_after=4)
    run_dir = train(config, resume=True)
    state = torch.load(run_dir / "checkpoints" / "last.pt")
    keys = [k for k in state["model"] if k.startswith("heads.heads.0.net.")]
    assert "heads.heads.0.net.3.weight" in keys and "heads.heads.0.net.3.bias" not in keys
    uninterrupted = train(tiny_config("mscon", out=tmp_path / "whole", **overrides))
    whole = torch.load(uninterrupted / "checkpoints" / "last.pt")
    for key, value in whole["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=0, atol=0)
    method = build_model(config, [8, 8, 3])
    assert all(isinstance(head.net[-1], NormalizedLinear) for head in method.heads.heads)
    with pytest.raises(ConfigError, match="train.head_weight_decay"):
        train(tiny_config("mscon", **{**overrides, "train.head_weight_decay": 0.1}), resume=True)


def test_weight_warmup_keeps_log_vars_fixed(tiny_config, tmp_path):
    config = tiny_config(
        "mscon",
        **{"method.weighting": "relative", "method.weight_warmup_epochs": 1, "train.epochs": 2},
    )
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
    assert runs.load_checkpoint(runs.checkpoint_path(run_dir))["step"] == 6  # saved mid-epoch
    assert records[0]["lr"] == pytest.approx(0.05 * warmup_cosine(4, 2, 6))  # logged after
    assert records[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the scheduler's step
    with pytest.raises(ConfigError, match="train.max_steps"):
        tiny_config("supcon", **{"train.max_steps": 0})


def test_resume_may_extend_max_steps(tiny_config):
    run_dir = train(tiny_config("supcon", **{"train.max_steps": 3, "train.log_every": 1}))
    train(tiny_config("supcon", **{"train.max_steps": 5, "train.log_every": 1}), resume=True)
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5]
    assert runs.load_checkpoint(runs.checkpoint_path(run_dir))["step"] == 5
    record = json.loads((run_dir / "resume.jsonl").read_text().splitlines()[-1])
    assert record["changes"] == {"train.max_steps": [3, 5]}
