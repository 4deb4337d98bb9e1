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
        ("method.head_center_momentum=1.0", "method.head_center_momentum"),
        ("method.prototype_weight=-1", "method.prototype_weight"),
        ("data.synthetic_structure=nested", "data.synthetic_structure"),
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
    mscon = load_config("demo").method
    assert (mscon.weighting, mscon.instance_mix) == ("consistency", 0.0)
    ce = load_config("demo", ["method.name=multitask_ce"]).method
    assert ce.weighting == "uncertainty" and not hasattr(ce, "instance_mix")
    explicit = load_config("demo", ["method.weighting=equal", "method.instance_mix=0"]).method
    assert (explicit.weighting, explicit.instance_mix) == ("equal", 0.0)


def test_mscon_with_supcon_turns_the_head_options_on_unless_given():
    config = load_config("demo")
    assert (config.model.head_weight_norm, config.train.head_weight_decay) == (True, 0.05)
    given = load_config("demo", ["model.head_weight_norm=false", "train.head_weight_decay=0.2"])
    assert (given.model.head_weight_norm, given.train.head_weight_decay) == (False, 0.2)
    at_default = load_config("demo", ["train.head_weight_decay=null"])  # given, though null
    assert at_default.train.head_weight_decay is None and at_default.model.head_weight_norm
    for others in (
        ["method.name=supcon"],
        ["method.name=multitask_ce"],
        ["method.base_loss=fmicl"],
    ):
        config = load_config("demo", others)
        assert (config.model.head_weight_norm, config.train.head_weight_decay) == (False, None)
    saved = load_config("demo")
    from mscon.config import config_from_yaml, config_to_yaml

    again = config_from_yaml(config_to_yaml(saved), "round trip")
    assert again.model.head_weight_norm and again.train.head_weight_decay == 0.05


@pytest.mark.parametrize("key", ["log_var_lr=0.01", "weight_warmup_epochs=1"])
def test_learned_weight_keys_are_refused_when_nothing_is_learned(key):
    for weighting in ("equal", "consistency", None):  # None: MSCon's default, consistency
        chosen = [f"method.weighting={weighting}"] if weighting else []
        with pytest.raises(ConfigError, match=f"{key.split('=')[0]} is not read"):
            load_config("demo", [*chosen, f"method.{key}"])
    with pytest.raises(ConfigError, match=f"{key.split('=')[0]} is not read"):
        load_config("demo", ["method.name=multitask_ce", "method.weighting=equal", f"method.{key}"])
    for weighting in ("relative", "uncertainty", "temperature"):
        load_config("demo", [f"method.weighting={weighting}", f"method.{key}"])
    load_config("demo", ["method.name=multitask_ce", f"method.{key}"])  # uncertainty


def test_unknown_keys_suggest_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"train.epoch: unknown key .*did you mean 'epochs'"):
        load_config("demo", ["train.epoch=3"])
    with pytest.raises(
        ConfigError, match=r"method.temprature: not read by method 'mscon'.*'temperature'"
    ):
        load_config("demo", ["method.temprature=0.2"])
    with pytest.raises(ConfigError, match=r"model.backbone: unknown name 'resnet19'.*'resnet18'"):
        load_config("demo", ["model.backbone=resnet19"])
    with pytest.raises(ConfigError, match=r"method.name: unknown name 'mscn'.*'mscon'"):
        load_config("demo", ["method.name=mscn"])


def test_a_key_the_method_does_not_read_is_refused():
    with pytest.raises(ConfigError, match=r"method.queue_size: not read by method 'mscon'"):
        load_config("demo", ["method.queue_size=4096"])
    with pytest.raises(ConfigError, match="method.weighting: unknown name 'nope'"):
        load_config("demo", ["method.weighting=nope"])
    with pytest.raises(ConfigError, match=r"method.weighting: not read by method 'supcon'"):
        load_config("demo", ["method.name=supcon", "method.weighting=equal"])
    with pytest.raises(ConfigError, match="method.weights: expected 3 values"):
        load_config("demo", ["method.weighting=fixed", "method.weights=[1, 2]"])
    with pytest.raises(ConfigError, match="weights must be given with weighting='fixed'"):
        load_config("demo", ["method.weighting=fixed"])


def test_switching_methods_drops_the_files_unread_keys_with_a_notice(tmp_path, capsys):
    file = tmp_path / "mscon.yaml"
    file.write_text("method: {name: mscon, temperature: 0.3, instance_mix: 0.2}\n")
    ce = load_config(file, ["method.name=multitask_ce"]).method
    assert ce.name == "multitask_ce" and ce.weighting == "uncertainty"
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1
    assert "method.instance_mix, method.temperature not read by method 'multitask_ce'" in notice[0]
    supcon = load_config(file, ["method.name=supcon"]).method  # keeps what it reads
    assert supcon.temperature == 0.3
    assert load_config(file).method.instance_mix == 0.2  # no switch: nothing dropped
    assert capsys.readouterr().err.count("not read") == 1


def test_method_sections_round_trip_through_yaml():
    from mscon.config import config_from_yaml, config_to_yaml

    for name in ("simclr", "supcon", "mscon", "multitask_ce"):
        config = load_config("demo", [f"method.name={name}"])
        again = config_from_yaml(config_to_yaml(config), "round trip")
        assert again == config and type(again.method) is type(config.method)


def test_views_take_a_recipe_per_view():
    config = load_config("demo", ["augment.views=[weak, strong]"])
    assert config.augment.recipes() == ["weak", "strong"]
    assert load_config("demo", ["augment.views=3"]).augment.recipes() == ["simclr"] * 3
    with pytest.raises(ConfigError, match="augment.views"):
        load_config("demo", ["augment.views=[weak, blurry]"])
    with pytest.raises(ConfigError, match="augment.views"):
        load_config("demo", ["augment.views=0"])


def test_shipped_configs_are_found_by_name_and_listed():
    from mscon.config import available_configs

    assert {"demo", "synthetic", "zappos50k-mscon", "medic-mscon"} <= set(available_configs())
    with pytest.raises(ConfigError, match="did you mean 'demo'"):
        load_config("dmeo")


@pytest.mark.parametrize("key", ["model.head_batch_norm", "model.head_weight_norm"])
def test_multitask_ce_refuses_projection_head_switches(key):
    with pytest.raises(ConfigError, match=f"{key}: multitask_ce has linear classifiers"):
        load_config("demo", ["method.name=multitask_ce", f"{key}=true"])
    assert getattr(load_config("demo", [f"{key}=true"]).model, key.split(".")[1]) is True
