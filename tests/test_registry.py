import pytest

from mscon.registry import Registry, did_you_mean


def test_lookup_suggests_and_lists():
    reg: Registry[int] = Registry("thing.kind")
    reg.register("alpha")(1)
    reg.register("beta")(2)
    assert reg.lookup("beta") == 2 and reg.names() == ["alpha", "beta"]
    with pytest.raises(
        ValueError,
        match=r"thing.kind: unknown name 'alpah' \(did you mean 'alpha'\?\); known: alpha, beta",
    ):
        reg.lookup("alpah")
    with pytest.raises(ValueError, match="unknown name 3"):
        reg.check(3)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("alpha")(3)


def test_did_you_mean_is_silent_when_nothing_is_close():
    assert did_you_mean("zzz", ["alpha"]) == ""


def test_the_three_registries_share_one_style():
    from mscon.losses.weighting import WEIGHTING_MODES
    from mscon.methods import METHODS
    from mscon.models.backbones import BACKBONES

    for registry in (WEIGHTING_MODES, METHODS, BACKBONES):
        assert isinstance(registry, Registry)
    assert {"simclr", "supcon", "mscon", "multitask_ce"} <= set(METHODS)
