import pytest

from mscon.config import ConfigError, load_config, parse_override


def test_defaults_and_demo_file():
    assert load_config(None).method.name == "mscon"
    demo = load_config("demo")
    assert demo.name == "demo"
    assert demo.data.path is None
    assert demo.run_dir.as_posix() == "runs/demo"


def test_overrides_are_yaml():
    cfg = load_config("demo", ["data.similarities=[shape,size]", "train.lr=0.5", "out=x/y"])
    assert cfg.data.similarities == ["shape", "size"]
    assert cfg.train.lr == 0.5
    assert cfg.run_dir.as_posix() == "x/y"
    assert parse_override("data.corrupt={color: 0.5}") == (["data", "corrupt"], {"color": 0.5})


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.nonsense=1", "train.nonsense"),
        ("method.temperature=0", "method.temperature"),
        ("method.name=byol", "method.name"),
        ("train.epochs=many", "train.epochs"),
        ("data.similarities=[a,a]", "data.similarities"),
        ("noequals", "expected KEY=VALUE"),
        ("train.lr=[1", "not YAML"),
        ("method.instance_mix=1.0", "method.instance_mix"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config("demo", [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config"):
        load_config(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: top level must be a mapping"):
        load_config(listing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {epochs: [\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: {backbone: resnet18, depth: 3}\n")
    with pytest.raises(ConfigError, match="unknown.yaml: model.depth"):
        load_config(unknown)


def test_method_dependent_weighting_defaults():
    from mscon.config import DEFAULT_INSTANCE_MIX, DEFAULT_WEIGHTING

    mscon = load_config("demo").method
    assert (mscon.weighting, mscon.instance_mix) == (
        DEFAULT_WEIGHTING["mscon"],
        DEFAULT_INSTANCE_MIX["mscon"],
    )
    ce = load_config("demo", ["method.name=multitask_ce"]).method
    assert (ce.weighting, ce.instance_mix) == ("uncertainty", 0.0)
    explicit = load_config("demo", ["method.weighting=equal", "method.instance_mix=0"]).method
    assert (explicit.weighting, explicit.instance_mix) == ("equal", 0.0)
