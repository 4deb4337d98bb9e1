"""Every shipped config validates, and its columns exist where they can be checked."""

from pathlib import Path

import pytest

from mscon.config import CONFIG_DIR, load_config

CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {
        "demo.yaml",
        "synthetic.yaml",
        "synthetic_grouped.yaml",
        "synthetic_coarse.yaml",
    } <= names
    assert {"zappos50k-mscon.yaml", "medic-mscon.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path: Path):
    config = load_config(path)
    assert config.data.similarities
    if config.data.path is None:  # the embedded data: every column must exist
        from mscon.data.synthetic import make_synthetic

        structure = config.data.synthetic_structure
        columns = set(make_synthetic(16, seed=0, structure=structure).columns())
        assert set(config.data.similarities) | set(config.data.eval_tasks) <= columns
