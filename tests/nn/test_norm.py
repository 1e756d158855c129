"""ife_jax.nn.norm.BatchNorm: Flax's variables and outputs, gradients against float64.

Error model for the gradients: each per-channel sum of N float32 terms is off by at most about
N * eps * (sum of |terms|) (worst case, any summation order), and the batch variance
E[x^2] - E[x]^2 loses a further factor E[x^2] / var to cancellation, which carries into x_hat.
The closed form dx = (gamma r / N)(N g - sum g - x_hat sum(g x_hat)) is a few roundings more,
so |dx - dx64| <= (N + 10) * eps * (E[x^2] / var) * (gamma r / N)(N |g| + sum |g| + |x_hat|
sum |g x_hat|) per element; a wrong formula is off by O(1) of that scale.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ife_jax.nn.norm import BATCH_MOMENTS, BatchNorm, batch_norm_train

SHAPES = [(2, 5, 7, 3), (1, 4, 4, 1), (2, 3, 4, 5, 2), (3, 6)]
EPS32 = float(np.finfo(np.float32).eps)


def data(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 1.0, size=shape).astype(np.float32)
    scale = rng.normal(1.0, 0.3, size=shape[-1:]).astype(np.float32)
    bias = rng.normal(size=shape[-1:]).astype(np.float32)
    ra_mean = rng.normal(size=shape[-1:]).astype(np.float32)
    ra_var = rng.uniform(0.5, 2.0, size=shape[-1:]).astype(np.float32)
    return x, {"scale": scale, "bias": bias}, {"mean": ra_mean, "var": ra_var}


def both(train, **kw):
    common = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5, **kw)
    return BatchNorm(**common), nn.BatchNorm(**common)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_outputs_and_running_averages_equal_flax(shape, train, jit):
    x, params, stats = data(shape)
    ours, flax_bn = both(train)
    variables = {"params": params, "batch_stats": stats}

    def apply(module):
        fn = lambda v, x_: module.apply(v, x_, mutable=["batch_stats"])  # noqa: E731
        return (jax.jit(fn) if jit else fn)(variables, x)

    (y, new), (y_ref, new_ref) = apply(ours), apply(flax_bn)
    np.testing.assert_array_equal(y, y_ref)
    jax.tree.map(np.testing.assert_array_equal, new, new_ref)


def test_same_variables_as_flax_and_bfloat16_output():
    x = jnp.asarray(data((2, 4, 4, 3))[0], jnp.bfloat16)
    ours, flax_bn = both(True, dtype=jnp.bfloat16)
    v, v_ref = ours.init(jax.random.key(0), x), flax_bn.init(jax.random.key(0), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), v) == jax.tree.map(
        lambda a: (a.shape, a.dtype), v_ref
    )
    jax.tree.map(np.testing.assert_array_equal, v, v_ref)
    y = ours.apply(v, x, mutable=["batch_stats"])[0]
    y_ref = flax_bn.apply(v_ref, x, mutable=["batch_stats"])[0]
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, y_ref)


def float64_grads(x, scale, bias, r, a, b):
    """Flax's BatchNorm differentiated by JAX in float64, for L = sum(y r) + a.mean + b.var."""
    with jax.enable_x64(True):
        bn = nn.BatchNorm(use_running_average=False, momentum=0.0, epsilon=1e-5)
        stats = {"mean": np.zeros_like(bias, np.float64), "var": np.ones_like(bias, np.float64)}

        def loss(x_, s_, b_):
            y, new = bn.apply(
                {"params": {"scale": s_, "bias": b_}, "batch_stats": stats},
                x_,
                mutable=["batch_stats"],
            )
            new = new["batch_stats"]  # momentum 0: the batch mean and variance themselves
            return jnp.sum(y * r) + jnp.sum(new["mean"] * a) + jnp.sum(new["var"] * b)

        args = [np.asarray(v, np.float64) for v in (x, scale, bias)]
        return [np.asarray(g) for g in jax.grad(loss, argnums=(0, 1, 2))(*args)]


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_float64_within_the_error_model(shape):
    x, params, _ = data(shape, seed=1)
    rng = np.random.default_rng(2)
    r = rng.normal(size=shape).astype(np.float32)
    a, b = (rng.normal(size=shape[-1:]).astype(np.float32) for _ in range(2))

    def loss(x_, s_, b_):
        y, mean, var = batch_norm_train(x_, s_, b_, jnp.float32(1e-5))
        return jnp.sum(y * r) + jnp.sum(mean * a) + jnp.sum(var * b)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, params["scale"], params["bias"])
    ref = float64_grads(x, params["scale"], params["bias"], r, a, b)

    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    x64, r64 = x.astype(np.float64), r.astype(np.float64)
    var = x64.var(axes)
    rstd = 1 / np.sqrt(var + 1e-5)
    xhat = (x64 - x64.mean(axes)) * rstd
    cancel = (x64**2).mean(axes) / var
    sum_g, sum_gx = np.abs(r64).sum(axes), np.abs(r64 * xhat).sum(axes)
    term_x = np.abs(params["scale"]) * rstd / n * (n * np.abs(r64) + sum_g + np.abs(xhat) * sum_gx)
    term_x += (np.abs(a) + 2 * np.abs(b) * np.abs(x64 - x64.mean(axes))) / n
    bounds = [term_x, sum_gx, sum_g]
    for got, want, mag in zip(grads, ref, bounds, strict=True):
        tol = (n + 10) * EPS32 * cancel * mag
        assert np.all(np.abs(np.asarray(got, np.float64) - want) <= tol), np.max(
            np.abs(got - want) / tol
        )


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_batch_moments_are_the_batch_statistics_and_only_on_request(shape):
    x, params, stats = data(shape, seed=3)
    bn = BatchNorm(momentum=0.9)
    variables = {"params": params, "batch_stats": stats}
    _, moments = bn.apply(variables, x, mutable=["batch_stats", BATCH_MOMENTS])
    moments = moments[BATCH_MOMENTS]
    axes = tuple(range(x.ndim - 1))
    # The same float32 statistics the running averages are updated with (momentum 0.9 here).
    _, updated = bn.apply(variables, x, mutable=["batch_stats"])
    for name in ("mean", "var"):
        want = (updated["batch_stats"][name] - 0.9 * stats[name]) / 0.1
        np.testing.assert_allclose(moments[name], want, rtol=1e-5, atol=1e-5 * x.std())
    np.testing.assert_allclose(moments["mean"], x.astype(np.float64).mean(axes), rtol=1e-5)
    np.testing.assert_allclose(moments["var"], x.astype(np.float64).var(axes), rtol=1e-5)
    assert BATCH_MOMENTS not in updated  # not reported unless the collection is mutable
    # Evaluation mode has no batch to report.
    _, out = BatchNorm(use_running_average=True).apply(variables, x, mutable=[BATCH_MOMENTS])
    assert not out.get(BATCH_MOMENTS)


def test_initialisation_creates_no_batch_moments():
    x = data((2, 4, 4, 3))[0]
    assert set(BatchNorm().init(jax.random.key(0), x)) == {"params", "batch_stats"}
