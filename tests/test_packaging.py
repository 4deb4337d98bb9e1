"""A wheel built from the checkout carries the shipped configs and trains from elsewhere."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(ROOT), "-w", str(out)],
        check=True, capture_output=True, cwd=out,
    )  # fmt: skip
    (built,) = out.glob("mscon-*.whl")
    return built


def test_wheel_holds_the_shipped_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for config in ("demo", "synthetic", "zappos50k-mscon", "medic-mscon"):
        assert f"mscon/configs/{config}.yaml" in names
    assert "mscon/configs/demo_seeds.json" in names  # the demo's multi-seed reference


def test_installed_wheel_trains_the_demo_config_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", str(site), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import mscon; print(mscon.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(site))
    sets = ["train.epochs=1", "data.synthetic_size=96", "data.image_size=16",
            "train.batch_size=16", "train.progress=false", "train.tensorboard=false"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "mscon", "train", "demo", *(f"--set={s}" for s in sets)],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (work / "runs" / "demo" / "eval.json").is_file()
