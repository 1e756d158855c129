"""The train step's dropout key is an argument of the compiled program, not a constant in it."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ife_jax.train.compare import shared_compilation_cache
from ife_jax.train.sharding import make_mesh
from ife_jax.train.state import abstract_train_state, initialize, state_shardings
from ife_jax.train.step import jit_train_step, make_train_step


class _DropoutNet(nn.Module):
    """A 1x1 convolution, BatchNorm and dropout: the smallest net whose step uses the key."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(4, (1, 1))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Conv(1, (1, 1))(x)


def _setup(size=8):
    model, tx = _DropoutNet(), optax.adam(1e-2)
    mesh = make_mesh()
    abstract, init = abstract_train_state(model, tx, (1, size, size, 3))
    shardings = state_shardings(abstract, mesh)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32),
        "mask": jnp.asarray(rng.random((2, size, size, 1)) > 0.5, jnp.float32),
    }
    return model, tx, mesh, shardings, lambda: initialize(init, jax.random.key(0), shardings), batch


def test_runs_differing_only_in_the_seed_lower_to_one_program():
    model, tx, mesh, shardings, fresh, batch = _setup()
    state = fresh()
    steps = [
        jit_train_step(make_train_step(model, tx, base_key=jax.random.key(s)), shardings, mesh)
        for s in (1, 2)
    ]
    texts = [step.lower(state, batch).as_text() for step in steps]
    assert texts[0] == texts[1]
    # ... and yet each run draws its own dropout noise.
    losses = [float(step(fresh(), batch)[1]["loss"]) for step in steps]
    assert losses[0] != losses[1]


def test_the_bound_key_step_is_the_closed_over_key_step_bit_for_bit():
    """Two jitted steps of the bound-key step equal two jitted steps of the same computation
    with the key closed over (as a constant): the dropout draws are those of
    ``fold_in(base_key, step)``. (Unjitted, op by op, rounding differs from the fused program
    by an ulp, whichever way the key is given.)"""
    model, tx, mesh, shardings, fresh, batch = _setup()
    key = jax.random.key(7)
    step = make_train_step(model, tx, base_key=key)
    closed = jax.jit(lambda s, b: step.fn(s, b, key))
    bound = jit_train_step(step, shardings, mesh)
    a, b = fresh(), fresh()
    for _ in range(2):
        a, ma = closed(a, batch)
        b, mb = bound(b, batch)
    for x, y in zip(jax.tree.leaves((a, ma)), jax.tree.leaves((b, mb)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_shared_cache_compiles_a_second_seed_from_the_first(no_compilation_cache):
    model, tx, mesh, shardings, fresh, batch = _setup(size=12)  # a size no other test compiles
    hits = []

    def listen(event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.monitoring.register_event_listener(listen)
    try:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        with shared_compilation_cache():
            folder = jax.config.jax_compilation_cache_dir
            for seed in (1, 2):
                step = make_train_step(model, tx, base_key=jax.random.key(seed))
                jit_train_step(step, shardings, mesh).lower(fresh(), batch).compile()
                assert len(hits) == seed - 1  # the first compiles, the second is loaded
    finally:
        jax.monitoring.unregister_event_listener(listen)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before)
    assert jax.config.jax_compilation_cache_dir is None
    assert folder is not None and not os.path.exists(folder)
