"""Train-step throughput of ife-jax's UNet against the same UNet in PyTorch, on one device.

PyTorch: the reference UNet architecture (3x3 conv with bias + BN + ReLU twice per stage,
widths 64..1024, 2x2 max-pool, 2x2 stride-2 transposed conv, skip concatenation, 1x1 head;
31,043,521 parameters, checked at start), channels_last, bf16 autocast, Adam, the structure
loss; eager and ``torch.compile`` (the latter in a child process with a time limit, skipped
with a note when it does not finish). ife-jax: UNet, UNet+C and UNet+E, bf16 compute with
float32 parameters, through ``benchmarks/train.py``'s device-only path. One table: images/s,
step ms, MFU, peak device memory and the ratio to the best PyTorch configuration.

    python benchmarks/vs_torch.py --peak-tflops 989          # H100 / H200, batch 32, 224 x 224
    python benchmarks/vs_torch.py --quick                    # CPU smoke run, tiny widths
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

REFERENCE_PARAMS = 31_043_521
WIDTHS = (64, 128, 256, 512, 1024)


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TorchUNet(nn.Module):
    """The reference UNet without IFE: five double-conv stages down, four up, a 1x1 head."""

    def __init__(self, widths=WIDTHS, in_channels=3, num_classes=1):
        super().__init__()
        ins = (in_channels, *widths[:-1])
        self.down = nn.ModuleList(
            double_conv(cin, cout) for cin, cout in zip(ins, widths, strict=True)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
            for i in reversed(range(len(widths) - 1))
        )
        self.dec = nn.ModuleList(
            double_conv(2 * widths[i], widths[i]) for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


def structure_loss(logits, masks):
    """BCE + weighted IoU with w = 1 + 5 |avgpool31(m) - m| (zero padding counted)."""
    z, m = logits.float(), masks.float()
    w = 1 + 5 * (F.avg_pool2d(m, 31, stride=1, padding=15, count_include_pad=True) - m).abs()
    bce = F.binary_cross_entropy_with_logits(z, m, reduction="none").mean(dim=(1, 2, 3))
    p = torch.sigmoid(z)
    inter = (p * m * w).sum(dim=(1, 2, 3))
    union = ((p + m) * w).sum(dim=(1, 2, 3))
    return (bce + 1 - (inter + 1) / (union - inter + 1)).mean()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_reference_size() -> None:
    """The full-width model must have the reference's parameter count."""
    with torch.device("meta"):
        n = parameter_count(TorchUNet())
    if n != REFERENCE_PARAMS:
        raise SystemExit(f"PyTorch UNet has {n:,} parameters, not the reference's 31,043,521.")


def _batch(args, device):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch_size, 3, args.size, args.size, generator=g)
    mask = (torch.rand(args.batch_size, 1, args.size, args.size, generator=g) > 0.5).float()
    fmt = torch.channels_last
    return image.to(device, memory_format=fmt), mask.to(device, memory_format=fmt)


def torch_bench(args, compiled: bool) -> dict:
    """Median step time of a bf16-autocast Adam step of the PyTorch UNet."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = TorchUNet(tuple(args.widths)).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    image, mask = _batch(args, device)

    def step(image, mask):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = structure_loss(model(image), mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    flops = _torch_flops(model, image, mask, device)
    run = torch.compile(step) if compiled else step
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(image, mask)
    sync()
    first_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        run(image, mask)
    sync()
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        run(image, mask)
        sync()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {
        "name": "PyTorch compile" if compiled else "PyTorch eager",
        "images_s": args.batch_size / median,
        "step_s": median,
        "compile_s": first_s,
        "flops": flops,
        "peak_bytes": peak,
    }


def _torch_flops(model, image, mask, device) -> float:
    """FLOPs of one forward and backward pass, counted by PyTorch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16):
        structure_loss(model(image), mask).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def torch_compile_in_child(args) -> dict | str:
    """``torch.compile`` in a child process, so that a compile past its time share is cut off."""
    cmd = [sys.executable, __file__, "--torch-compile-only", *_forwarded(args)]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.compile_timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return f"torch.compile skipped: not done within {args.compile_timeout:.0f} s"
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"torch.compile failed: {tail[0][:200]}"
    return json.loads(lines[-1])


