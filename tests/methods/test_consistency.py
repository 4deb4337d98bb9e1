"""MSCon's ``consistency`` weighting: the label-noise estimate, its bank, the method.

* :func:`label_noise`: 0 on clean labels of clustered features, rising with the
  share of random labels; a clean similarity the features only partly separate
  (confusions between neighbouring classes) reads as clean whatever its number of
  classes; rows of the same image are never neighbours.
* :class:`LabelNoiseBank`: a ring buffer that estimates only when full, every
  ``every`` updates, and keeps its state in ``state_dict``.
* The method: weights from the estimates, reported in ``log_values``; a resumed
  run ends where an uninterrupted one does (tests/test_train.py); two DDP ranks hold
  the bank and weights of one process (tests/test_distributed.py).
"""

from __future__ import annotations

import pytest
import torch

from mscon.losses.weighting import TaskWeighting
from mscon.methods.consistency import (
    LabelNoiseBank,
    consistency_weights,
    label_noise,
    nearest,
)


def clustered(classes: int, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features in tight clusters, one per class, and the clean labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 16, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    features = centres[labels] + 0.05 * torch.randn(len(labels), 16, generator=g)
    return features, labels


def corrupt(labels: torch.Tensor, classes: int, rate: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(labels), generator=g) < rate
    random = torch.randint(0, classes, (len(labels),), generator=g)
    return torch.where(flip, random, labels)


@pytest.mark.parametrize("classes", [3, 8, 64])
def test_noise_estimate_rises_with_the_share_of_random_labels(classes):
    features, labels = clustered(classes, 2400 // classes)
    index = torch.arange(len(labels))
    estimates = [
        label_noise(features, corrupt(labels, classes, rate), index, classes, neighbours=50)
        for rate in (0.0, 0.25, 0.5, 1.0)
    ]
    assert estimates[0] < 0.01
    assert estimates == sorted(estimates) and len(set(estimates)) == 4, estimates
    assert 0.1 < estimates[1] < 0.4 and estimates[3] > 0.6, estimates


def test_a_clean_similarity_the_features_confuse_reads_clean():
    """64 classes in 8 clusters of 8 (the features know the colour, not the shape)."""
    features, coarse = clustered(8, 400)
    g = torch.Generator().manual_seed(2)
    fine = coarse * 8 + torch.randint(0, 8, coarse.shape, generator=g)
    index = torch.arange(len(fine))
    assert label_noise(features, fine, index, 64) < 0.01
    noisy = label_noise(features, corrupt(fine, 64, 0.25), index, 64)
    assert noisy > 0.1


def test_rows_of_the_same_image_are_not_neighbours():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    index = torch.tensor([0, 0, 1, 2, 3])
    near = nearest(features, index, 2)
    assert near[:2].tolist() == [[2, 4], [2, 4]] and set(near[2].tolist()) == {0, 1}
    assert not (index[near] == index[:, None]).any()
    assert nearest(features, index, 10).shape == (5, 3)  # rows 0 and 1 have 3 others


def test_missing_labels_are_neither_read_nor_counted():
    features, labels = clustered(8, 100)
    index = torch.arange(len(labels))
    g = torch.Generator().manual_seed(4)
    missing = torch.rand(len(labels), generator=g) < 0.3
    clean = labels.masked_fill(missing, -1)
    assert label_noise(features, clean, index, 8, neighbours=50) < 0.01
    noisy = corrupt(labels, 8, 1.0).masked_fill(missing, -1)
    assert label_noise(features, noisy, index, 8, neighbours=50) > 0.6
    assert label_noise(features, torch.full_like(labels, -1), index, 8) == 0.0


def test_too_few_rows_and_neighbours():
    assert label_noise(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), torch.zeros(1), 3) == 0
    same = torch.zeros(3, dtype=torch.long)  # three rows of one image: no neighbour
    assert label_noise(torch.randn(3, 4), same, same, 3) == 0.0
    features, labels = clustered(2, 3)
    value = label_noise(features, labels, torch.arange(6), 2, neighbours=100)  # k -> 5
    assert 0.0 <= value <= 1.0


def test_identical_features_give_a_finite_estimate():
    labels = torch.arange(4).repeat(10)
    value = label_noise(torch.ones(40, 4), labels, torch.arange(40), 4, neighbours=8)
    assert 0.0 <= value <= 1.0


def test_consistency_weights_sum_to_the_number_of_similarities():
    torch.testing.assert_close(consistency_weights(torch.zeros(3)), torch.ones(3))
    weights = consistency_weights(torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(weights.sum(), torch.tensor(3.0))
    assert weights[0] > weights[1] > weights[2] > 0
    torch.testing.assert_close(consistency_weights(torch.ones(2)), torch.ones(2))


def test_bank_wraps_estimates_when_full_and_round_trips():
    bank = LabelNoiseBank([4, 2], 16, size=10, neighbours=3, every=3)
    features, labels = clustered(4, 5)
    columns = torch.stack([labels, labels % 2], dim=1)
    assert not bank.update(features[:6], columns[:6], torch.arange(6))  # 6 of 10
    assert int(bank.filled) == 6 and int(bank.cursor) == 6
    assert not bank.update(features[6:12], columns[6:12], torch.arange(6, 12))  # full, 2nd
    assert int(bank.filled) == 10 and int(bank.cursor) == 2
    assert torch.equal(bank.index[:2], torch.tensor([10, 11]))  # wrapped over the oldest
    columns[12:, 1] = -1  # missing labels are left out of that column's estimate
    assert bank.update(features[12:20], columns[12:20], torch.arange(12, 20))  # 3rd
    torch.testing.assert_close(bank.noise, bank.estimate())
    copy = LabelNoiseBank([4, 2], 16, size=10, neighbours=3, every=3)
    copy.load_state_dict(bank.state_dict())
    assert torch.equal(copy.features, bank.features) and int(copy.updates) == 3
    big = LabelNoiseBank([4, 2], 16, size=4)
    big.update(features, columns, torch.arange(20))  # more rows than slots: the last 4
    assert sorted(big.index.tolist()) == [16, 17, 18, 19]
    with pytest.raises(ValueError, match="size >= 2"):
        LabelNoiseBank([2], 4, size=1)


def test_the_bank_reads_each_image_once_its_newest_entry():
    bank = LabelNoiseBank([2], 2, size=6)
    one = torch.ones(3, 1, dtype=torch.long)
    bank.update(torch.zeros(3, 2), one, torch.tensor([0, 1, 2]))
    bank.update(torch.ones(3, 2), one, torch.tensor([5, 1, 0]))  # images 0, 1 again
    slots = bank.newest()
    assert sorted(bank.index[slots].tolist()) == [0, 1, 2, 5]
    assert bank.features[slots][bank.index[slots] == 0].tolist() == [[1.0, 1.0]]


def test_supplied_weights_set_the_total():
    w = TaskWeighting(3, "consistency")
    losses = torch.tensor([1.0, 2.0, 3.0])
    valid = torch.ones(3, dtype=torch.bool)
    assert float(w(losses, valid)) == 6.0  # ones until set
    w.set_weights(torch.tensor([1.0, 0.5, 1.5]))
    assert float(w(losses, valid)) == pytest.approx(1 + 1 + 4.5)
    assert not w.log_vars.requires_grad
    with pytest.raises(ValueError, match="3 finite non-negative"):
        w.set_weights(torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="not 'relative'"):
        TaskWeighting(3, "relative").set_weights(torch.ones(3))


def _method(**options):
    from mscon.config import load_config
    from mscon.train import build_model

    sets = {
        "model.backbone": "cnn_small_gn",
        "data.image_size": 8,
        "method.weighting": "consistency",
        "method.consistency_bank": 12,
        "method.consistency_neighbours": 4,
        "method.consistency_every": 1,
        **options,
    }
    config = load_config("demo", [f"{k}={v}" for k, v in sets.items()])
    torch.manual_seed(0)
    return build_model(config, [8, 8, 3])


def test_the_method_weights_similarities_by_their_estimated_noise():
    method = _method(**{"method.instance_similarity": True})
    from mscon.config import AugmentConfig

    assert method.view_recipes(AugmentConfig()) == ["simclr", "simclr", "none"]
    views = torch.rand(12, 3, 3, 8, 8)  # two augmented, the last one plain
    labels = torch.stack(
        [torch.arange(12) % 8, torch.zeros(12, dtype=torch.long), torch.arange(12) % 3], 1
    )
    method.eval()
    method(views, labels, torch.arange(12))
    assert int(method.noise_bank.filled) == 0  # evaluation does not feed the bank
    method.train()
    method(views, labels, torch.arange(12))
    noise = method.noise_bank.noise
    assert int(method.noise_bank.filled) == 12 and noise[1] == 0  # one colour: nothing random
    method.eval()
    with torch.no_grad():
        plain = method.encoder(views[:, -1])
    torch.testing.assert_close(method.noise_bank.features, plain)  # the plain view's
    method.train()
    logged = method.log_values()
    assert set(logged["label_noise"]) == {"shape", "color", "size"}
    want = consistency_weights(torch.cat([noise, torch.zeros(1)]))
    torch.testing.assert_close(method.loss_fn.task_weights(), want)
    assert logged["weights"]["instance"] == pytest.approx(float(want[3]))
    with pytest.raises(ValueError, match="dataset index"):
        method(views, labels)


def test_consistency_keys_and_refusals():
    from mscon.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="consistency_bank is not read"):
        load_config("demo", ["method.weighting=relative", "method.consistency_bank=64"])
    with pytest.raises(ConfigError, match="consistency_bank is not read"):
        load_config("demo", ["method.base_loss=fmicl", "method.consistency_bank=64"])
    default = load_config("demo", ["method.consistency_bank=64"])  # MSCon's default weighting
    assert default.method.weighting == "consistency"
    assert default.method.consistency_kwargs()["size"] == 64
    with pytest.raises(ConfigError, match="multitask_ce cannot supply"):
        load_config("demo", ["method.name=multitask_ce", "method.weighting=consistency"])
    with pytest.raises(ConfigError, match="does not apply to base_loss fmicl"):
        load_config("demo", ["method.base_loss=fmicl", "method.weighting=consistency"])
    config = load_config("demo", ["method.weighting=consistency", "method.consistency_bank=64"])
    assert config.method.consistency_kwargs() == {"size": 64, "neighbours": 100, "every": 10}
