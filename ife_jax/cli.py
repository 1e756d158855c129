"""The ``ife-jax`` command line. It only parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    import ife_jax

    key = jax.random.key(args.seed)
    x = jax.nn.relu(jax.random.normal(key, (2, 56, 56, 16), jnp.float32))
    for criterion in ("curvature", "entropy"):
        out, idx = ife_jax.enhance(x, criterion=criterion, ratio=0.5, return_indices=True)
        kept = idx[0].tolist()
        print(f"{criterion:>9}: {tuple(x.shape)} -> {tuple(out.shape)}; sample 0 keeps {kept}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ife-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the built-in demonstration")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
