"""A tiny 2-D nnU-Net training in its own process (for the resume-after-SIGKILL test).

    python nnunet_tinyrun.py PREPROCESSED OUTPUT --dump PARAMS.npz [--hang-at EPOCH]

``--hang-at E`` writes ``OUTPUT/hanging`` and sleeps once epoch ``E`` has run but before it is
checkpointed, so the test can kill the process there.
"""

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from ife_jax.nnunet import plans, training

CONFIG = plans.ConfigurationPlan(
    configuration="2d",
    spacing=(1.0, 1.0),
    median_shape=(8, 8),
    patch_size=(8, 8),
    batch_size=2,
    features=(4, 8),
    strides=((1, 1), (2, 2)),
    kernel_sizes=((3, 3), (3, 3)),
    ife_levels=(0,),
    ife_ratios=(0.5,),
)
SCHEDULE = training.Schedule(epochs=3, iterations=2, learning_rate=0.01)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("preprocessed", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--dump", type=Path, required=True)
    p.add_argument("--hang-at", type=int, default=None)
    args = p.parse_args()

    def log(line):
        print(line, flush=True)
        if args.hang_at is not None and line.startswith(f"epoch {args.hang_at}:"):
            (args.output / "hanging").write_text("")
            time.sleep(600)

    names = sorted(f.stem for f in args.preprocessed.glob("*.npz"))
    losses = training.train(
        preprocessed=args.preprocessed,
        output=args.output,
        config=CONFIG,
        case_names=names,
        schedule=SCHEDULE,
        ife="entropy",
        log=log,
    )
    params = training.load_params(args.output, training.make_model(CONFIG, "entropy"), CONFIG)
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree.leaves_with_path(params)}
    np.savez(args.dump, losses=np.asarray(losses), **flat)


if __name__ == "__main__":
    main()
