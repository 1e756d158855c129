"""Network variables for the tests without compiling ``init``: abstract variables, parameter
counts, and variables drawn in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np


def key(i=0):
    # rbg keys compile far faster than the default threefry ones on CPU.
    return jax.random.key(i, impl="rbg")


def abstract_variables(model, shape):
    """``model.init``'s variables for a float32 input of ``shape``, as shapes only."""
    return jax.eval_shape(model.init, key(), jax.ShapeDtypeStruct(shape, jnp.float32))


def count(tree) -> int:
    """The number of values in a tree of arrays (or of shapes)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def n_params(model, shape) -> int:
    return count(abstract_variables(model, shape)["params"])


def identity_norm(name, leaf, rng):
    """Normalisation scales and variances 1, everything else but kernels 0."""
    return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)


def random_variables(model, shape, other=identity_norm, seed=0):
    """Variables with ``model``'s structure for an input of ``shape``: He-normal kernels and
    ``other(name, leaf, rng)`` for every other leaf, drawn in tree order from one NumPy
    generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape), leaf.dtype)
        return other(name, leaf, rng)

    return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, shape))


def adam_step(model, variables, x, masks, **apply_kwargs):
    """A jitted training step (Adam, learning rate 1e-2, structure loss, BatchNorm statistics
    held at ``variables``'), ``step(params, opt) -> (params, opt, loss, intermediates)``, and
    its initial optimiser state."""
    import optax

    from ife_jax.losses import structure_loss

    tx = optax.adam(1e-2)
    stats = variables["batch_stats"]

    @jax.jit
    def step(params, opt):
        def loss_fn(p):
            logits, inter = model.apply(
                {"params": p, "batch_stats": stats}, x, train=True,
                mutable=["batch_stats", "intermediates"], capture_intermediates=True,
                **apply_kwargs,
            )  # fmt: skip
            return structure_loss(logits, masks), inter["intermediates"]

        (loss, inter), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss, inter

    return step, tx.init(variables["params"])