def _forwarded(args) -> list[str]:
    return [
        f"--batch-size={args.batch_size}",
        f"--size={args.size}",
        f"--runs={args.runs}",
        f"--warmup={args.warmup}",
        f"--widths={','.join(map(str, args.widths))}",
    ]


def jax_bench(args) -> list[dict]:
    """UNet, UNet+C, UNet+E through benchmarks/train.py's device-only path, bf16 compute."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import train as jax_train

    from ife_jax.train.sharding import make_mesh

    ns = argparse.Namespace(
        size=args.size,
        batch_size=args.batch_size,
        precision="bfloat16",
        widths=list(args.widths) if tuple(args.widths) != WIDTHS else None,
        device_only=True,
        runs=args.runs,
        warmup=args.warmup,
    )
    mesh = make_mesh()
    return [jax_train.bench(name, ns, mesh) for name in args.jax_models.split(",")]


def print_table(rows: list[dict], notes: list[str], peak_tflops: float | None) -> None:
    torch_rows = [r for r in rows if r["name"].startswith("PyTorch")]
    best = max(torch_rows, key=lambda r: r["images_s"]) if torch_rows else None
    print(
        f"{'config':<17}{'images/s':>10}{'step ms':>10}{'MFU':>8}{'peak GiB':>10}"
        f"{'first s':>9}{'vs best PyTorch':>17}"
    )
    for r in rows:
        mfu = (
            f"{100 * r['flops'] / r['step_s'] / 1e12 / peak_tflops:.1f}%"
            if peak_tflops and r["flops"]
            else "-"
        )
        peak = f"{r['peak_bytes'] / 2**30:.2f}" if r["peak_bytes"] is not None else "-"
        ratio = f"{r['images_s'] / best['images_s']:.2f}x" if best else "-"
        print(
            f"{r['name']:<17}{r['images_s']:>10.1f}{1e3 * r['step_s']:>10.2f}{mfu:>8}"
            f"{peak:>10}{r['compile_s']:>9.1f}{ratio:>17}"
        )
    for note in notes:
        print(f"note: {note}")
    print(
        "MFU from each framework's own FLOP count (PyTorch's counter; XLA's lowered HLO); "
        "peak memory: PyTorch's allocator peak, XLA's compiled step (arguments + outputs + "
        "temporaries); 'first s' is the first step, compilation included."
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--widths", type=lambda s: [int(x) for x in s.split(",")], default=list(WIDTHS)
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak (H100/H200: 989)")
    parser.add_argument("--jax-models", default="UNet,UNet+C,UNet+E")
    parser.add_argument("--compile-timeout", type=float, default=180.0)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--quick", action="store_true", help="tiny CPU run: batch 2, 32 x 32, widths 8..128"
    )
    parser.add_argument("--torch-compile-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.size, args.widths = 2, 32, [8, 16, 32, 64, 128]
        args.runs, args.warmup = 2, 1
    if args.torch_compile_only:
        print(json.dumps(torch_bench(args, compiled=True)))
        return
    check_reference_size()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"PyTorch {torch.__version__} on {device}; batch {args.batch_size}, "
        f"{args.size}x{args.size}, widths {','.join(map(str, args.widths))}, bf16, "
        f"median of {args.runs}"
    )
    rows, notes = [torch_bench(args, compiled=False)], []
    if args.no_compile:
        notes.append("torch.compile not run (--no-compile)")
    else:
        result = torch_compile_in_child(args)
        if isinstance(result, str):
            notes.append(result)
        else:
            rows.append(result)
    jax_rows = jax_bench(args)
    import jax
    import train as jax_train

    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}")
    print_table(rows + jax_rows, notes, args.peak_tflops)
    print()
    jax_train.print_table(jax_rows, args.peak_tflops)


if __name__ == "__main__":
    main()
