"""The ``ife-jax`` command line. It only parses arguments and calls the library.

Commands: ``train``, ``compare``, ``evaluate``, ``predict``, ``plan``, ``build-dataset`` and
``demo``; ``ife-jax COMMAND --help`` describes each. Bad arguments (a value, a file, a flag)
print one line on stderr and exit with status 2; other failures print one line and exit with
status 1.
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from ife_jax.ops._checks import CRITERIA


class UsageError(Exception):
    """A bad command-line argument; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line instead of usage + message
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _ife(text: str) -> str:
    if text in ("none", "None", ""):
        return "none"
    if text not in CRITERIA:
        raise argparse.ArgumentTypeError(f"must be none, curvature or entropy, got {text!r}")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _variants(text: str) -> tuple[str, ...]:
    from ife_jax.train.compare import parse_variants

    items = tuple(t.strip() for t in text.split(",") if t.strip())
    # "unet+e@0.75,0.5" holds a comma: a number after a comma continues the previous ratios.
    merged: list[str] = []
    for item in items:
        if merged and "@" in merged[-1] and item.replace(".", "", 1).isdigit():
            merged[-1] += "," + item
        else:
            merged.append(item)
    try:
        parse_variants(merged)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return tuple(merged)


# Command-line flag -> TrainConfig field.
_OVERRIDES = {
    "model": "model",
    "ife": "ife",
    "ratios": "ratios",
    "widths": None,
    "dataset": "dataset",
    "data_dir": "data_dir",
    "batch_size": "batch_size",
    "epochs": "epochs",
    "optimizer": "optimizer",
    "learning_rate": "learning_rate",
    "lr_schedule": "lr_schedule",
    "train_sizes": "train_sizes",
    "augment": "augment",
    "eval_size": "eval_size",
    "precision": "precision",
    "seed": "seed",
    "eval_every": "eval_every_epochs",
    "checkpoint_every": "checkpoint_every_steps",
    "checkpoint_every_epochs": "checkpoint_every_epochs",
    "keep": "keep_checkpoints",
    "max_train_examples": "max_train_examples",
    "max_eval_examples": "max_eval_examples",
    "num_workers": "num_workers",
    "precise_bn": "precise_bn_examples",
    "pretrained_backbone": "pretrained_backbone",
}


def _train_config(args):
    from ife_jax.train.config import TrainConfig, preset

    if args.config:
        try:
            with open(args.config) as f:
                config = TrainConfig.from_json(f.read())
        except (OSError, ValueError) as err:  # missing, unreadable, not JSON, bad fields
            why = getattr(err, "strerror", None) or err
            raise ValueError(f"--config {args.config}: {why}") from None
    elif args.preset:
        config = preset(args.preset)
    else:
        # --model M --ife X without --ratios reproduces Table 1's M+X row.
        name = args.model or "unet"
        ife = getattr(args, "ife", None)
        config = preset(f"{name}+{ife[0]}" if ife not in (None, "none") else name)
    changes = {}
    for flag, field in _OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if flag == "widths":
            changes["model_kwargs"] = {**config.model_kwargs, "widths": value}
        elif flag == "ife":
            changes["ife"] = None if value == "none" else value
        else:
            changes[field] = value
    return config.replace(**changes)


def _train(args) -> int:
    from ife_jax.train.loop import train_and_evaluate

    config = _train_config(args)
    train_and_evaluate(config, args.workdir, progress=not args.no_progress)
    return 0


def _evaluate(args) -> int:
    from ife_jax.metrics.report import format_table
    from ife_jax.train.evaluate import CONVENTIONS, evaluate

    result = evaluate(
        args.workdir,
        split=args.split,
        checkpoint=args.checkpoint,
        max_examples=args.max_examples,
        output=args.output,
    )
    for convention in CONVENTIONS:
        print(f"{convention} convention, {result['n']} images, checkpoint step {result['step']}")
        print(format_table(result["records"][convention]) + "\n")
    print(f"report written to {result['output']}")
    return 0


