"""One CPU train step of the reference UNet: PyTorch against ife-jax (plain and +E), in one run.

The step is forward, structure loss, backward, global-norm clipping at 1.0 and Adam, at
batch 4, 224 x 224, float32, for both frameworks on the same machine in the same process.
PyTorch runs a module of the reference architecture written here (31,043,521 parameters,
asserted) with ``--threads`` intra-op threads; ife-jax runs its own train step
(``ife_jax.train``) on one CPU device. Then a per-convolution table (forward, input gradient,
kernel gradient) of the UNet's convolutions in PyTorch, in XLA's own convolution and in
``ife_jax.nn.conv``, so the next bottleneck is visible. The train steps run in ``--runs``
interleaved rounds (each round one step of every model, after a warm-up round), so a machine
whose speed drifts during the run slows them alike; the table gives each model's best and
median step, the ratio of the bests and the median (range) of the per-round ratios. The
convolutions are timed by their minimum over ``--conv-runs``; compare ratios within one run.

    python benchmarks/cpu_vs_torch.py
    python benchmarks/cpu_vs_torch.py --models UNet --no-conv-table --precision bfloat16

Without torch installed the PyTorch columns are skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ife_jax.nn.conv import ConvTranspose, conv_general_dilated
from ife_jax.train.config import TrainConfig
from ife_jax.train.models import build_model
from ife_jax.train.sharding import make_mesh, shard_batch
from ife_jax.train.state import abstract_train_state, initialize, make_optimizer, state_shardings
from ife_jax.train.step import jit_train_step, make_train_step

try:
    import torch
    from vs_torch import TorchUNet  # the reference UNet and loss in PyTorch, shared with
    from vs_torch import structure_loss as torch_structure_loss  # the GPU comparison
except ImportError:  # the PyTorch columns are skipped
    torch = None

UNET_PARAMS = 31_043_521
WIDTHS = (64, 128, 256, 512, 1024)
NHWC = ("NHWC", "HWIO", "NHWC")


def best_of(fn, runs: int, warmup: int = 1) -> float:
    """Minimum wall time in seconds of ``fn()`` over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def batch(size: int, batch_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 3) ** 2 < (size / 4) ** 2).astype(np.float32)
    return {
        "image": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
        "mask": np.broadcast_to(disc[None, :, :, None], (batch_size, size, size, 1)).copy(),
    }


# --- PyTorch -------------------------------------------------------------------------------


def torch_step(data, args):
    """PyTorch's train step of the reference UNet, as a function of no arguments."""
    torch.manual_seed(0)
    model = TorchUNet()
    n = sum(p.numel() for p in model.parameters())
    assert n == UNET_PARAMS, f"the PyTorch UNet has {n:,} parameters, not {UNET_PARAMS:,}"
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.from_numpy(data["image"]).permute(0, 3, 1, 2).contiguous()
    m = torch.from_numpy(data["mask"]).permute(0, 3, 1, 2).contiguous()
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch_structure_loss(model(x), m)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


# --- ife-jax -------------------------------------------------------------------------------


def jax_step(ife, data, args):
    """(ife-jax's compiled train step for UNet with ``ife`` as a function of no arguments,
    compile seconds)."""
    config = TrainConfig(
        model="unet", ife=ife, precision=args.precision, batch_size=args.batch_size
    )
    model = build_model(config)
    tx = make_optimizer(config, 100)
    mesh = make_mesh()
    abstract, init = abstract_train_state(model, tx, (1, args.size, args.size, 3))
    shardings = state_shardings(abstract, mesh)
    state = initialize(init, jax.random.key(0), shardings)
    if ife is None:
        n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
        assert n == UNET_PARAMS, f"the ife-jax UNet has {n:,} parameters, not {UNET_PARAMS:,}"
    step = jit_train_step(make_train_step(model, tx, base_key=jax.random.key(1)), shardings, mesh)
    b = shard_batch(data, mesh)
    t = time.perf_counter()
    compiled = step.lower(state, b).compile()
    compile_s = time.perf_counter() - t
    box = [state]

    def run():
        box[0], metrics = compiled(box[0], b)
        jax.block_until_ready(metrics)

    return run, compile_s


def interleaved(steps: dict, runs: int) -> dict[str, list[float]]:
    """Seconds of each step over ``runs`` rounds, every round calling every step once (after
    one warm-up round), so that a machine whose speed drifts slows all of them alike."""
    for fn in steps.values():
        fn()
    times = {name: [] for name in steps}
    for _ in range(runs):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


# --- per-convolution table -----------------------------------------------------------------


def conv_cases(size):
    """(name, H, Cin, Cout, kind) of the UNet's distinct convolutions at input ``size``."""
    cases = [(f"3x3 {c}->{c} @{size >> i}", size >> i, c, c, "3x3") for i, c in enumerate(WIDTHS)]
    cases += [
        (
            f"up 2x2 {WIDTHS[k + 1]}->{WIDTHS[k]} @{size >> (k + 1)}",
            size >> (k + 1),
            WIDTHS[k + 1],
            WIDTHS[k],
            "up",
        )
        for k in (3, 0)
    ]
    return cases


