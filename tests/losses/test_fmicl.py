"""FMICLLoss (SPEC section 6) against the slow loop reference, closed forms and invariances."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from losses import reference_fmicl as ref
from mscon.losses import FMICLLoss
from mscon.losses.divergences import get_divergence
from mscon.losses.fmicl import auto_chunk_size, fmicl_chance, fmicl_floor, fmicl_loss

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one thread avoids OpenMP overhead on a busy machine (5x faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


NAMES = list(ref.NAMES)
HALF = [torch.float16, torch.bfloat16]
# (alpha, sigma, mu)
SETTINGS = [(40.0, math.sqrt(0.5), 1.0), (0.5, 0.6, 1.7), (3.0, 1.3, 0.4)]
SETTING_IDS = ["default", "small_alpha", "wide"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = (float(t.detach()) if isinstance(t, torch.Tensor) else float(t) for t in (a, b))
    return abs(a - b) / max(1.0, abs(b))


def value_and_grad(loss_fn, x: torch.Tensor, labels=None) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    loss = loss_fn(x, labels)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def assert_matches(got: tuple, want: tuple, tol: float = 1e-6) -> None:
    value, grad = got
    ref_value, ref_grad = want
    assert rel_err(value, ref_value) <= tol, (float(value), float(ref_value))
    scale = max(1.0, float(ref_grad.abs().max()))
    assert float((grad - ref_grad).abs().max()) <= tol * scale


def reference(x, labels=None, **kwargs):
    return value_and_grad(lambda f, y: ref.fmicl(f, y, **kwargs), x, labels)


# ------------------------------------------------------------------ reference


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("supervised", [False, True])
@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("setting", range(2))
def test_matches_loop_reference(gen, name, supervised, views, setting):
    # V = 2 with the default and a small alpha, V = 3 with a small alpha and a wide kernel
    alpha, sigma, mu = SETTINGS[setting + (views == 3)]
    b = 5 if views == 2 else 4
    x = torch.randn(b, views, 3, generator=gen, dtype=F64)
    labels = torch.tensor([2, 0, -1, 2, 5][:b]) if supervised else None
    loss_fn = FMICLLoss(name, alpha=alpha, sigma=sigma, mu=mu)
    got = value_and_grad(loss_fn, x, labels)
    want = reference(x, labels, name=name, alpha=alpha, sigma=sigma, mu=mu)
    assert_matches(got, want)
    if supervised:
        assert int(labels.eq(-1).sum()) == 1  # a missing label is part of every case


@pytest.mark.parametrize("order", [0.5, 2.0, 3.5])
def test_tsallis_orders_match_reference(gen, order):
    x = torch.randn(4, 2, 3, generator=gen, dtype=F64)
    labels = torch.tensor([1, 1, 0, -1])
    for y in (None, labels):
        loss_fn = FMICLLoss("tsallis", alpha=2.0, sigma=0.8, tsallis_alpha=order)
        want = reference(x, y, name="tsallis", alpha=2.0, sigma=0.8, a=order)
        assert_matches(value_and_grad(loss_fn, x, y), want)


def test_kl_closed_form(gen):
    """KL: -mean_pos (log u + 1) + alpha * mean_neg u, with log u = log mu - (1 - cos)/sigma^2."""
    b, v, alpha, sigma, mu = 6, 3, 7.0, 0.9, 1.4
    x = torch.randn(b, v, 5, generator=gen, dtype=F64)
    labels = torch.tensor([0, 1, 0, -1, 1, 3])
    for y in (None, labels):
        z = torch.nn.functional.normalize(x, dim=-1).reshape(b * v, -1)
        key = torch.arange(b).repeat_interleave(v) if y is None else y.repeat_interleave(v)
        keep = key >= 0
        z, key = z[keep], key[keep]
        log_u = math.log(mu) - (1 - z @ z.T) / sigma**2
        same = key[:, None] == key[None, :]
        pos = same & ~torch.eye(len(key), dtype=torch.bool)
        want = -(log_u[pos] + 1).mean() + alpha * log_u[~same].exp().mean()
        got = FMICLLoss("kl", alpha=alpha, sigma=sigma, mu=mu)(x, y)
        assert rel_err(got, want) <= 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_chance_and_floor_levels(name):
    """Orthogonal views give the chance level; a regular simplex of collapsed classes the floor."""
    settings = {"alpha": 3.0, "sigma": 0.8, "mu": 1.2}
    loss_fn = FMICLLoss(name, **settings)
    z = torch.eye(8, dtype=F64).reshape(4, 2, 8)  # every pair at cosine 0
    assert rel_err(loss_fn(z), fmicl_chance(name, **settings)) <= 1e-12
    assert loss_fn.chance() == fmicl_chance(name, **settings)
    for k in (2, 3, 5):
        vertices = torch.eye(k, dtype=F64) - 1.0 / k  # regular simplex, squared distance 2K/(K-1)
        x = vertices.repeat_interleave(3, dim=0).unsqueeze(1).expand(3 * k, 2, k)
        labels = torch.arange(k).repeat_interleave(3)
        assert rel_err(loss_fn(x, labels), fmicl_floor(k, name, **settings)) <= 1e-9
        assert loss_fn.floor(k) == fmicl_floor(k, name, **settings)
    one_class = torch.ones(4, 2, 3, dtype=F64)
    assert rel_err(loss_fn(one_class, torch.zeros(4, dtype=torch.long)), loss_fn.floor(1)) <= 1e-12
    div = get_divergence(name)
    log_mu = torch.tensor(math.log(1.2), dtype=F64)
    assert fmicl_floor(1, name, **settings) == -float(div.f_prime(log_mu))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        fmicl_floor(0, name)


def test_kl_floor_is_below_random_batches(gen):
    """For KL the simplex level bounds any batch with collapsed positives from below."""
    k = 4
    loss_fn = FMICLLoss("kl", alpha=5.0)
    for _ in range(5):
        points = torch.randn(k, 6, generator=gen, dtype=F64)
        x = points.repeat_interleave(2, dim=0).unsqueeze(1).expand(2 * k, 2, 6)
        assert float(loss_fn(x, torch.arange(k).repeat_interleave(2))) >= loss_fn.floor(k)


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(gen, name):
    x = torch.randn(3, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    loss_fn = FMICLLoss(name, alpha=2.0, sigma=0.9, mu=1.1)
    assert gradcheck(lambda f: loss_fn(f), (x,))
    y = torch.randn(3, 3, 2, generator=gen, dtype=F64, requires_grad=True)
    assert gradcheck(lambda f: loss_fn(f, torch.tensor([1, -1, 1])), (y,))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("supervised", [False, True])
def test_chunked_equals_unchunked(gen, name, supervised):
    x = torch.randn(6, 3, 4, generator=gen, dtype=F64)
    labels = torch.tensor([0, 1, 0, -1, 1, 0]) if supervised else None
    whole = value_and_grad(FMICLLoss(name, alpha=3.0, chunk_size=10_000), x, labels)
    for chunk in (1, 4):
        got = value_and_grad(FMICLLoss(name, alpha=3.0, chunk_size=chunk), x, labels)
        assert_matches(got, whole, tol=1e-12)
    assert auto_chunk_size(4096) == 1024 and auto_chunk_size(10**9) == 1


def test_no_grad_forward_equals_grad_forward(gen):
    x = torch.randn(6, 2, 4, generator=gen)
    loss_fn = FMICLLoss("js")
    with torch.no_grad():
        plain = loss_fn(x)
    assert float(plain) == float(loss_fn(x.clone().requires_grad_()).detach())


# ------------------------------------------------------------------ precision and extremes


def clustered(gen, b: int, v: int, d: int, spread: float) -> torch.Tensor:
    return torch.randn(b, 1, d, generator=gen) + spread * torch.randn(b, v, d, generator=gen)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", HALF)
def test_half_inputs_finite_and_close_to_float32(gen, name, dtype):
    x = clustered(gen, 12, 2, 16, spread=0.3).to(dtype).requires_grad_()
    labels = torch.tensor([0, 1, 2, 0, 1, 2, -1, 0, 1, 2, 3, 3])
    loss_fn = FMICLLoss(name)
    for y in (None, labels):
        got = loss_fn(x, y)
        assert got.dtype == torch.float32 and torch.isfinite(got)
        (grad,) = torch.autograd.grad(got, x)
        assert grad.dtype == dtype and bool(torch.isfinite(grad.float()).all())
        # the same input values in float32: only the computation's precision differs
        assert rel_err(got, loss_fn(x.detach().float(), y)) <= 1e-4


def test_float32_and_float64_outputs(gen):
    x = torch.randn(4, 2, 3, generator=gen)
    assert FMICLLoss()(x).dtype == torch.float32
    assert FMICLLoss()(x.double()).dtype == F64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = FMICLLoss()(x)
    assert under.dtype == torch.float32 and float(under) == float(FMICLLoss()(x))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.float16])
def test_coincident_embeddings_at_u_equal_mu(name, dtype):
    """All views identical: every pair at u = mu; finite values and (zero) gradients."""
    mu, alpha = 1.3, 2.0
    x = torch.full((4, 2, 5), 0.7, dtype=dtype, requires_grad=True)
    loss = FMICLLoss(name, alpha=alpha, mu=mu)(x)
    (grad,) = torch.autograd.grad(loss, x)
    div = get_divergence(name)
    log_mu = torch.tensor(math.log(mu), dtype=F64)
    want = -div.f_prime(log_mu) + alpha * div.conjugate(log_mu)
    assert rel_err(loss, want) <= 1e-5
    assert bool(torch.isfinite(grad.float()).all()) and float(grad.float().abs().max()) <= 1e-3


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sigma", [math.sqrt(0.5), 0.12])
def test_antipodal_views_at_the_far_end_are_finite_in_float32(gen, name, sigma):
    """Each image's two views antipodal: positives at u = mu exp(-2/sigma^2)."""
    base = torch.randn(6, 1, 8, generator=gen)
    x = torch.cat([base, -base], dim=1).requires_grad_()
    loss_fn = FMICLLoss(name, sigma=sigma)
    for y in (None, torch.tensor([0, 0, 1, 1, 2, -1])):
        loss = loss_fn(x, y)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())
    if sigma < 0.5:
        # there d f'/d cos reaches e^(1/sigma^2)/(2 sigma^2) ~ 1e31: the (zero) gradient at
        # exactly antipodal views is that times rounding noise in any implementation
        return
    z = torch.nn.functional.normalize(base.double(), dim=-1)
    xd = torch.cat([z, -z], dim=1)
    # float64 agrees with the reference there (positives clamped at the far end)
    got = value_and_grad(FMICLLoss(name, sigma=sigma), xd)
    assert_matches(got, reference(xd, name=name, sigma=sigma))


