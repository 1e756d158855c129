"""The ``ife-jax`` command line: bad arguments, and train -> evaluate -> predict end to end."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from _subprocess import run_cli
from PIL import Image

from ife_jax.cli import main


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train"], "--workdir"),
        (["train", "--workdir", "w", "--precision", "float16"], "--precision"),
        (["train", "--workdir", "w", "--ratios", "0.5,x"], "--ratios"),
        (["train", "--workdir", "w", "--ratios", "0.5,1.5"], "ratios"),
        (["train", "--workdir", "w", "--ife", "sharpness"], "--ife"),
        (["train", "--workdir", "w", "--optimizer", "lion"], "--optimizer"),
        (["plan", "synthetic/tiny", "--max-examples", "x"], "--max-examples"),
        (["train", "--workdir", "w", "--batch-size", "0"], "batch_size"),
        (["evaluate", "--workdir", "does/not/exist"], "no training run"),
        (["train", "--workdir", "w", "--learning-rate", "nan"], "learning_rate=nan"),
        (["train", "--workdir", "w", "--learning-rate", "inf"], "learning_rate=inf"),
        (["train", "--workdir", "w", "--learning-rate=-1e-3"], "learning_rate=-0.001"),
        (["train", "--workdir", "w", "--config", "does/not/exist.json"], "does/not/exist.json"),
        (["fly"], "invalid choice"),
        ([], "command"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err


def test_bad_arguments_in_a_fresh_process():
    out = subprocess.run(
        [sys.executable, "-m", "ife_jax.cli", "train", "--epochs", "two", "--workdir", "w"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "--epochs" in out.stderr


@pytest.mark.parametrize(
    "command", ["train", "evaluate", "predict", "plan", "build-dataset", "demo"]
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: ife-jax " + command in capsys.readouterr().out


def test_train_evaluate_predict_end_to_end(tmp_path, capsys, train_env):
    data, run = str(tmp_path / "tfds"), str(tmp_path / "run")
    assert main(["build-dataset", "synthetic/tiny", "--data-dir", data]) == 0
    plan_file = tmp_path / "plan.json"
    assert main(["plan", "synthetic/tiny", "--data-dir", data, "--output", str(plan_file)]) == 0
    assert "nnU-Net 2-D plan" in capsys.readouterr().out
    from ife_jax.nnunet.image_plans import NNUNetPlan

    plan = NNUNetPlan.load(plan_file)
    assert plan.in_channels == 3 and plan.num_images == 16  # the 16 RGB training images
    # Training runs in a fresh process with the shared compilation cache (the network and
    # optimiser of tinyrun.py, so the compiled step is shared with the training tests).
    train = [
        *("train --preset tiny --train-sizes 32 --ife curvature --optimizer sgd").split(),
        *("--max-train-examples 16 --epochs 2 --no-progress").split(),
        *("--data-dir", data, "--workdir", run),
    ]
    out = run_cli(train, train_env())
    assert "done: 8 steps" in out.stdout
    assert (tmp_path / "run" / "best").is_dir() and (tmp_path / "run" / "curves.png").exists()

    image = np.asarray(Image.open(tmp_path / "run" / "curves.png").convert("RGB"))[:50, :70]
    Image.fromarray(image).save(tmp_path / "photo.jpg")
    pred = str(tmp_path / "pred")
    assert main(["predict", "--workdir", run, "--output", pred, str(tmp_path / "photo.jpg")]) == 0
    mask = np.asarray(Image.open(tmp_path / "pred" / "photo_mask.png"))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "pred" / "photo_overlay.png").exists()

    assert main(["evaluate", "--workdir", run, "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "paper convention, 8 images" in out and "standard convention, 8 images" in out
    assert "UNet+C" in out
    report = tmp_path / "run" / "eval_test"
    for convention in ("standard", "paper"):
        folder = report / convention
        rows = (folder / "per_image.csv").read_text().splitlines()
        assert len(rows) == 1 + 8 and "UNet+C" in rows[1]
        text = (folder / "summary.txt").read_text()
        assert "By modality" in text and "By anatomy" in text and "Empty-mask cases" in text
        assert (folder / "dsc_by_group.png").exists() and (folder / "overlays.png").exists()
    summary = json.loads((report / "summary.json").read_text())
    assert summary["n"] == 8 and 0.0 <= summary["standard"]["dsc"]["mean"] <= 1.0


def test_every_cli_failure_is_one_line_naming_the_file_or_flag(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    bad_type = tmp_path / "bad_type.json"
    bad_type.write_text(json.dumps({"batch_size": "4"}))
    not_json = tmp_path / "not_json.json"
    not_json.write_text('{"batch_size": ')
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    plans = tmp_path / "plans"
    plans.mkdir()
    for name, size in (("a", 40), ("b", 48)):
        Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(plans / f"{name}.png")
        Image.fromarray(np.zeros((size, size), np.uint8)).save(plans / f"{name}_mask.png")
    truncated = (plans / "b.png").read_bytes()
    (plans / "b.png").write_bytes(truncated[: len(truncated) // 2])
    empty = tmp_path / "empty"
    shutil.copytree(plans, empty)
    (empty / "b.png").unlink()
    (empty / "a.png").write_bytes(b"")
    cases = [
        (["train", "--workdir", str(a_file)], f"workdir {a_file} is a file"),
        (["evaluate", "--workdir", str(a_file)], f"workdir {a_file} is a file"),
        (["predict", "--workdir", str(a_file), "--output", "o", "x.png"], "is a file"),
        (["train", "--workdir", "w", "--config", str(bad_type)], "batch_size='4'"),
        (["train", "--workdir", "w", "--config", str(not_json)], str(not_json)),
        (["predict", "--workdir", str(run), "--output", str(a_file), "x.png"], "--output"),
        (["evaluate", "--workdir", str(run), "--output", str(a_file / "r")], str(a_file)),
        (["plan", str(plans)], f"{plans / 'b.png'}: cannot decode image"),
        (["plan", str(empty)], f"{empty / 'a.png'}: cannot decode image"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, (argv, err)
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a_file", "bad_type.json", "not_json.json", "run", "plans", "empty"]
    )


def test_debug_shows_the_traceback(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        main(["evaluate", "--debug", "--workdir", str(a_file)])


@pytest.mark.parametrize(
    "argv, ife, ratios",
    [
        (["--model", "unet", "--ife", "curvature"], "curvature", (0.75, 0.5)),  # Table 1 UNet+C
        (["--model", "unet", "--ife", "entropy"], "entropy", (0.5, 0.5)),
        (["--model", "deeplabv3plus", "--ife", "entropy"], "entropy", (0.75, 0.0)),
        (["--model", "deeplabv3plus", "--ife", "curvature", "--ratios", "0.75,0"], "curvature",
         (0.75, 0.0)),
        (["--preset", "unet+c", "--ratios", "0.5,0.5"], "curvature", (0.5, 0.5)),
        (["--model", "sinetv2"], None, None),
        (["--model", "unet", "--ife", "none"], None, None),
    ],
)  # fmt: skip
def test_train_flags_resolve_to_the_table1_configuration(argv, ife, ratios):
    from ife_jax.cli import _train_config, build_parser

    config = _train_config(build_parser().parse_args(["train", "--workdir", "w", *argv]))
    assert (config.ife, config.ratios) == (ife, ratios)


def test_precise_bn_flag_sets_the_config_field_and_is_checked():
    from ife_jax.cli import _train_config, build_parser

    parse = build_parser().parse_args
    config = _train_config(
        parse(["train", "--workdir", "w", "--preset", "demo", "--precise-bn", "32"])
    )
    assert config.precise_bn_examples == 32
    assert _train_config(parse(["train", "--workdir", "w"])).precise_bn_examples == 0
    with pytest.raises(ValueError, match="precise_bn_examples=2: must be 0"):
        _train_config(parse(["train", "--workdir", "w", "--preset", "demo", "--precise-bn", "2"]))


def test_augment_flag_sets_the_config_field():
    from ife_jax.cli import UsageError, _train_config, build_parser
    from ife_jax.data.transforms import AUGMENTATIONS

    parser = build_parser()
    parse = parser.parse_args
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    flag = next(a for a in train._actions if a.dest == "augment")
    assert tuple(flag.choices) == tuple(AUGMENTATIONS)  # the flag offers every named one
    assert _train_config(parse(["train", "--workdir", "w"])).augment == "reference"
    assert _train_config(parse(["train", "--workdir", "w", "--preset", "demo"])).augment == (
        "no_rotation"
    )
    config = _train_config(parse(["train", "--workdir", "w", "--augment", "none"]))
    assert config.augment == "none"
    with pytest.raises(UsageError, match="--augment: invalid choice: 'rotate'"):
        parse(["train", "--workdir", "w", "--augment", "rotate"])
