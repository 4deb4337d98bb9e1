import method_grid
import pytest


def result(linear, knn):
    return {"tasks": {"pattern": {"domain": "out", "linear_top1": linear, "knn_top1": knn}}}


def test_paired_differences_use_the_same_seed():
    results = {
        "base": [result(10, 5), result(20, 7), result(30, 9)],
        "new": [result(12, 5), result(21, 8), result(33, 9)],
        "broken": [{"tasks": {}}, result(25, 7), result(30, 9)],  # seed 0 diverged
    }
    table = method_grid.paired(results, "base")
    assert "| new | pattern | +2.0 ± 0.6 | +0.3 ± 0.3 | 3 |" in table  # diffs 2, 1, 3
    assert "| broken | pattern | +2.5 ± 2.5 | +0.0 ± 0.0 | 2 |" in table  # seeds 1, 2 only
    with pytest.raises(SystemExit, match="no such variant"):
        method_grid.paired(results, "missing")
