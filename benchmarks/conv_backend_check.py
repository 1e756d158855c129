"""Which kernels the compiled UNet gradient uses: cuDNN on GPU, the im2col kernel gradient on CPU.

``ife_jax.nn.conv`` picks the kernel gradient, and at small maps with many channels the input
gradient, with ``lax.platform_dependent``: XLA's own convolutions (cuDNN's
``convBackwardFilter`` and ``convBackwardInput`` on GPU) everywhere but on CPU. This script
compiles the gradient of a small UNet's loss on the default backend and counts the
convolutions in the optimised HLO; it exits non-zero when the expected kernels are missing.

    python benchmarks/conv_backend_check.py          # in benchmarks/gpu_check.sh on a GPU
"""

from __future__ import annotations

import re
import sys

import jax
import jax.numpy as jnp

from ife_jax.losses import structure_loss
from ife_jax.nn import UNet

#: The UNet's 3x3 convolutions: two per encoder stage (5) and per decoder stage (4).
N_3X3 = 18


def compiled_gradient_hlo() -> str:
    # Large enough that on CPU every 3x3 conv but the first (3 input channels) takes the custom
    # kernel gradient (ife_jax.nn.conv's size rule: >= 32 channels and >= 6e8 FLOPs, here
    # 1.2e9 at every stage), and the 16^2 and 8^2 stages (256-512 channels) the col2im input
    # gradient.
    model = UNet(widths=(32, 64, 128, 256, 512))
    x = jnp.ones((4, 128, 128, 3))
    m = jnp.ones((4, 128, 128, 1))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def loss(params, batch_stats, x, m):
        z, _ = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return structure_loss(z, m)

    grad = jax.jit(jax.grad(loss))
    return grad.lower(variables["params"], variables["batch_stats"], x, m).compile().as_text()


def main() -> int:
    platform = jax.devices()[0].platform
    hlo = compiled_gradient_hlo()
    if platform == "gpu":
        counts = {
            kind: len(re.findall(rf'custom_call_target="__cudnn\$conv{kind}', hlo))
            for kind in ("Forward", "BiasActivationForward", "BackwardInput", "BackwardFilter")
        }
        print(f"cuDNN convolution calls in the compiled UNet gradient: {counts}")
        ok = counts["BackwardFilter"] >= N_3X3
        if not ok:
            print(
                f"FAIL: expected at least {N_3X3} cuDNN kernel-gradient calls (one per 3x3 "
                "conv); the CPU im2col path may have leaked into the GPU program."
            )
        # Every 3x3 conv but the first (whose input, the image, needs no gradient).
        if counts["BackwardInput"] < N_3X3 - 1:
            ok = False
            print(
                f"FAIL: expected at least {N_3X3 - 1} cuDNN input-gradient calls; the CPU "
                "col2im path may have leaked into the GPU program."
            )
    else:
        n = len(re.findall(r" convolution\(", hlo))
        print(f"{platform}: {n} XLA convolutions in the compiled UNet gradient")
        # Forward and input gradient stay XLA convolutions; the kernel gradients do not.
        # (XLA's own path has three per conv: about 3 * 19 with the 1x1 head.)
        ok = N_3X3 <= n <= 2 * (N_3X3 + 1)
        if not ok:
            print(
                f"FAIL: expected at most 2 per conv ({2 * (N_3X3 + 1)}): forward and input "
                "gradient, no kernel-gradient ones."
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