# ------------------------------------------------------------------ invariances and empty terms


@pytest.mark.parametrize("name", NAMES)
def test_invariances(gen, name):
    b, v = 7, 3
    x = torch.randn(b, v, 4, generator=gen, dtype=F64)
    labels = torch.tensor([0, 2, 2, -1, 0, 1, 2])
    loss_fn = FMICLLoss(name, alpha=4.0, sigma=0.8)
    for y in (None, labels):
        value, grad = value_and_grad(loss_fn, x, y)
        perm = torch.randperm(b, generator=gen)
        yp = None if y is None else y[perm]
        value_p, grad_p = value_and_grad(loss_fn, x[perm], yp)
        assert rel_err(value_p, value) <= 1e-12
        torch.testing.assert_close(grad_p, grad[perm], rtol=1e-10, atol=1e-12)
        views = torch.tensor([2, 0, 1])
        value_v, grad_v = value_and_grad(loss_fn, x[:, views], y)
        assert rel_err(value_v, value) <= 1e-12
        torch.testing.assert_close(grad_v, grad[:, views], rtol=1e-10, atol=1e-12)
    renamed = torch.tensor([11, 3, 3, -1, 11, 40, 3])  # 0 -> 11, 2 -> 3, 1 -> 40
    assert rel_err(loss_fn(x, renamed), loss_fn(x, labels)) <= 1e-12
    scaled = x * torch.rand(b, v, 1, generator=gen, dtype=F64).add(0.5)  # normalised inside
    assert rel_err(loss_fn(scaled, labels), loss_fn(x, labels)) <= 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_empty_terms_are_zero_with_a_gradient(gen, name):
    x = torch.randn(5, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    loss_fn = FMICLLoss(name, alpha=3.0)
    # all labels missing: no pair at all
    loss = loss_fn(x, torch.full((5,), -1))
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    (grad,) = torch.autograd.grad(loss, x)
    assert float(grad.abs().max()) == 0.0
    # one class: no negative pair, the loss is the positive term alone
    one = torch.full((5,), 4)
    want = reference(x, one, name=name, alpha=3.0)
    assert_matches(value_and_grad(loss_fn, x, one), want)
    assert math.isfinite(float(want[0]))
    # one image: no negative pair either
    single = x[:1].detach()
    assert_matches(value_and_grad(loss_fn, single), reference(single, name=name, alpha=3.0))
    # one labelled image among missing ones
    some = torch.tensor([-1, 7, -1, -1, -1])
    assert_matches(value_and_grad(loss_fn, x, some), reference(x, some, name=name, alpha=3.0))


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((4, 1, 3), r"features must have shape \(B, V, d\) with V >= 2.*got \(4, 1, 3\)"),
        ((8, 3), r"features must have shape \(B, V, d\).*got \(8, 3\)"),
        ((2, 4, 2, 3), r"features must have shape .*got \(2, 4, 2, 3\)"),
        ((0, 2, 3), r"B >= 1.*got \(0, 2, 3\)"),
        ((4, 2, 0), r"embedding dimension d >= 1.*got shape \(4, 2, 0\)"),
    ],
)
def test_bad_feature_shapes(shape, match):
    with pytest.raises(ValueError, match="FMICLLoss: .*" + match):
        FMICLLoss()(torch.randn(*shape))


