"""The f-divergence table of f-MICL (SPEC section 6): formulas, identities, range checks."""

from __future__ import annotations

import math

import pytest
import torch

from losses import reference_fmicl as ref
from mscon.losses.divergences import (
    DIVERGENCES,
    FLOAT32_LIMIT,
    Divergence,
    Tsallis,
    check_range,
    get_divergence,
    log_u_range,
)

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one thread avoids OpenMP overhead on a busy machine (5x faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


NAMES = list(ref.NAMES)
ORDERS = [0.5, 1.5, 3.0]  # Tsallis orders checked besides the default


def divergences() -> list[tuple[Divergence, float]]:
    """Every divergence, Tsallis at several orders, with the order the reference needs."""
    out = [(get_divergence(name), 1.5) for name in NAMES if name != "tsallis"]
    return out + [(get_divergence("tsallis", tsallis_alpha=a), a) for a in ORDERS]


CASES = divergences()
IDS = [repr(d) for d, _ in CASES]
U = torch.cat([torch.logspace(-6, 1, 200, dtype=F64), torch.tensor([1.0], dtype=F64)])


@pytest.mark.parametrize(("div", "a"), CASES, ids=IDS)
def test_formulas_equal_the_spec_table_in_u(div, a):
    """f, f' and f*(f') from log u equal SPEC's table written in u (the reference)."""
    log_u = U.log()
    name = div.name
    torch.testing.assert_close(div.f(log_u), ref.f(name, U, a), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(div.f_prime(log_u), ref.f_prime(name, U, a), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        div.conjugate(log_u), ref.conjugate(name, U, a), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize(("div", "a"), CASES, ids=IDS)
def test_fenchel_young_identity_and_convexity(div, a):
    """f*(f'(u)) = u f'(u) - f(u); f(1) = 0; f convex (u f''(u) >= 0, second differences >= 0)."""
    log_u = U.log()
    lhs = div.conjugate(log_u)
    rhs = U * div.f_prime(log_u) - div.f(log_u)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
    zero = torch.zeros((), dtype=F64)
    assert abs(float(div.f(zero))) < 1e-15
    assert bool((div.f_prime_dlog(log_u) >= 0).all())
    u = torch.linspace(0.01, 5.0, 2001, dtype=F64)
    values = div.f(u.log())
    second = values[2:] - 2 * values[1:-1] + values[:-2]
    assert float(second.min()) >= -1e-12


@pytest.mark.parametrize(("div", "a"), CASES, ids=IDS)
def test_derivatives_equal_autograd(div, a):
    """f_prime_dlog = d f'/d log u = u f''(u); conjugate_dlog = d f*(f')/d log u = u * that."""
    log_u = torch.linspace(-8.0, 2.0, 301, dtype=F64, requires_grad=True)
    (d_fp,) = torch.autograd.grad(div.f_prime(log_u).sum(), log_u)
    (d_fc,) = torch.autograd.grad(div.conjugate(log_u).sum(), log_u)
    with torch.no_grad():
        torch.testing.assert_close(div.f_prime_dlog(log_u), d_fp, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(div.conjugate_dlog(log_u), d_fc, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(
            div.conjugate_dlog(log_u), log_u.exp() * div.f_prime_dlog(log_u), rtol=1e-12, atol=0
        )


@pytest.mark.parametrize(("div", "a"), CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fused_dense_pass_equals_the_plain_functions(div, a, dtype):
    log_u = torch.linspace(-6.0, 0.5, 999, dtype=dtype).reshape(27, 37)
    value, dlog = div.conjugate_sum_and_dlog_(log_u.clone())
    tol = 1e-12 if dtype == F64 else 2e-6
    want = div.conjugate(log_u).sum()
    assert abs(float(value - want)) <= tol * max(1.0, float(div.conjugate(log_u).abs().sum()))
    torch.testing.assert_close(dlog, div.conjugate_dlog(log_u), rtol=tol, atol=tol)


@pytest.mark.parametrize(("div", "a"), CASES, ids=IDS)
@pytest.mark.parametrize("sigma", [math.sqrt(0.5), 0.2])
def test_finite_in_float32_over_the_reachable_range(div, a, sigma):
    lo, hi = log_u_range(sigma, 1.0)
    log_u = torch.linspace(lo, hi, 513, dtype=torch.float32)
    for fn in (div.f_prime, div.conjugate, div.f_prime_dlog, div.conjugate_dlog):
        assert bool(torch.isfinite(fn(log_u)).all()), fn.__name__
    value, dlog = div.conjugate_sum_and_dlog_(log_u.clone())
    assert math.isfinite(float(value)) and bool(torch.isfinite(dlog).all())


def test_kl_values_and_tsallis_tends_to_kl():
    kl = get_divergence("kl")
    log_u = U.log()
    torch.testing.assert_close(kl.f_prime(log_u), log_u + 1)
    torch.testing.assert_close(kl.conjugate(log_u), U)
    # SPEC's Tsallis f is (u^a - 1)/(a - 1); less the linear term (u - 1)/(a - 1), which
    # shifts the loss by a constant only, it tends to KL's u log u as a -> 1
    a = 1.0 + 1e-7
    shifted = Tsallis(a).f(log_u) - (U - 1) / (a - 1)
    torch.testing.assert_close(shifted, kl.f(log_u), rtol=1e-5, atol=1e-5)


def test_vlc_uses_the_self_consistent_conjugate_not_the_papers_misprint():
    vlc = get_divergence("vlc")
    one = torch.zeros((), dtype=F64)
    assert float(vlc.conjugate(one)) == 0.0  # the paper's 3 - 4/(u+1) gives 1 at u = 1
    u = torch.tensor([0.3, 2.0], dtype=F64)
    misprint = 3 - 4 / (u + 1)
    assert not torch.allclose(vlc.conjugate(u.log()), misprint)


# ------------------------------------------------------------------ registry


def test_registry_names():
    assert list(DIVERGENCES) == NAMES
    for name in NAMES:
        assert get_divergence(name).name == name
    assert get_divergence("tsallis", tsallis_alpha=2.0) == Tsallis(2.0)
    assert get_divergence("tsallis").order == 1.5


@pytest.mark.parametrize("name", ["reverse_kl", "neyman", "KL", "", None])
def test_unknown_name_lists_the_known_ones(name):
    with pytest.raises(ValueError, match="divergence must be one of") as info:
        get_divergence(name)
    for known in NAMES:
        assert repr(known) in str(info.value)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize(
    ("order", "match"),
    [
        (1.0, "tsallis_alpha must be != 1.*is KL"),
        (1, "tsallis_alpha must be != 1"),
        (0.0, "tsallis_alpha must be > 0"),
        (-0.5, "tsallis_alpha must be > 0"),
        (math.nan, "tsallis_alpha must be a finite number"),
        (math.inf, "tsallis_alpha must be a finite number"),
        ("2", "tsallis_alpha must be a finite number"),
        (True, "tsallis_alpha must be a finite number"),
    ],
)
def test_bad_tsallis_order(order, match):
    with pytest.raises(ValueError, match=match):
        get_divergence("tsallis", tsallis_alpha=order)


# ------------------------------------------------------------------ range check


def test_sq_hellinger_sigma_bound_is_named_and_tight():
    div = get_divergence("sq_hellinger")
    with pytest.raises(ValueError, match=r"needs sigma >= 0\.113\d") as info:
        check_range(div, sigma=0.1, mu=1.0, alpha=40.0)
    assert "sigma=0.1" in str(info.value) and "sq_hellinger" in str(info.value)
    bound = float(str(info.value).split("needs sigma >= ")[1].split()[0])
    check_range(div, sigma=bound, mu=1.0, alpha=40.0)  # the printed bound holds
    with pytest.raises(ValueError):
        check_range(div, sigma=bound * 0.999, mu=1.0, alpha=40.0)
    # the bound: d f'/d cos = exp(1/sigma^2) / (2 sigma^2) reaches float32's max / 2^10
    x = 1.0 / bound**2
    assert math.exp(x) * x / 2 == pytest.approx(FLOAT32_LIMIT, rel=0.15)
    check_range(div, sigma=math.sqrt(0.5), mu=1.0, alpha=40.0)


def test_tsallis_below_one_overflows_for_small_sigma():
    with pytest.raises(ValueError, match=r"needs sigma >= .* or tsallis_alpha >= 0\.6"):
        check_range(Tsallis(0.5), sigma=0.1, mu=1.0, alpha=40.0)
    check_range(Tsallis(0.5), sigma=0.2, mu=1.0, alpha=40.0)
    check_range(Tsallis(0.05), sigma=math.sqrt(0.5), mu=1.0, alpha=40.0)
    check_range(Tsallis(3.0), sigma=0.1, mu=1.0, alpha=40.0)  # a > 1: u^(a-1) <= 1


def test_too_large_mu_is_rejected_at_any_sigma():
    with pytest.raises(ValueError, match="mu or alpha is too large"):
        check_range(get_divergence("pearson"), sigma=0.7, mu=1e20, alpha=40.0)
    check_range(get_divergence("kl"), sigma=0.05, mu=1.0, alpha=40.0)  # KL has no bound here
