"""mscon demo: the one-seed runs and the committed multi-seed reference beside them."""

import json

import pytest

from conftest import tiny_overrides
from mscon import demo
from mscon.cli import main


def _shrink() -> list[str]:
    skip = ("out=", "method.name=")
    return [item for item in tiny_overrides("unused") if not item.startswith(skip)]


def _reference(methods=("mscon", "multitask_ce"), fingerprint=None):
    tasks = {
        "shape": {"domain": "in", "linear_top1": [30.0, 32.0, 31.0], "knn_top1": [1, 2, 3]},
        "pattern": {"domain": "out", "linear_top1": [20.0, 22.0, 24.0], "knn_top1": [1, 2, 3]},
    }
    return {
        "command": demo.REFERENCE_COMMAND,
        "seeds": [0, 1, 2],
        "overrides": [],
        "methods": {
            m: {"fingerprint": fingerprint or demo.config_fingerprint(m), "tasks": tasks}
            for m in methods
        },
    }


def test_the_shipped_reference_is_of_the_current_demo_configs():
    """Changing the demo config or a default without measuring the reference again fails."""
    reference = demo.load_reference()
    assert reference is not None, "src/mscon/configs/demo_seeds.json is missing"
    assert set(reference["methods"]) == set(demo.DEMO_METHODS)
    assert len(reference["seeds"]) >= 3 and reference["overrides"] == []
    for method, entry in reference["methods"].items():
        assert entry["fingerprint"] == demo.config_fingerprint(method), (
            f"the demo config of {method} changed: run `{demo.REFERENCE_COMMAND}`"
        )
        for task in entry["tasks"].values():
            assert len(task["linear_top1"]) == len(reference["seeds"])


def test_fingerprint_follows_config_changes_but_not_seed_or_folder():
    assert demo.config_fingerprint("mscon") != demo.config_fingerprint("supcon")
    assert demo.config_fingerprint("mscon") != demo.config_fingerprint("mscon", ["train.lr=0.1"])
    display = ["seed=3", "out=elsewhere", "train.progress=false", "train.tensorboard=false"]
    assert demo.config_fingerprint("mscon", display) == demo.config_fingerprint("mscon")


def test_reference_section_shows_mean_std_and_paired_differences():
    text = "\n".join(demo.reference_section(_reference(), ["mscon", "multitask_ce"]))
    assert "| mscon | 31.0 ± 1.0 | 22.0 ± 2.0 |" in text
    assert demo.REFERENCE_COMMAND in text
    assert "| multitask_ce | +0.0 ± 0.0 |" in text  # out-of-domain column only
    assert "Stale" not in text and "--set" not in text


def test_reference_section_says_when_it_does_not_apply():
    stale = demo.reference_section(_reference(fingerprint="0" * 16), ["mscon"], ["train.lr=1"])
    text = "\n".join(stale)
    assert "Stale: the demo config of mscon changed" in text
    assert "This demo ran with `--set train.lr=1`" in text
    assert "No multi-seed reference" in "\n".join(demo.reference_section(None, ["mscon"]))


@pytest.mark.usefixtures("single_thread")
def test_demo_report_puts_the_reference_beside_its_one_seed_table(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), "--methods", "mscon", "supcon"]
    for item in _shrink():
        args += ["--set", item]
    assert main(args) == 0
    report = (tmp_path / "report.md").read_text()
    assert "## Linear and kNN evaluation" in report
    assert "## Several seeds (committed reference)" in report
    assert "This demo ran with `--set" in report  # shrunk: the reference is not of this run
    assert json.loads((tmp_path / "mscon" / "eval.json").read_text())["tasks"]
    assert "Several seeds" in capsys.readouterr().out