def _predict(args) -> int:
    from ife_jax.train.predict import check_arguments, predict
    from ife_jax.train.workdir import check_directory, check_writable_folder

    check_arguments(args.images, args.output, args.threshold)  # before any file is touched
    check_directory(args.workdir, must_exist=True)
    check_writable_folder(args.output, what="--output")

    written = predict(
        args.workdir,
        args.images,
        args.output,
        checkpoint=args.checkpoint,
        threshold=args.threshold,
    )
    print(f"wrote {len(written)} masks and overlays to {args.output}")
    return 0


def _plan(args) -> int:
    from ife_jax.nnunet.image_plans import format_plan, make_plan

    kwargs = {"memory_gb": args.memory_gb} if args.memory_gb else {}
    plan = make_plan(
        args.dataset,
        split=args.split,
        data_dir=args.data_dir,
        limit=args.max_examples,
        **kwargs,
    )
    print(format_plan(plan))
    if args.output:
        plan.save(args.output)
        print(f"plan written to {args.output}")
    return 0


def _build_dataset(args) -> int:
    import tfds_cosmos

    builder = tfds_cosmos.build(
        args.name,
        data_dir=args.data_dir,
        manual_dir=args.manual_dir,
        skip_invalid=args.skip_invalid,
        overwrite=args.overwrite,
        anatomy=args.anatomy,
        split_by=args.split_by,
        **({"name": args.dataset_name} if args.dataset_name else {}),
    )
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    print(f"{builder.info.full_name} in {builder.data_dir}: {splits}")
    return 0


def _compare(args) -> int:
    from ife_jax.train.compare import compare

    config = _train_config(args)
    result = compare(
        config,
        args.variants,
        args.output,
        seeds=args.seeds,
        progress=not args.no_progress,
        jobs=args.jobs,
    )
    print("\n" + result["text"]["standard"])
    print(f"report (both conventions, seeds.csv, comparison.png) in {result['report']}")
    return 0


