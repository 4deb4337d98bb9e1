"""What a method may ask of the loop without editing it: view recipes, an after-step hook
whose state is checkpointed and restored on resume, and a registration that is one class."""

from typing import Literal

import pytest
import torch

from mscon.config import MethodConfig
from mscon.methods import METHODS, register_method
from mscon.methods.simclr import SimCLR
from mscon.train import train


class TeacherLikeConfig(MethodConfig):
    name: Literal["test_teacher"] = "test_teacher"
    temperature: float = 0.2
    momentum: float = 0.5


class TeacherLike(SimCLR):
    """SimCLR plus an EMA copy of its head and a step counter, updated after each step."""

    config_class = TeacherLikeConfig

    def __init__(self, *args, momentum: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.momentum = momentum
        self.register_buffer("ema", self.head.net[0].weight.detach().clone())
        self.register_buffer("calls", torch.zeros(2, dtype=torch.long))  # (steps seen, total)

    @classmethod
    def from_config(cls, config, encoder, feature_dim, num_classes):
        m = config.method
        return cls(
            encoder, feature_dim, list(config.data.similarities),
            temperature=m.temperature, momentum=m.momentum,
        )  # fmt: skip

    def view_recipes(self, augment):
        return ["weak", "none"]

    def after_step(self, step, total_steps):
        assert not torch.is_grad_enabled()
        self.ema.mul_(self.momentum).add_(self.head.net[0].weight, alpha=1 - self.momentum)
        self.calls.copy_(torch.tensor([step, total_steps]))


@pytest.fixture
def registered():
    register_method("test_teacher")(TeacherLike)
    yield
    del METHODS["test_teacher"]


def test_registration_checks_the_config_name():
    class Wrong(SimCLR):
        config_class = TeacherLikeConfig

    with pytest.raises(ValueError, match="Literal\\['other'\\]"):
        register_method("other")(Wrong)


def test_view_recipes_and_after_step_reach_the_loop(registered, tiny_config, view_recipes_seen):
    seen = view_recipes_seen
    run = train(tiny_config("test_teacher", **{"method.momentum": 0.9}))
    assert seen and all(kinds == ["weak", "none"] for kinds in seen)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    total = len(seen)
    assert state["calls"].tolist() == [total, total]
    assert not torch.equal(state["ema"], state["head.net.0.weight"])


def test_hook_state_is_checkpointed_and_restored_on_resume(registered, tiny_config, tmp_path):
    full = train(tiny_config("test_teacher", out=tmp_path / "full"))
    config = tiny_config("test_teacher", out=tmp_path / "cut")
    train(config, stop_after=3)
    cut = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert cut["calls"][0] == 3
    train(config, resume=True)
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in ("ema", "calls", "head.net.0.weight"):
        assert torch.equal(a[key], b[key]), key
