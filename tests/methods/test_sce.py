"""SCE and MoCo as methods: config, views per role, the after-step teacher and queue, resume."""

import json

import pytest
import torch

from mscon.config import ConfigError, load_config
from mscon.methods import SCE, MoCo, build_method
from mscon.models.backbones import build_backbone
from mscon.train import train


def test_config_checks_queue_views_and_keys():
    m = load_config(None, ["method.name=moco"]).method
    assert (m.temperature, m.queue_size, m.momentum) == (0.2, 4096, 0.99)
    assert load_config("demo", ["method.name=sce"]).method.coeff == 0.5
    with pytest.raises(
        ConfigError, match=r"queue_size: 1000 must be 0 or a multiple of train.batch_size \(128\)"
    ):
        load_config("demo", ["method.name=sce", "method.queue_size=1000"])
    with pytest.raises(ConfigError, match="sce uses 2 views"):
        load_config("demo", ["method.name=sce", "augment.views=3"])
    with pytest.raises(ConfigError, match="method.coeff: not read by method 'moco'"):
        load_config("demo", ["method.name=moco", "method.coeff=0.5"])
    with pytest.raises(ConfigError, match="bn_splits"):
        load_config("demo", ["method.name=sce", "method.bn_splits=100"])
    assert load_config("demo", ["method.name=sce", "method.queue_size=0"]).method.queue_size == 0


def make(name, tiny_config, **extra):
    encoder, dim = build_backbone("cnn_small")
    return build_method(tiny_config(name, **extra), encoder, dim, [8, 8, 3])


def test_teacher_is_frozen_and_gets_no_gradient(tiny_config):
    method = make("sce", tiny_config, **{"method.queue_size": 32})
    assert isinstance(method, SCE) and not isinstance(method, MoCo)
    assert not any(p.requires_grad for p in method.teacher.parameters())
    views = torch.randn(16, 2, 3, 16, 16)
    loss = method(views, torch.zeros(16, 3, dtype=torch.long), torch.arange(16))["loss"]
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert method.encoder.features[0][0].weight.grad is not None


def test_after_step_moves_the_teacher_and_fills_the_queue(tiny_config):
    method = make("moco", tiny_config, **{"method.queue_size": 32, "method.momentum": 0.75})
    views, index = torch.randn(16, 2, 3, 16, 16), torch.arange(100, 116)
    method(views, torch.zeros(16, 3, dtype=torch.long), index)
    keys = method._pending[0].clone()
    teacher = {k: v.clone() for k, v in method.teacher.module.state_dict().items()}
    student = {k: v.clone() for k, v in method._student_trunk().state_dict().items()}
    with torch.no_grad():
        method.head.net[0].weight.add_(1.0)  # as if the optimiser had moved the student
    with torch.no_grad():
        method.after_step(1, 10)
    name = "1.net.0.weight"
    expected = 0.75 * teacher[name] + 0.25 * (student[name] + 1.0)
    torch.testing.assert_close(method.teacher.module.state_dict()[name], expected)
    assert method.queue.index.tolist() == list(range(100, 116))
    torch.testing.assert_close(method.queue.keys, keys)
    assert int(method.steps) == 1 and method._pending is None


def test_cosine_schedule_reaches_one(tiny_config):
    method = make(
        "sce", tiny_config, **{"method.momentum_schedule": "cosine", "method.queue_size": 0}
    )
    with torch.no_grad():
        method.after_step(10, 10)
    assert method.log_values()["momentum"] == pytest.approx(1.0)


def test_views_per_role(tiny_config, view_recipes_seen):
    seen = view_recipes_seen
    train(tiny_config("sce", **{"method.queue_size": 32, "train.epochs": 1}))
    assert seen[0] == ["weak", "strong"]
    seen.clear()
    config = tiny_config("moco", **{"method.queue_size": 0, "train.epochs": 1,
                                    "augment.views": "[none, simclr]"}, out=None)  # fmt: skip
    train(config, overwrite=True)
    assert seen[0] == ["none", "simclr"]


@pytest.mark.parametrize(("name", "extra"), [("sce", {"method.symmetric": True}), ("moco", {})])
def test_resumed_run_ends_with_the_same_student_teacher_and_queue(
    name, extra, tiny_config, tmp_path
):
    options = {"method.queue_size": 32, **extra}
    full = train(tiny_config(name, out=tmp_path / "full", **options))
    config = tiny_config(name, out=tmp_path / "cut", **options)
    train(config, stop_after=3)
    train(config, resume=True)
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert any(k.startswith("teacher.") for k in a) and "queue.queue_keys" in a
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["queue_filled"] == 32


def test_eval_reads_the_students_encoder(tiny_config):
    from mscon.evaluate import evaluate_run

    run = train(tiny_config("sce", **{"method.queue_size": 32, "train.epochs": 1}))
    result = evaluate_run(run)
    assert {r["domain"] for r in result["tasks"].values()} == {"out"}


def test_predictor_sits_on_the_student_only(tiny_config):
    method = make("sce", tiny_config, **{"method.predictor": True, "method.queue_size": 0})
    assert method.predictor is not None
    assert not any(k.startswith("teacher.module.2") for k in method.state_dict())
    views = torch.randn(8, 2, 3, 16, 16)
    loss = method(views, torch.zeros(8, 3, dtype=torch.long), torch.arange(8))["loss"]
    loss.backward()
    assert method.predictor.net[0].weight.grad is not None