def _demo(args) -> int:
    from ife_jax.train.demo import run_demo

    run_demo(
        args.output,
        epochs=args.epochs,
        seeds=args.seeds,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        jobs=args.jobs,
    )
    return 0


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a training run (``train`` and ``compare``): those that make a
    ``TrainConfig``, and ``--no-progress``."""
    p.add_argument(
        "--preset",
        help="unet, deeplabv3plus, sinetv2, nnunet, each also as NAME+c or NAME+e (Table 1's "
        "IFE rows), tiny or demo (default: the --model's reference recipe, with --ife the "
        "ratios of its Table 1 row)",
    )
    p.add_argument("--config", help="a config.json to start from instead of a preset")
    p.add_argument("--model", choices=("unet", "deeplabv3plus", "sinetv2", "nnunet"))
    p.add_argument("--ife", type=_ife, help="none, curvature or entropy")
    p.add_argument(
        "--ratios", type=_floats, help="IFE ratios, shallow to deep, e.g. 0.75,0 (0: no IFE there)"
    )
    p.add_argument("--widths", type=_ints, help="UNet widths, e.g. 8,16,32,64,128")
    p.add_argument("--dataset", help="e.g. synthetic/small, cosmos55k, dmis_folder/NAME")
    p.add_argument("--data-dir", help="TFDS data directory")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--optimizer", choices=("adam", "sgd"), help="default adam")
    p.add_argument("--learning-rate", type=float)
    p.add_argument(
        "--lr-schedule",
        choices=("step", "cosine"),
        help="step: the reference's step decay (default); cosine: annealed to 0 over the run",
    )
    p.add_argument("--train-sizes", type=_ints, help="e.g. 224,256,288,320,352,384")
    p.add_argument(
        "--augment",
        choices=("reference", "no_rotation", "none"),
        help="training augmentation: reference (default: intensity, flips, rotation up to 90 "
        "degrees), no_rotation (the same without the rotation) or none (padding and resize)",
    )
    p.add_argument("--eval-size", type=int)
    p.add_argument("--precision", choices=("float32", "bfloat16"))
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-every", type=int, help="validate every N epochs")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    p.add_argument(
        "--checkpoint-every-epochs",
        type=int,
        help="checkpoint at the end of every N epochs and of the last (default 1)",
    )
    p.add_argument("--keep", type=int, help="recent checkpoints to keep")
    p.add_argument("--max-train-examples", type=int)
    p.add_argument("--max-eval-examples", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument(
        "--precise-bn",
        type=int,
        metavar="N",
        help="before each validation, recompute the BatchNorm statistics exactly over the first "
        "N training images (0: keep the running averages)",
    )
    p.add_argument(
        "--pretrained-backbone",
        metavar="PATH",
        help="start the backbone from this state dict (.safetensors, .npz or .pth): "
        "torchvision ResNet-50/101 for deeplabv3plus, Res2Net-50 v1b for sinetv2",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _nnunet(args) -> int:
    from ife_jax.nnunet import run

    dirs = dict(raw=args.raw)
    if args.action == "plan":
        plans = run.plan(
            args.dataset,
            preprocessed=args.preprocessed,
            foreground=args.foreground,
            memory_gb=args.memory_gb,
            **dirs,
        )
        print(run.format_plans(plans))
    elif args.action == "preprocess":
        names = run.preprocess(args.dataset, tuple(args.c), preprocessed=args.preprocessed, **dirs)
        print(f"preprocessed {len(names)} case(s): {', '.join(names)}")
    elif args.action == "train":
        from ife_jax.nnunet.training import TINY, Schedule

        base = TINY if args.tiny else Schedule()
        schedule = Schedule(
            epochs=args.epochs or base.epochs,
            iterations=args.iterations or base.iterations,
            seed=args.seed,
        )
        run.train_fold(
            args.dataset,
            args.configuration,
            args.fold,
            ife=args.ife,
            schedule=schedule,
            preprocessed=args.preprocessed,
            results=args.results,
            **dirs,
        )
    elif args.action == "predict":
        run.predict(
            args.i,
            args.o,
            args.d,
            args.c,
            args.f,
            ife=args.ife,
            mirror=not args.disable_tta,
            step=args.step_size,
            results=args.results,
            **dirs,
        )
    else:
        rows = run.evaluate(args.predictions, args.references)
        for r in rows:
            print(
                f"{r['case']}: Dice {r['dice']:.4f}  IoU {r['iou']:.4f}  HD95 {r['hd95']:.4g}  "
                f"ASSD {r['assd']:.4g}  volume {r['volume_pred']:.4g} "
                f"(reference {r['volume_ref']:.4g})"
            )
        if rows:
            print(f"mean Dice {sum(r['dice'] for r in rows) / len(rows):.4f} over {len(rows)}")
    return 0


def _add_nnunet(add) -> None:
    p = add(
        "nnunet",
        help="nnU-Net: plan, preprocess, train, predict, evaluate",
        description="The self-configuring nnU-Net method (2d and 3d_fullres) with optional IFE. "
        "Folders: --raw / $nnUNet_raw, --preprocessed / $nnUNet_preprocessed, --results / "
        "$nnUNet_results (default ./nnUNet_*).",
    )
    sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    folders = argparse.ArgumentParser(add_help=False)
    folders.add_argument("--raw", help="folder of raw datasets (default $nnUNet_raw)")
    folders.add_argument("--preprocessed", help="default $nnUNet_preprocessed")
    folders.add_argument("--results", help="default $nnUNet_results")
    folders.add_argument("--debug", action="store_true", help="show tracebacks of errors")

    q = sub.add_parser("plan", parents=[folders], help="fingerprint and plan a dataset")
    q.add_argument("dataset", help="a raw dataset folder, DatasetXXX_Name or XXX")
    q.add_argument("--foreground", help="label names or values that make the foreground")
    q.add_argument("--memory-gb", type=float, default=8.0, help="accelerator memory (8)")
    q = sub.add_parser("preprocess", parents=[folders], help="cache preprocessed cases")
    q.add_argument("dataset")
    q.add_argument("-c", nargs="+", default=["2d", "3d_fullres"], choices=("2d", "3d_fullres"))
    q = sub.add_parser("train", parents=[folders], help="train one fold (resumes)")
    q.add_argument("dataset")
    q.add_argument("configuration", choices=("2d", "3d_fullres"))
    q.add_argument("fold", help="0-4 or all")
    q.add_argument("--ife", choices=("curvature", "entropy"))
    q.add_argument("--epochs", type=int, help="default 1000 (2 with --tiny)")
    q.add_argument("--iterations", type=int, help="steps per epoch, default 250 (3 with --tiny)")
    q.add_argument("--tiny", action="store_true", help="a few steps, for smoke tests")
    q.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("predict", parents=[folders], help="segment a folder of cases")
    q.add_argument("-i", required=True, help="input folder (CASE_0000.nii.gz ... or PNG)")
    q.add_argument("-o", required=True, help="output folder")
    q.add_argument("-d", required=True, help="dataset")
    q.add_argument("-c", required=True, choices=("2d", "3d_fullres"))
    q.add_argument("-f", required=True, help="fold")
    q.add_argument("--ife", choices=("curvature", "entropy"))
    q.add_argument("--disable-tta", action="store_true", help="no mirroring")
    q.add_argument("--step-size", type=float, default=0.5)
    q = sub.add_parser(
        "evaluate", parents=[folders], help="Dice, IoU, HD95, ASSD and volumes per case"
    )
    q.add_argument("predictions")
    q.add_argument("references")
    p.set_defaults(func=_nnunet)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ife-jax",
        description="Dichotomous medical image segmentation with Instructive Feature Enhancement "
        "(IFE): build datasets, train, compare variants over seeds, evaluate with the nine "
        "metrics, predict. New here? Run 'ife-jax demo'. 'ife-jax COMMAND --help' describes "
        "each command; --debug shows tracebacks of errors.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")

    def add(name, **kwargs):
        return sub.add_parser(name, parents=[common], **kwargs)

    p = add(
        "train",
        help="train a network (resumes from WORKDIR)",
        description="Train a network, with or without IFE; rerun with the same "
        "--workdir to resume after a crash.",
    )
    p.add_argument("--workdir", required=True, help="run directory (checkpoints, logs, figures)")
    _add_config_flags(p)
    p.set_defaults(func=_train)

    p = add(
        "compare",
        help="train variants x seeds and compare them over seeds",
        description="Train each variant (e.g. unet,unet+c,unet+e@0.75,0.5; the first is the "
        "baseline) with --seeds seeds, each run in OUTPUT/VARIANT/seedS (a rerun resumes "
        "unfinished runs and skips finished ones), and write a report with mean ± std over "
        "seeds and paired t-tests over seeds. The configuration flags set everything but the "
        "network, IFE and ratios, which come from the variants.",
    )
    p.add_argument(
        "--variants",
        type=_variants,
        required=True,
        help="comma-separated NET[+c|+e][@R1,R2,...], e.g. unet,unet+c,unet+e",
    )
    p.add_argument("--seeds", type=int, default=3, help="runs per variant (default 3)")
    p.add_argument("--output", required=True, help="folder of the runs and the report")
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="runs trained at once, each in its own process on its share of the CPU cores, or "
        "sharing all of them when there are more runs than cores (default 1; small networks on "
        "a CPU: one per core)",
    )
    _add_config_flags(p)
    p.set_defaults(func=_compare)

    p = add(
        "evaluate",
        help="evaluate a trained run (nine metrics, both conventions)",
        description="Evaluate a run at the original image sizes and write the report and figures.",
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    p.add_argument("--max-examples", type=int)
    p.add_argument("--output", help="report folder (default WORKDIR/eval_SPLIT)")
    p.set_defaults(func=_evaluate)

    p = add(
        "predict",
        help="segment PNG/JPEG files with a trained run",
        description="Write NAME_mask.png and NAME_overlay.png for every image.",
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("images", nargs="+", help="image files")
    p.set_defaults(func=_predict)

    p = add(
        "plan",
        help="print the nnUNet plan for a dataset",
        description="Fingerprint a dataset (a TFDS name or a folder of X.png/X_mask.png "
        "pairs) and print its 2-D nnU-Net plan; `train --model nnunet` makes the same plan "
        "from its training split and keeps it as WORKDIR/plan.json.",
    )
    p.add_argument("dataset", help="e.g. synthetic/small, cosmos55k or a folder of pairs")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="train")
    p.add_argument("--max-examples", type=int, help="fingerprint only the first N examples")
    p.add_argument("--memory-gb", type=float, help="accelerator memory budget (default 8)")
    p.add_argument("--output", help="also write the plan as JSON to this file")
    p.set_defaults(func=_plan)

    p = add(
        "build-dataset",
        help="build a TFDS dataset (synthetic, cosmos55k, folder)",
        description="Build synthetic[/CONFIG], cosmos55k (--manual-dir) or a "
        "folder of image/mask pairs as a TFDS dataset.",
    )
    p.add_argument("name", help="synthetic[/default|small|tiny], cosmos55k or a folder path")
    p.add_argument("--data-dir")
    p.add_argument("--manual-dir", help="the assembled Cosmos55k folder")
    p.add_argument("--skip-invalid", action="store_true")
    p.add_argument(
        "--anatomy", help="a folder: keep only this structure (e.g. Kidney), one binary task"
    )
    p.add_argument(
        "--split-by",
        choices=("hash", "slices"),
        default="hash",
        help="a folder without split files: hashed ids (default) or contiguous slice ranges "
        "per volume (train, val, test in slice order; for slices of volumes)",
    )
    p.add_argument("--dataset-name", help="a folder: the dataset name (default from the folder)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_build_dataset)

    p = add(
        "demo",
        help="compare UNet, UNet+C and UNet+E over 3 seeds on synthetic data",
        description="Builds a small synthetic dataset, trains UNet, UNet+C and UNet+E "
        "(narrow networks, small images) with 3 seeds each (the demo preset's budget: 10 "
        "epochs, cosine schedule), prints the comparison over seeds and whether each run "
        "converged (a rerun resumes).",
    )
    p.add_argument("--output", default="ife_jax_demo", help="folder (default ./ife_jax_demo)")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs per run (default: the demo preset's)"
    )
    p.add_argument("--seeds", type=int, default=3, help="runs per variant (default 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--data-dir", help="TFDS data directory (default OUTPUT/tfds)")
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        help="runs trained at once (default: one per CPU core, at most 4, on a CPU)",
    )
    p.set_defaults(func=_demo)
    _add_nnunet(add)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 1000 else text[:1000] + " ..."


def main(argv: list[str] | None = None) -> int:
    """Runs a command; a failure prints one line on stderr (the traceback only with
    ``--debug``) and returns 2 for bad input (a value, a file, a flag) or 1 otherwise."""
    from ife_jax.train.checkpointing import UnreadableCheckpointsError
    from ife_jax.train.workdir import WorkdirLockedError

    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    except Exception as err:
        if args is not None and args.debug:
            raise
        bad_input = (ValueError, OSError, WorkdirLockedError, UnreadableCheckpointsError)
        if isinstance(err, FloatingPointError) or not isinstance(err, bad_input):
            print(
                f"ife-jax: error: {type(err).__name__}: {_one_line(err)} "
                "(rerun with --debug for the traceback)",
                file=sys.stderr,
            )
            return 1
        print(f"ife-jax: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
