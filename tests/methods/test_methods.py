import pytest
import torch

from mscon.methods import MSCon, MultiTaskCE, SimCLR, SupCon, build_method
from mscon.models.backbones import build_backbone


def batch(batch_size=8, views=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, views, 3, size, size, generator=g)
    labels = torch.stack(
        [torch.randint(0, k, (batch_size,), generator=g) for k in (4, 3, 2)], dim=1
    )
    labels[0, 1] = -1
    return images, labels


def method_batch(method, config, batch_size=8):
    """``batch`` with the views the method asks for (MSCon's default ``consistency``
    weighting adds a plain one) and each row's dataset index."""
    views, labels = batch(batch_size, views=len(method.view_recipes(config.augment)))
    return views, labels, torch.arange(batch_size)


@pytest.mark.parametrize("name", ["simclr", "supcon", "mscon", "multitask_ce"])
def test_training_step_updates_encoder(name, tiny_config):
    config = tiny_config(name)
    encoder, dim = build_backbone("cnn_small")
    method = build_method(config, encoder, dim, [4, 3, 2])
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    views, labels, index = method_batch(method, config)
    before = [p.detach().clone() for p in method.encoder.parameters()]
    out = method(views, labels, index)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    optimizer.step()
    after = list(method.encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_trained_columns():
    encoder, dim = build_backbone("cnn_small")
    cols = ["a", "b", "c"]
    assert SimCLR(encoder, dim, cols).trained_columns == []
    assert SupCon(encoder, dim, cols).trained_columns == ["a"]
    assert MSCon(encoder, dim, cols).trained_columns == cols
    assert MultiTaskCE(encoder, dim, cols, num_classes=[4, 3, 2]).trained_columns == cols


def test_multi_similarity_methods_log_weights():
    encoder, dim = build_backbone("cnn_small")
    views, labels = batch()
    for method in (
        MSCon(encoder, dim, ["a", "b", "c"]),
        MultiTaskCE(encoder, dim, ["a", "b", "c"], num_classes=[4, 3, 2]),
    ):
        method(views, labels)
        values = method.log_values()
        assert set(values["loss_per_similarity"]) == {"a", "b", "c"}
        assert values["weights"] == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})


def test_simclr_with_more_views():
    encoder, dim = build_backbone("cnn_small")
    views, labels = batch(views=3)
    loss = SimCLR(encoder, dim, [])(views, labels)["loss"]
    assert torch.isfinite(loss)


def test_mscon_instance_similarity_head():
    encoder, dim = build_backbone("cnn_small")
    method = MSCon(encoder, dim, ["a", "b", "c"], instance_similarity=True)
    views, labels = batch()
    loss = method(views, labels)["loss"]
    assert torch.isfinite(loss)
    assert list(method.log_values()["weights"]) == ["a", "b", "c", "instance"]
    assert method.loss_fn.log_vars.shape == (4,)


@pytest.mark.parametrize("weighting", ["relative", "normalized", "excess"])
def test_mscon_instance_mix_from_config(weighting, tiny_config):
    config = tiny_config("mscon")
    config.method.weighting = weighting
    config.method.instance_mix = 0.5
    encoder, dim = build_backbone("cnn_small")
    method = build_method(config, encoder, dim, [4, 3, 2])
    assert method.loss_fn.instance_mix == 0.5
    views, labels = batch()
    loss = method(views, labels)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert method.loss_fn.log_vars.grad is not None
    weights = method.log_values()["weights"]
    if weighting != "excess":
        assert sum(weights.values()) == pytest.approx(3.0)


def test_mscon_reads_its_supcon_form(tiny_config):
    encoder, dim = build_backbone("cnn_small")
    method = build_method(tiny_config("mscon", **{"method.form": "in"}), encoder, dim, [4, 3, 2])
    assert method.loss_fn.form == "in"


@pytest.mark.parametrize("base_loss", ["supcon", "fmicl"])
def test_mscon_head_center_momentum_from_config(base_loss, tiny_config):
    from mscon.models.heads import RunningCenter

    config = tiny_config("mscon", **{"method.base_loss": base_loss})
    plain = build_method(config, *build_backbone("cnn_small"), [4, 3, 2])
    assert not any(isinstance(m, RunningCenter) for m in plain.modules())
    config.method.head_center_momentum = 0.9
    method = build_method(config, *build_backbone("cnn_small"), [4, 3, 2])
    centers = [m for m in method.modules() if isinstance(m, RunningCenter)]
    assert len(centers) == 3 and all(c.momentum == 0.9 for c in centers)
    views, labels, index = method_batch(method, config)
    loss = method(views, labels, index)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(c.center.abs().sum() > 0 for c in centers)  # updated by the training step


def test_mscon_prototype_weight_adds_a_prototype_cross_entropy(tiny_config):
    config = tiny_config("mscon", **{"method.weighting": "equal"})
    torch.manual_seed(0)
    plain = build_method(config, *build_backbone("cnn_small"), [4, 3, 2])
    assert plain.prototypes is None
    config.method.prototype_weight = 0.5
    torch.manual_seed(0)
    method = build_method(config, *build_backbone("cnn_small"), [4, 3, 2])
    assert [p.shape for p in method.prototypes.prototypes] == [(4, 128), (3, 128), (2, 128)]
    views, labels = batch()
    labels = labels.clone()
    labels[0, 1] = -1  # a missing label takes part in no cross-entropy
    total = method(views, labels)["loss"]
    z = method.heads(method.encode_views(views).flatten(0, 1))  # (C, B*V, d), image-major
    expected = plain(views, labels)["loss"]
    view_labels = labels.repeat_interleave(views.shape[1], dim=0)
    for c, logits in enumerate(method.prototypes(z)):
        known = view_labels[:, c] >= 0
        ce = torch.nn.functional.cross_entropy(logits[known], view_labels[known, c])
        expected = expected + 0.5 * ce
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(p.grad is not None for p in method.prototypes.parameters())
