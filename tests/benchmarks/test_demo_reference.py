import json

import demo_reference
import pytest

from conftest import tiny_overrides
from mscon import demo


@pytest.mark.usefixtures("single_thread")
def test_reference_file_from_real_runs(tmp_path):
    shrink = [i for i in tiny_overrides("x") if not i.startswith(("out=", "method.name="))]
    out = tmp_path / "reference.json"
    args = ["--out", str(tmp_path / "runs"), "--seeds", "0", "1", "--methods", "mscon", "supcon"]
    args += ["--write", str(out)] + [a for item in shrink for a in ("--set", item)]
    demo_reference.main(args)
    reference = json.loads(out.read_text())
    assert reference["seeds"] == [0, 1] and reference["overrides"] == shrink
    mscon = reference["methods"]["mscon"]
    assert mscon["fingerprint"] == demo.config_fingerprint("mscon", shrink)
    assert mscon["fingerprint"] != demo.config_fingerprint("mscon")  # shrunk: stale for demo
    seed0 = json.loads((tmp_path / "runs" / "mscon" / "seed0" / "eval.json").read_text())
    assert mscon["tasks"]["pattern"]["linear_top1"][0] == seed0["tasks"]["pattern"]["linear_top1"]
    assert reference["methods"]["supcon"]["tasks"]["shape"]["domain"] == "in"
    text = "\n".join(demo.reference_section(reference, ["mscon", "supcon"]))
    assert "Stale: the demo config of mscon, supcon changed" in text