def test_bad_inputs():
    loss_fn = FMICLLoss()
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\) = \(4,\), got \(3,\)"):
        loss_fn(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="labels must be integer labels"):
        loss_fn(x, torch.zeros(4))
    with pytest.raises(ValueError, match="labels must be class indices >= 0 or -1"):
        loss_fn(x, torch.tensor([0, -2, 1, 1]))
    with pytest.raises(ValueError, match="features must contain only finite values, got NaN"):
        loss_fn(x.index_fill(0, torch.tensor([1]), math.nan))
    with pytest.raises(ValueError, match="features must be a float16, bfloat16"):
        loss_fn(torch.ones(4, 2, 3, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"divergence": "reverse_kl"}, "divergence must be one of 'kl', 'js', 'pearson'"),
        ({"divergence": "tsallis", "tsallis_alpha": 1.0}, "tsallis_alpha must be != 1"),
        ({"divergence": "tsallis", "tsallis_alpha": -1.0}, "tsallis_alpha must be > 0"),
        ({"divergence": "sq_hellinger", "sigma": 0.1}, r"needs sigma >= 0\.11"),
        ({"alpha": 0.0}, "alpha must be a finite number > 0, got 0.0"),
        ({"sigma": -1.0}, "sigma must be a finite number > 0"),
        ({"mu": math.inf}, "mu must be a finite number > 0"),
        ({"chunk_size": 0}, "chunk_size must be None or an integer >= 1, got 0"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match="FMICLLoss: .*" + match):
        FMICLLoss(**kwargs)


def test_tsallis_order_ignored_by_other_divergences_and_repr():
    assert FMICLLoss("kl", tsallis_alpha=1.0).divergence.name == "kl"
    text = repr(FMICLLoss("tsallis", alpha=2.0, tsallis_alpha=2.5))
    assert "Tsallis(order=2.5)" in text and "alpha=2.0" in text


def test_functional_form_takes_names_and_objects(gen):
    x = torch.randn(3, 2, 4, generator=gen, dtype=F64)
    by_name = fmicl_loss(x, divergence="tsallis", tsallis_alpha=2.0, alpha=3.0)
    by_object = fmicl_loss(x, divergence=get_divergence("tsallis", tsallis_alpha=2.0), alpha=3.0)
    assert float(by_name) == float(by_object)
    assert float(by_name) == float(FMICLLoss("tsallis", 3.0, tsallis_alpha=2.0)(x))