def jax_conv_times(h, cin, cout, kind, args, fast: bool) -> list[float]:
    rng = np.random.default_rng(0)
    b = args.batch_size
    x = jnp.asarray(rng.normal(size=(b, h, h, cin)), jnp.float32)
    if kind == "3x3":
        w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.05, jnp.float32)
        conv = conv_general_dilated if fast else lax.conv_general_dilated

        def f(x, w):
            return conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
    else:
        w = jnp.asarray(rng.normal(size=(2, 2, cin, cout)) * 0.05, jnp.float32)
        if fast:
            layer = ConvTranspose(cout, (2, 2), strides=(2, 2), use_bias=False)
        else:
            import flax.linen as nn

            layer = nn.ConvTranspose(cout, (2, 2), strides=(2, 2), use_bias=False)

        def f(x, w):
            return layer.apply({"params": {"kernel": w}}, x)

    y = f(x, w)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    fwd = jax.jit(f)
    dx = jax.jit(lambda x, w: jax.vjp(lambda x_: f(x_, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w: jax.vjp(lambda w_: f(x, w_), w)[1](g)[0])
    return [
        best_of(lambda fn=fn: fn(x, w).block_until_ready(), args.conv_runs) for fn in (fwd, dx, dw)
    ]


def torch_conv_times(h, cin, cout, kind, args) -> list[float]:
    f = torch.nn.functional
    b = args.batch_size
    x = torch.randn(b, cin, h, h)
    if kind == "3x3":
        w = torch.randn(cout, cin, 3, 3) * 0.05

        def conv(x, w):
            return f.conv2d(x, w, padding=1)
    else:
        w = torch.randn(cin, cout, 2, 2) * 0.05

        def conv(x, w):
            return f.conv_transpose2d(x, w, stride=2)

    g = torch.randn_like(conv(x, w))
    xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            conv(x, w)

    def dx():
        torch.autograd.grad(conv(xg, w), xg, g)

    def dw():
        torch.autograd.grad(conv(x, wg), wg, g)

    # The gradient columns include a forward pass (PyTorch's autograd needs one); it is
    # subtracted so that the columns compare with XLA's.
    t_fwd = best_of(fwd, args.conv_runs)
    return [t_fwd, best_of(dx, args.conv_runs) - t_fwd, best_of(dw, args.conv_runs) - t_fwd]


def conv_table(args) -> None:
    cols = ["fwd", "dx", "dW"]
    head = f"{'convolution (batch ' + str(args.batch_size) + ')':<26}"
    head += "".join(f"{'torch ' + c:>10}" for c in cols) if torch else ""
    head += "".join(f"{'xla ' + c:>10}" for c in cols)
    head += "".join(f"{'ife ' + c:>10}" for c in cols)
    print("\nper convolution, ms (torch dx/dW: autograd time minus its forward)")
    print(head)
    for name, h, cin, cout, kind in conv_cases(args.size):
        row = torch_conv_times(h, cin, cout, kind, args) if torch else []
        row += jax_conv_times(h, cin, cout, kind, args, fast=False)
        row += jax_conv_times(h, cin, cout, kind, args, fast=True)
        print(f"{name:<26}" + "".join(f"{1e3 * t:>10.1f}" for t in row), flush=True)


def _per_round(times: list[float], ref: list[float]) -> str:
    """The median (and range) over rounds of each round's ratio of ``times`` to ``ref``."""
    r = [a / b for a, b in zip(times, ref, strict=True)]
    return f"{np.median(r):.3f}x ({min(r):.2f}-{max(r):.2f})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="UNet,UNet+E", help="UNet and/or UNet+E")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="PyTorch intra-op threads (default: all cores)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--conv-runs", type=int, default=5)
    parser.add_argument("--no-conv-table", dest="conv_table", action="store_false")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    args = parser.parse_args(argv)
    global torch
    if args.no_torch:
        torch = None
    if torch is None:
        print("note: PyTorch is not installed (or --no-torch): its columns are skipped.")
    else:
        torch.set_num_threads(args.threads)
    print(
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, batch {args.batch_size}, "
        f"{args.size}x{args.size}, {args.precision}, {args.runs} interleaved rounds"
        + (f", torch {torch.__version__} on {args.threads} threads" if torch else "")
    )
    data = batch(args.size, args.batch_size)
    steps, compile_s = {}, {}
    if torch is not None:
        steps["PyTorch UNet"] = torch_step(data, args)
    for name in args.models.split(","):
        ife = {"UNet": None, "UNet+E": "entropy"}[name]
        steps[f"ife-jax {name}"], compile_s[f"ife-jax {name}"] = jax_step(ife, data, args)
    times = interleaved(steps, args.runs)
    print(
        f"{'train step':<20}{'best s':>8}{'median s':>10}{'vs torch':>10}{'rounds vs torch':>26}"
        f"{'rounds vs UNet':>26}{'compile s':>11}"
    )
    ref, plain = times.get("PyTorch UNet"), times.get("ife-jax UNet")
    for name, t in times.items():
        ratio = f"{min(t) / min(ref):.2f}x" if ref else "-"
        per_round = _per_round(t, ref) if ref else "-"
        # IFE's cost: each round's UNet+E step over the same round's UNet step.
        vs_plain = _per_round(t, plain) if plain and name == "ife-jax UNet+E" else "-"
        c = compile_s.get(name)
        print(
            f"{name:<20}{min(t):>8.2f}{np.median(t):>10.2f}{ratio:>10}{per_round:>26}"
            f"{vs_plain:>26}{(f'{c:.0f}' if c else '-'):>11}",
            flush=True,
        )
    if args.conv_table:
        conv_table(args)


if __name__ == "__main__":
    main()
