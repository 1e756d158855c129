"""Time the segmentation networks with and without IFE on the local device.

Prints, per model, IFE criterion and compute dtype: parameters, forward and training-step
(forward + backward + Adam) time per image, the FLOPs XLA's cost analysis counts for each
compiled program and the achieved GFLOP/s, and the IFE overhead as a ratio to the plain model.
Times are medians of ``--repeats`` runs after one warm-up call, with ``block_until_ready``.

    python benchmarks/models.py                      # everything, 224 x 224, batch 8
    python benchmarks/models.py --models unet --ife none,entropy --dtypes bfloat16 --repeats 3

Adding a network is one entry in ``MODELS``: a function ``(ife, dtype) -> flax module``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ife_jax.losses import structure_loss
from ife_jax.nn import DeepLabV3Plus, NNUNet, SINetV2, UNet
from ife_jax.nnunet.image_plans import ChannelIntensity, Fingerprint, plan_from_fingerprint

#: The 2-D nnU-Net plan of a dataset of 1000 RGB 224 x 224 images (6 stages, widths 32-512);
#: the network runs on any size divisible by its total stride (32).
NNUNET_PLAN = plan_from_fingerprint(
    Fingerprint(
        num_images=1000,
        num_channels=3,
        median_shape=(224, 224),
        min_shape=(224, 224),
        max_shape=(224, 224),
        foreground_fraction=0.2,
        intensity=(ChannelIntensity(0.0, 1.0, -3.0, 3.0, -2.5, 2.5),) * 3,
    )
)

MODELS = {
    "unet": lambda ife, dtype: UNet(ife=ife, dtype=dtype),
    "deeplabv3plus": lambda ife, dtype: DeepLabV3Plus(ife=ife, dtype=dtype),
    "sinetv2": lambda ife, dtype: SINetV2(ife=ife, dtype=dtype),
    "nnunet": lambda ife, dtype: NNUNet(NNUNET_PLAN, ife=ife, dtype=dtype),
}


def random_variables(model, shape, seed=0):
    """He-normal kernels filled in NumPy (no ``init`` compile needed for timing)."""
    abstract = jax.eval_shape(
        model.init, jax.random.key(0, impl="rbg"), jax.ShapeDtypeStruct(shape, jnp.float32)
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0, std, leaf.shape), leaf.dtype)
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def timed(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(name, ife, dtype, *, batch, size, repeats):
    model = MODELS[name](ife, dtype)
    shape = (batch, size, size, 3)
    variables = random_variables(model, shape)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    yy, xx = np.mgrid[:size, :size]
    mask = ((yy - size / 2) ** 2 + (xx - size / 2.5) ** 2 < (size / 4) ** 2).astype(np.float32)
    masks = jnp.broadcast_to(jnp.asarray(mask)[None, :, :, None], (batch, size, size, 1))
    tx = optax.adam(1e-4)
    params, stats = variables["params"], variables.get("batch_stats", {})
    opt = tx.init(params)
    dropout = jax.random.key(0, impl="rbg")

    def forward(variables, x):
        return model.apply(variables, x, train=False)

    def step(params, stats, opt, x, masks):
        def loss_fn(p):
            out, upd = model.apply(
                {"params": p, "batch_stats": stats},
                x,
                train=True,
                rngs={"dropout": dropout},
                mutable=["batch_stats"],
            )
            outs = out if isinstance(out, tuple | list) else (out,)
            weights = getattr(model, "output_weights", None) or (1.0,) * len(outs)
            loss = sum(
                w * structure_loss(o, jax.image.resize(masks, (*o.shape[:3], 1), "bilinear"))
                for w, o in zip(weights, outs, strict=True)
            )
            return loss, upd["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt, loss

    fwd = jax.jit(forward).lower(variables, x).compile()
    stp = jax.jit(step).lower(params, stats, opt, x, masks).compile()
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    t_fwd = timed(fwd, (variables, x), repeats)
    t_step = timed(stp, (params, stats, opt, x, masks), repeats)
    return {
        "params": n_params,
        "fwd": t_fwd,
        "fwd_gflops": flops(fwd) / t_fwd / 1e9,
        "step": t_step,
        "step_gflops": flops(stp) / t_step / 1e9,
        "step_tflop": flops(stp) / 1e12,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated MODELS keys")
    p.add_argument("--ife", default="none,curvature,entropy")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    dev = jax.devices()[0]
    print(f"device: {dev.platform} {dev.device_kind}; batch {args.batch}, {args.size}x{args.size}, "
          f"median of {args.repeats} after warm-up; times per image unless marked")  # fmt: skip
    header = (
        f"{'model':<14}{'ife':<11}{'dtype':<10}{'params':>12}{'fwd s/img':>11}{'GFLOP/s':>9}"
        f"{'step s':>9}{'s/img':>8}{'TFLOP':>7}{'GFLOP/s':>9}{'overhead':>10}"
    )
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        for dtype_name in args.dtypes.split(","):
            dtype = jnp.dtype(dtype_name).type
            base = None
            for ife_name in args.ife.split(","):
                ife = None if ife_name == "none" else ife_name
                r = bench(name, ife, dtype, batch=args.batch, size=args.size,
                          repeats=args.repeats)  # fmt: skip
                if ife is None:
                    base = r["step"]
                ratio = f"{r['step'] / base:.3f}x" if base else "-"
                print(
                    f"{name:<14}{ife_name:<11}{dtype_name:<10}{r['params']:>12,}"
                    f"{r['fwd'] / args.batch:>11.3f}{r['fwd_gflops']:>9.0f}{r['step']:>9.2f}"
                    f"{r['step'] / args.batch:>8.3f}{r['step_tflop']:>7.2f}"
                    f"{r['step_gflops']:>9.0f}{ratio:>10}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
