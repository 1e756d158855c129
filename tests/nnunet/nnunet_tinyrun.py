"""A tiny nnU-Net training in its own process (2-D with IFE entropy, or 3-D without IFE).

    python nnunet_tinyrun.py PREPROCESSED OUTPUT --dump PARAMS.npz [--hang-at EPOCH] [--dims 3]

``--hang-at E`` writes ``OUTPUT/hanging`` and sleeps once epoch ``E`` has run but before it is
checkpointed, so the test can kill the process there.
"""

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from ife_jax.nnunet import plans, training

CONFIGS = {
    dims: plans.ConfigurationPlan(
        configuration="2d" if dims == 2 else "3d_fullres",
        spacing=(1.0,) * dims,
        median_shape=patch,
        patch_size=patch,
        batch_size=2,
        features=(4, 8),
        strides=((1,) * dims, (2,) * dims),
        kernel_sizes=((3,) * dims,) * 2,
        ife_levels=(0,),
        ife_ratios=(0.5,),
    )
    for dims, patch in ((2, (8, 8)), (3, (4, 8, 8)))
}
IFE = {2: "entropy", 3: None}
SCHEDULE = training.Schedule(epochs=3, iterations=2, learning_rate=0.01)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("preprocessed", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--dump", type=Path, required=True)
    p.add_argument("--hang-at", type=int, default=None)
    p.add_argument("--dims", type=int, choices=(2, 3), default=2)
    args = p.parse_args()
    config, ife = CONFIGS[args.dims], IFE[args.dims]

    def log(line):
        print(line, flush=True)
        if args.hang_at is not None and line.startswith(f"epoch {args.hang_at}:"):
            (args.output / "hanging").write_text("")
            time.sleep(600)

    names = sorted(f.stem for f in args.preprocessed.glob("*.npz"))
    losses = training.train(
        preprocessed=args.preprocessed,
        output=args.output,
        config=config,
        case_names=names,
        schedule=SCHEDULE,
        ife=ife,
        log=log,
    )
    params = training.load_params(args.output, training.make_model(config, ife), config)
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree.leaves_with_path(params)}
    np.savez(args.dump, losses=np.asarray(losses), **flat)


if __name__ == "__main__":
    main()
