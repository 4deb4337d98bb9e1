"""f-MICL as a method (self-supervised) and as MSCon's per-similarity loss, through the config."""

import pytest
import torch

from mscon.config import ConfigError, load_config
from mscon.losses import FMICLLoss, MSConFMICLLoss
from mscon.methods import MSCon, build_method
from mscon.models.backbones import build_backbone
from mscon.train import train

DIVERGENCES = ["kl", "js", "pearson", "sq_hellinger", "tsallis", "vlc"]


def test_fmicl_keys_follow_the_divergence_and_base_loss():
    m = load_config("demo", ["method.name=fmicl", "method.divergence=tsallis"]).method
    assert (m.divergence, m.tsallis_alpha, m.alpha) == ("tsallis", 1.5, 40.0)
    with pytest.raises(ConfigError, match="tsallis_alpha is not read"):
        load_config("demo", ["method.name=fmicl", "method.tsallis_alpha=2"])
    with pytest.raises(ConfigError, match=r"method.divergence: unknown name 'kll'.*'kl'"):
        load_config("demo", ["method.name=fmicl", "method.divergence=kll"])
    with pytest.raises(ConfigError, match="sigma"):
        load_config(
            "demo", ["method.name=fmicl", "method.divergence=sq_hellinger", "method.sigma=0.05"]
        )
    with pytest.raises(ConfigError, match="divergence is not read"):
        load_config("demo", ["method.divergence=js"])  # mscon with base_loss supcon
    with pytest.raises(ConfigError, match="augment.views: f-MICL needs at least 2 views"):
        load_config("demo", ["method.name=fmicl", "augment.views=1"])


def test_mscon_base_loss_fmicl_switches_keys_and_weightings(capsys):
    m = load_config("demo", ["method.base_loss=fmicl", "method.divergence=js"]).method
    assert (m.base_loss, m.divergence, m.weighting) == ("fmicl", "js", "equal")
    assert "method.temperature not read" in capsys.readouterr().err  # inherited from demo.yaml
    with pytest.raises(
        ConfigError, match="weighting 'uncertainty' does not apply to base_loss fmicl"
    ):
        load_config("demo", ["method.base_loss=fmicl", "method.weighting=uncertainty"])
    with pytest.raises(ConfigError, match="temperature is not read"):
        load_config(None, ["method.base_loss=fmicl", "method.temperature=0.2"])
    rel = load_config("demo", ["method.base_loss=fmicl", "method.weighting=relative"])
    assert "temperature" not in rel.to_dict()["method"]
    assert load_config("demo").method.weighting == "consistency"  # supcon's default unchanged


def test_methods_build_the_right_losses(tiny_config):
    encoder, dim = build_backbone("cnn_small")
    config = tiny_config("mscon", **{"method.base_loss": "fmicl", "method.alpha": 10})
    method = build_method(config, encoder, dim, [8, 8, 3])
    assert isinstance(method, MSCon) and isinstance(method.loss_fn, MSConFMICLLoss)
    assert method.loss_fn.base.alpha == 10.0
    fmicl = build_method(tiny_config("fmicl"), encoder, dim, [8, 8, 3])
    assert isinstance(fmicl.loss_fn, FMICLLoss) and fmicl.trained_columns == []


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_every_divergence_trains_without_nan(divergence, tiny_config, tmp_path):
    for name, extra in (("fmicl", {}), ("mscon", {"method.base_loss": "fmicl"})):
        config = tiny_config(
            name,
            out=tmp_path / name,
            **{"method.divergence": divergence, "train.epochs": 1, **extra},
        )
        run = train(config)
        state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert all(
            torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
        )


def test_mscon_fmicl_logs_losses_and_weights(tiny_config):
    import json

    run = train(
        tiny_config("mscon", **{"method.base_loss": "fmicl", "method.weighting": "relative"})
    )
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(last["weights"]) == {"shape", "color", "size"}
    assert abs(sum(last["weights"].values()) - 3.0) < 1e-4  # relative: C softmax(-s)
