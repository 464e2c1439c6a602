"""Each deterministic merge method against an independent numpy float64 reference written from the
formulas (mergekit 0.1.5's definitions), on tiny seeded tensors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from apps.assembly.engine.methods import MethodInputError, get_method
from apps.assembly.engine.methods.generalized_task_arithmetic import elect_signs

Array = np.ndarray


def _models(
    count: int, shape: tuple[int, ...] = (6, 5), seed: int = 0, spread: float = 0.1
) -> tuple[Array, list[Array]]:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape)
    return base, [base + spread * rng.standard_normal(shape) for _ in range(count)]


def _t(x: Array, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float64)).to(dtype)


def _merge(name: str, models: list[Array], base: Array | None, per_model: list[dict], global_params: dict,
           dtype: torch.dtype = torch.float64) -> Array:
    out = get_method(name).merge([_t(m, dtype) for m in models], None if base is None else _t(base, dtype),
                                 per_model, global_params)
    assert out.dtype == dtype
    return out.double().numpy()


def _close(actual: Array, expected: Array, dtype: torch.dtype = torch.float64) -> None:
    tol = {torch.float64: 1e-12, torch.float32: 2e-6}[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------- references


def ref_linear(models: list[Array], weights: list[float], normalize: bool) -> Array:
    total = sum(w * m for w, m in zip(weights, models, strict=True))
    return total / sum(weights) if normalize else total


def ref_slerp(t: float, v0: Array, v1: Array) -> Array:
    a, b = v0.ravel(), v1.ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    na, nb = (na if na > 1e-8 else 1.0), (nb if nb > 1e-8 else 1.0)
    dot = float(np.clip(np.dot(a / na, b / nb), -1, 1))
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    theta = np.arccos(dot)
    return (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / np.sin(theta)


def _nuslerp_vectors(t: float, a: Array, b: Array) -> Array:
    """Rows of a and b (last axis) interpolated on the sphere, colinear rows linearly."""
    ua = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-7)
    ub = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-7)
    cos = np.clip((ua * ub).sum(-1, keepdims=True), -1, 1)
    theta = np.arccos(cos)
    with np.errstate(divide="ignore", invalid="ignore"):
        spherical = (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)
    return np.where(1 - cos**2 <= 1e-16, (1 - t) * a + t * b, spherical)


def ref_nuslerp(weights: list[float], x0: Array, x1: Array, base: Array | None, *, flatten: bool = True,
                row_wise: bool = False) -> Array:
    t = 0.5 if abs(sum(weights)) < 1e-6 else weights[1] / sum(weights)
    a, b = (x0, x1) if base is None else (x0 - base, x1 - base)
    if flatten:
        out = _nuslerp_vectors(t, a.ravel(), b.ravel()).reshape(a.shape)
    elif row_wise:  # vectors along dim 0
        out = _nuslerp_vectors(t, a.T, b.T).T
    else:
        out = _nuslerp_vectors(t, a, b)
    return out if base is None else base + out


def keep_largest(delta: Array, density: float) -> Array:
    if density >= 1:
        return np.ones_like(delta)
    k = max(1, int(density * delta.size))
    mask = np.zeros(delta.size)
    mask[np.argsort(-np.abs(delta.ravel()))[:k]] = 1
    return mask.reshape(delta.shape)


def keep_middle(delta: Array, density: float, gamma: float) -> Array:
    if density >= 1:
        return np.ones_like(delta)
    n = delta.size
    keep, top = int(density * n), int(gamma * n)
    low = max(0, n - keep - top)
    mask = np.zeros(n)
    mask[np.argsort(np.abs(delta.ravel()))[low : low + keep]] = 1
    return mask.reshape(delta.shape)


def rescaled(delta: Array, mask: Array, rescale: bool) -> Array:
    kept = delta * mask
    before, after = np.abs(delta).sum(), np.abs(kept).sum()
    if not rescale or before < 1e-7 or after < 1e-7:
        return kept
    return kept * before / after


def ref_task_arithmetic_family(
    base: Array, models: list[Array], per_model: list[dict], *,
    mask_of: Callable[[Array, dict], Array] | None, elect: bool, normalize: bool, rescale: bool = False,
    lam: float = 1.0,
) -> Array:
    weights = np.array([p["weight"] for p in per_model]).reshape(-1, *[1] * base.ndim)
    deltas = []
    for m, p in zip(models, per_model, strict=True):
        delta = m - base
        if mask_of is not None:
            delta = rescaled(delta, mask_of(delta, p), rescale)
        deltas.append(delta)
    weighted = np.stack(deltas) * weights
    if elect:
        majority = np.where(weighted.sum(0) >= 0, 1.0, -1.0)
        agree = np.sign(weighted) == majority  # a zero entry has sign 0: never agrees
        merged = (weighted * agree).sum(0)
        divisor = (weights * agree).sum(0)
        divisor[divisor == 0] = 1
    else:
        merged = weighted.sum(0)
        divisor = weights.sum()
        divisor = 1.0 if abs(divisor) < 1e-8 else divisor
    if normalize:
        merged = merged / divisor
    return base + lam * merged


def ref_model_stock(base: Array, models: list[Array], filter_wise: bool = False) -> Array:
    if filter_wise:
        rows = [ref_model_stock(base[i], [m[i] for m in models]) for i in range(base.shape[0])]
        return np.stack(rows)
    offsets = [(m - base).ravel() for m in models]
    cosines = [np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-6)
               for i, a in enumerate(offsets) for b in offsets[i + 1 :]]
    cos = float(np.mean(np.clip(cosines, -1, 1)))
    n = len(models)
    t = n * cos / (1 + (n - 1) * cos)
    return t * sum(models) / n + (1 - t) * base


# ---------------------------------------------------------------------------------- linear


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear(dtype: torch.dtype) -> None:
    _, models = _models(3)
    weights = [0.3, 0.5, 0.2]
    per_model = [{"weight": w} for w in weights]
    _close(_merge("linear", models, None, per_model, {}, dtype), ref_linear(models, weights, True), dtype)
    _close(_merge("linear", models, None, per_model, {"normalize": False}, dtype),
           ref_linear(models, weights, False), dtype)


def test_linear_normalize_makes_weights_relative() -> None:
    _, models = _models(2)
    scaled = _merge("linear", models, None, [{"weight": 2.0}, {"weight": 6.0}], {})
    unit = _merge("linear", models, None, [{"weight": 0.25}, {"weight": 0.75}], {})
    _close(scaled, unit)
    _close(scaled, 0.25 * models[0] + 0.75 * models[1])
    raw = _merge("linear", models, None, [{"weight": 2.0}, {"weight": 6.0}], {"normalize": False})
    _close(raw, 2 * models[0] + 6 * models[1])


def test_linear_rounds_once_from_float32() -> None:
    """bfloat16 inputs: the sum is taken in float32 and rounded once."""
    _, models = _models(3, seed=3)
    per_model = [{"weight": 0.3}, {"weight": 0.3}, {"weight": 0.4}]
    bf16 = [_t(m, torch.bfloat16) for m in models]
    out = get_method("linear").merge(bf16, None, per_model, {})
    exact = ref_linear([m.double().numpy() for m in bf16], [0.3, 0.3, 0.4], True)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, torch.from_numpy(exact).to(torch.float32).to(torch.bfloat16))


# ---------------------------------------------------------------------------------- slerp


@pytest.mark.parametrize("t", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_slerp(t: float, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(1)
    v0, v1 = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    _close(_merge("slerp", [v1], v0, [{}], {"t": t}, dtype), ref_slerp(t, v0, v1), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_slerp_endpoints_are_the_inputs_exactly(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(2)
    v0, v1 = _t(rng.standard_normal((4, 3)), dtype), _t(rng.standard_normal((4, 3)), dtype)
    slerp = get_method("slerp")
    assert torch.equal(slerp.merge([v1], v0, [{}], {"t": 0.0}), v0)
    assert torch.equal(slerp.merge([v1], v0, [{}], {"t": 1.0}), v1)


def test_slerp_falls_back_to_lerp_for_nearly_colinear_vectors() -> None:
    rng = np.random.default_rng(4)
    v0 = rng.standard_normal(50)
    v1 = 3 * v0 + 1e-4 * rng.standard_normal(50)  # cos just below 1: over DOT_THRESHOLD
    out = _merge("slerp", [v1], v0, [{}], {"t": 0.25})
    _close(out, 0.75 * v0 + 0.25 * v1)
    _close(_merge("slerp", [-v0], v0, [{}], {"t": 0.25}), 0.5 * v0)  # opposite: lerp too


def test_slerp_keeps_a_zero_tensor_finite() -> None:
    v1 = np.arange(6.0).reshape(2, 3)
    out = _merge("slerp", [v1], np.zeros((2, 3)), [{}], {"t": 0.5})
    assert np.isfinite(out).all()


# ---------------------------------------------------------------------------------- nuslerp


@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize(("flatten", "row_wise"), [(True, False), (False, False), (False, True)])
def test_nuslerp(with_base: bool, flatten: bool, row_wise: bool) -> None:
    base, (x0, x1) = _models(2, shape=(4, 7), seed=5, spread=0.5)
    weights = [0.4, 1.2]
    out = _merge("nuslerp", [x0, x1], base if with_base else None, [{"weight": w} for w in weights],
                 {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise})
    _close(out, ref_nuslerp(weights, x0, x1, base if with_base else None, flatten=flatten, row_wise=row_wise))


def test_nuslerp_weights_summing_to_zero_take_the_midpoint() -> None:
    base, (x0, x1) = _models(2, seed=6)
    out = _merge("nuslerp", [x0, x1], base, [{"weight": 1.0}, {"weight": -1.0}], {})
    _close(out, ref_nuslerp([1.0, 1.0], x0, x1, base))


# ---------------------------------------------------------------------------------- task arithmetic family


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_task_arithmetic(dtype: torch.dtype) -> None:
    base, models = _models(3)
    per_model = [{"weight": 0.5}, {"weight": 0.3}, {"weight": -0.2}]
    for g in ({}, {"normalize": True}, {"lambda": 0.7}, {"normalize": True, "lambda": 1.5}):
        expected = ref_task_arithmetic_family(base, models, per_model, mask_of=None, elect=False,
                                              normalize=g.get("normalize", False), lam=g.get("lambda", 1.0))
        _close(_merge("task_arithmetic", models, base, per_model, g, dtype), expected, dtype)


@pytest.mark.parametrize("global_params", [{}, {"normalize": False}, {"rescale": True}, {"lambda": 0.5},
                                           {"int8_mask": True}])
def test_ties(global_params: dict) -> None:
    base, models = _models(3, seed=8, spread=0.2)
    per_model = [{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.2}, {"weight": 1.0}]
    expected = ref_task_arithmetic_family(
        base, models, per_model, mask_of=lambda d, p: keep_largest(d, p.get("density", 1.0)), elect=True,
        normalize=global_params.get("normalize", True), rescale=global_params.get("rescale", False),
        lam=global_params.get("lambda", 1.0))
    _close(_merge("ties", models, base, per_model, global_params), expected)


def test_ties_density_keeps_at_least_one_entry() -> None:
    base, (model,) = _models(1, shape=(3, 3), seed=9)
    out = _merge("ties", [model], base, [{"weight": 1.0, "density": 0.01}], {})
    changed = np.flatnonzero(out != base)
    assert changed.tolist() == [int(np.argmax(np.abs(model - base)))]


def test_ties_with_density_one_and_one_sign_is_task_arithmetic() -> None:
    rng = np.random.default_rng(10)
    base = rng.standard_normal((6, 5))
    sign = np.where(rng.standard_normal((6, 5)) >= 0, 1.0, -1.0)
    models = [base + sign * np.abs(rng.standard_normal((6, 5))) for _ in range(3)]  # all deltas agree
    per_model = [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.9}]
    ties = _merge("ties", models, base, per_model, {"normalize": False})
    _close(ties, _merge("task_arithmetic", models, base, per_model, {}))
    ties_norm = _merge("ties", models, base, per_model, {})
    _close(ties_norm, _merge("task_arithmetic", models, base, per_model, {"normalize": True}))


def test_ties_drops_the_minority_sign_where_task_arithmetic_keeps_it() -> None:
    base = np.zeros(3)
    models = [np.array([1.0, 2.0, -1.0]), np.array([-0.5, 1.0, 3.0])]
    per_model = [{"weight": 1.0}, {"weight": 1.0}]
    _close(_merge("ties", models, base, per_model, {"normalize": False}), np.array([1.0, 3.0, 3.0]))
    _close(_merge("task_arithmetic", models, base, per_model, {}), np.array([0.5, 3.0, 2.0]))
    # normalize divides by the weights that agreed: entry 1 had two, the others one.
    _close(_merge("ties", models, base, per_model, {}), np.array([1.0, 1.5, 3.0]))


def test_sign_election_sum_and_count_can_disagree() -> None:
    deltas = torch.tensor([[1.0], [1.0], [-5.0]])
    by_sum = elect_signs(deltas, "sum", torch.float32)
    by_count = elect_signs(deltas, "count", torch.int8)
    assert by_sum[:, 0].tolist() == [False, False, True]
    assert by_count[:, 0].tolist() == [True, True, False]


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("global_params", [{}, {"rescale": True, "normalize": True}])
def test_breadcrumbs(method: str, global_params: dict) -> None:
    base, models = _models(2, shape=(10, 10), seed=11)
    per_model = [{"weight": 0.7, "density": 0.6, "gamma": 0.1}, {"weight": 0.5, "density": 0.95}]
    expected = ref_task_arithmetic_family(
        base, models, per_model,
        mask_of=lambda d, p: keep_middle(d, p.get("density", 1.0), p.get("gamma", 0.01)),
        elect=method == "breadcrumbs_ties", normalize=global_params.get("normalize", False),
        rescale=global_params.get("rescale", False))
    _close(_merge(method, models, base, per_model, global_params), expected)


def test_breadcrumbs_drops_the_outliers() -> None:
    base = np.zeros(10)
    model = np.arange(1.0, 11.0)  # magnitudes 1..10
    out = _merge("breadcrumbs", [model], base, [{"weight": 1.0, "density": 0.5, "gamma": 0.2}], {})
    _close(out, np.where((model >= 4) & (model <= 8), model, 0.0))  # 3 smallest and 2 largest gone
    # density + gamma > 1: fewer outliers go, the density wins.
    out = _merge("breadcrumbs", [model], base, [{"weight": 1.0, "density": 0.9, "gamma": 0.5}], {})
    _close(out, np.where(model <= 9, model, 0.0))


# ---------------------------------------------------------------------------------- model_stock


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock(count: int, filter_wise: bool) -> None:
    base, models = _models(count, shape=(5, 8), seed=12)
    shared = 0.2 * np.random.default_rng(13).standard_normal((5, 8))  # some agreement: cos > 0
    models = [m + shared for m in models]
    out = _merge("model_stock", models, base, [{}] * count, {"filter_wise": filter_wise})
    _close(out, ref_model_stock(base, models, filter_wise))


def test_model_stock_with_two_models_follows_the_angle() -> None:
    base = np.zeros(4)
    same = [np.array([1.0, 2.0, 0.0, 0.0])] * 2
    _close(_merge("model_stock", same, base, [{}, {}], {}), same[0])  # cos 1: t = 1, the average
    orthogonal = [np.array([1.0, 0.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.0, 0.0])]
    _close(_merge("model_stock", orthogonal, base, [{}, {}], {}), base)  # cos 0: t = 0, the base
    opposite = [np.array([1.0, 0.0, 0.0, 0.0]), np.array([-1.0, 0.0, 0.0, 0.0])]
    _close(_merge("model_stock", opposite, base, [{}, {}], {}), base)  # 1 + cos = 0: singular, the base


# ---------------------------------------------------------------------------------- passthrough and graft


def test_passthrough_keeps_shape_and_dtype() -> None:
    x = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    method = get_method("passthrough")
    assert method.merge([x], None, [{}], {}) is x
    scaled = method.merge([x], None, [{"scale": 0.5}], {})
    assert scaled.shape == (3, 4) and scaled.dtype == torch.bfloat16
    assert torch.equal(scaled, x * 0.5)
    ids = torch.arange(4)  # not floating: passed through, like mergekit
    assert method.merge([ids], None, [{}], {}) is ids


def test_graft_takes_the_donor_tensor_unchanged() -> None:
    donor = torch.randn(3, 4, dtype=torch.float16)
    receiving = torch.zeros(3, 4, dtype=torch.float32)
    graft = get_method("graft")
    assert graft.merge([donor], receiving, [{}], {}) is donor  # no promotion to float32
    assert graft.merge([donor], None, [{}], {}) is donor
    with pytest.raises(MethodInputError, match=r"graft: shapes differ: models \[\(3, 4\)\], base \(4, 3\)"):
        graft.merge([donor], torch.zeros(4, 3), [{}], {})


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_linear_a_slice_at_a_time_is_the_whole_tensor_computation_to_the_bit(dtype, monkeypatch):
    """The chunked sum gives the bytes of the plain one (addcmul per model over the whole tensor,
    then the division), on sizes that do not divide into slices, with zeros of both signs,
    infinities and NaN, and with weights that sum to exactly 1 (no division)."""
    import random

    import torch

    from apps.assembly.engine.methods import linear

    monkeypatch.setattr(linear, "CHUNK", 1000)
    dt = getattr(torch, dtype)
    work = torch.float64 if dt == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(7)
    rng = random.Random(7)
    for shape in [(1,), (999,), (1000,), (1001,), (37, 91), (0, 5)]:
        for weights in ([0.41, 0.59], [0.25, 0.75], [1 / 3, -0.5, 2.0], [0.1, 0.2, 0.3, 0.4, 0.5]):
            ts = [(torch.randn(shape, generator=g) * rng.choice([0.02, 1e30])).to(dt) for _ in weights]
            for t in ts:
                flat = t.view(-1)
                if flat.numel() > 8:
                    flat[:4] = torch.tensor([0.0, -0.0, float("inf"), float("nan")], dtype=dt)
            for normalize in (True, False):
                w = torch.tensor([weights], dtype=work)
                total = torch.zeros_like(ts[0], dtype=work)
                for t, wt in zip(ts, w[0].unbind(0), strict=True):
                    total.addcmul_(t, wt)
                if normalize:
                    total.div_(w.sum(dim=1))
                want = total.to(dt)
                got = linear.LINEAR.compute([t.clone() for t in ts], None, [{"weight": x} for x in weights],
                                            {"normalize": normalize}, generator=None)
                assert got.dtype == dt and got.shape == want.shape
                assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)), \
                    (shape, weights, normalize)
