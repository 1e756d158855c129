"""The ``ife-jax`` command line: bad arguments, and train -> evaluate -> predict end to end."""

import subprocess
import sys

import numpy as np
import pytest
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
        (["train", "--workdir", "w", "--batch-size", "0"], "batch_size"),
        (["evaluate", "--workdir", "does/not/exist"], "no training run"),
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


def test_train_evaluate_predict_end_to_end(tmp_path, capsys):
    data, run = str(tmp_path / "tfds"), str(tmp_path / "run")
    assert main(["build-dataset", "synthetic/tiny", "--data-dir", data]) == 0
    assert (
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--data-dir",
                data,
                "--workdir",
                run,
                "--train-sizes",
                "32",
                "--epochs",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "run" / "best").is_dir() and (tmp_path / "run" / "curves.png").exists()
    image = np.asarray(Image.open(tmp_path / "run" / "curves.png").convert("RGB"))[:50, :70]
    Image.fromarray(image).save(tmp_path / "photo.jpg")
    assert (
        main(
            [
                "predict",
                "--workdir",
                run,
                "--output",
                str(tmp_path / "pred"),
                str(tmp_path / "photo.jpg"),
            ]
        )
        == 0
    )
    mask = np.asarray(Image.open(tmp_path / "pred" / "photo_mask.png"))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "pred" / "photo_overlay.png").exists()
    pytest.importorskip("ife_jax.metrics")
    assert main(["evaluate", "--workdir", run, "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "paper convention" in out and "standard convention" in out
    report = tmp_path / "run" / "eval_test"
    assert (report / "per_image_standard.csv").exists() and (report / "summary.json").exists()
