import float32_drift
import pytest
import torch


def test_relative_differences_orders_tensors_and_skips_integers():
    b = {"w": torch.ones(4), "b": torch.zeros(2) + 0.1, "n": torch.tensor(3)}
    a = {"w": torch.ones(4) * 1.01, "b": torch.zeros(2) + 0.2, "n": torch.tensor(3)}
    rows = float32_drift.relative_differences(a, b)
    assert [name for _, _, name in rows] == ["b", "w"]
    assert rows[1][0] == pytest.approx(0.01, rel=1e-5)


@pytest.mark.usefixtures("single_thread")
def test_float32_gradient_is_close_to_but_not_float64(capsys):
    tiny = ["data.synthetic_size=96", "data.image_size=16", "train.batch_size=16"]
    float32_drift.main(["--gradient", "--top", "3", *[a for s in tiny for a in ("--set", s)]])
    worst = float(capsys.readouterr().out.split()[0])
    assert 0 < worst < 1e-2
