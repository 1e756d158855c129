"""``compare``: variant strings, seed-level statistics against scipy and a hand-worked example,
a comparison that resumes after being killed, and runs trained in worker processes."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

from ife_jax.cli import main
from ife_jax.metrics import METRIC_KEYS
from ife_jax.train import compare as compare_module
from ife_jax.train.compare import (
    compare_variants,
    format_report,
    paired_seed_test,
    parse_variant,
    seed_records,
    verdict,
)


@pytest.mark.parametrize(
    "text, name, model, ife, ratios",
    [
        ("unet", "UNet", "unet", None, None),
        ("unet+c", "UNet+C", "unet", "curvature", (0.75, 0.5)),  # Table 1's ratios
        ("UNet+E", "UNet+E", "unet", "entropy", (0.5, 0.5)),
        ("unet+e@0.75,0.5", "UNet+E@0.75,0.5", "unet", "entropy", (0.75, 0.5)),
        ("deeplabv3plus+c", "DeepLabV3+" + "+C", "deeplabv3plus", "curvature", (0.75, 0.0)),
    ],
)
def test_variant_strings(text, name, model, ife, ratios):
    v = parse_variant(text)
    assert (v.name, v.model, v.ife, v.ratios) == (name, model, ife, ratios)
    assert "+" not in v.folder and "@" not in v.folder and "," not in v.folder


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("unet+x", "expected NET"),
        ("resnet", "unknown network 'resnet'"),
        ("unet@0.5", "ratios need +c or +e"),
        ("unet+c@0.5,1.5", "[0, 1]"),
        ("unet+c@a", "ratios must be numbers"),
    ],
)
def test_bad_variant_strings_are_named(text, fragment):
    with pytest.raises(ValueError, match=r"variant '.*'") as err:
        parse_variant(text)
    assert text in str(err.value) and fragment in str(err.value)


@pytest.mark.parametrize(
    "variants, named", [("unet,unet+q", "unet+q"), ("unet,unet+e@0.5,2", "unet+e@0.5,2")]
)
def test_a_bad_variant_is_a_one_line_cli_error_naming_it(variants, named, capsys, tmp_path):
    argv = ["compare", "--variants", variants, "--output", str(tmp_path / "c")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"'{named}'" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def _records(model, dsc_by_image, *, groups):
    """Per-image records with the given DSC; every other metric = DSC / 2."""
    return [
        {"image_id": f"i{i}", "modality": m, "anatomy": a, "model": model, "empty_case": "none",
         **{k: (d if k == "dsc" else d / 2) for k in METRIC_KEYS}}
        for i, (d, (m, a)) in enumerate(zip(dsc_by_image, groups, strict=True))
    ]  # fmt: skip


GROUPS = [("CT", "Kidney"), ("CT", "Liver"), ("MR", "Kidney"), ("MR", "Liver")]
# Per-image DSC of each run (rows: seeds 0, 1, 2; columns: the four images).
BASE = [[0.8, 0.6, 0.7, 0.9], [0.7, 0.7, 0.8, 0.8], [0.9, 0.5, 0.6, 0.8]]
IFE = [[0.9, 0.7, 0.7, 0.9], [0.8, 0.7, 0.9, 0.8], [0.9, 0.6, 0.6, 0.9]]


def _runs():
    return {
        name: {s: _records(name, values[s], groups=GROUPS) for s in range(3)}
        for name, values in (("UNet", BASE), ("UNet+E", IFE))
    }


def test_seed_statistics_by_hand():
    # Seed means: UNet 0.75, 0.75, 0.70; UNet+E 0.80, 0.80, 0.75: differences 0.05 each.
    (rec,) = seed_records(_runs()["UNet"][2], model="UNet", seed=2)["all"]
    assert rec["dsc"] == pytest.approx(0.70, abs=1e-12) and rec["hd"] == pytest.approx(0.35)
    rows = compare_variants(_runs(), "UNet", "UNet+E")
    (row,) = rows
    assert row["n"] == 3 and row["diff"] == pytest.approx(0.05, abs=1e-12)
    # Every difference is 0.05: sd 0, the interval collapses to it, p = 0.
    assert row["ci_low"] == pytest.approx(0.05) and row["ci_high"] == pytest.approx(0.05)
    assert row["p"] == 0.0
    # Per anatomy: Kidney (images 0, 2) seed means UNet 0.75, 0.75, 0.75; UNet+E 0.80, 0.85, 0.75
    # -> differences 0.05, 0.10, 0.00: mean 0.05, sd 0.05, se 0.05/sqrt(3), t = sqrt(3).
    kidney = next(r for r in compare_variants(_runs(), "UNet", "UNet+E", by="anatomy")
                  if r["group"] == "Kidney")  # fmt: skip
    assert kidney["diff"] == pytest.approx(0.05)
    assert kidney["t"] == pytest.approx(math.sqrt(3))
    half = 4.302652729911275 * 0.05 / math.sqrt(3)  # t_{0.975, 2} from a printed t table
    assert kidney["ci_low"] == pytest.approx(0.05 - half) and kidney["ci_high"] == pytest.approx(
        0.05 + half
    )
    assert kidney["p"] == pytest.approx(stats.ttest_rel([0.80, 0.85, 0.75], [0.75] * 3).pvalue)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_paired_seed_test_against_scipy(n):
    rng = np.random.default_rng(n)
    a, b = rng.uniform(0.6, 0.9, n), rng.uniform(0.6, 0.9, n)
    got = paired_seed_test(a, b)
    ref = stats.ttest_rel(b, a)
    # The interval of scipy's TtestResult (scipy >= 1.10) is the mean difference's.
    ci = ref.confidence_interval(0.95)
    assert got["t"] == pytest.approx(ref.statistic, rel=1e-9)
    assert got["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_one_seed_gives_no_test_and_says_so():
    got = paired_seed_test([0.7], [0.8])
    assert math.isnan(got["p"]) and math.isnan(got["ci_low"])
    assert "no test possible" in verdict(got, baseline="UNet", variant="UNet+C")


def test_verdicts_follow_the_numbers():
    better = paired_seed_test([0.70, 0.72, 0.71, 0.69], [0.75, 0.78, 0.76, 0.75])
    line = verdict(better, baseline="UNet", variant="UNet+C")
    assert line.startswith("UNet+C vs UNet: better by 5.50 points of DSC") and "4 seeds" in line
    worse = paired_seed_test([0.75, 0.78, 0.76, 0.75], [0.70, 0.72, 0.71, 0.69])
    assert "worse by 5.50 points" in verdict(worse, baseline="UNet", variant="UNet+C")
    noise = paired_seed_test([0.70, 0.80, 0.75], [0.72, 0.76, 0.77])
    assert noise["p"] > 0.05
    assert "no significant difference in DSC at 3 seeds" in verdict(
        noise, baseline="UNet", variant="UNet+C"
    )


def test_report_tables_are_over_seeds():
    text = format_report(_runs(), convention="standard")
    # Overall DSC of UNet: seed means 75, 75, 70 -> 73.33 ± 2.89 over 3 seeds.
    line = next(ln for ln in text.splitlines() if ln.startswith("UNet ") and "±" in ln)
    assert f"{np.mean([75, 75, 70]):.2f} ± {np.std([75, 75, 70], ddof=1):.2f}" in line
    assert " 3 " in line  # N = seeds
    assert "UNet+E vs UNet: better by 5.00 points of DSC" in text
    assert "By modality" in text and "By anatomy" in text and "Kidney" in text


def _compare_cmd(output, data):
    return [
        sys.executable, "-m", "ife_jax.cli", "compare", "--variants", "unet,unet+c",
        "--seeds", "1", "--output", str(output), "--preset", "tiny", "--train-sizes", "32",
        "--optimizer", "sgd", "--max-train-examples", "8", "--epochs", "1",
        "--data-dir", str(data), "--no-progress",
    ]  # fmt: skip


def test_compare_resumes_after_being_killed(tmp_path, train_env):
    data, output = tmp_path / "tfds", tmp_path / "cmp"
    assert main(["build-dataset", "synthetic/tiny", "--data-dir", str(data)]) == 0
    proc = subprocess.Popen(
        _compare_cmd(output, data), env=train_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    first = output / "unet" / "seed0" / "result.json"  # then UNet+C, seed 0 trains
    deadline = time.time() + 400
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the comparison ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (output / "report").exists()
    stamp = first.stat().st_mtime_ns
    out = subprocess.run(
        _compare_cmd(output, data), env=train_env(), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert first.stat().st_mtime_ns == stamp  # the finished run was skipped, not redone
    assert "== UNet, seed 0" not in out.stdout and "== UNet+C, seed 0" in out.stdout
    summary = json.loads((output / "report" / "comparison.json").read_text())
    assert set(summary["runs"]) == {"UNet", "UNet+C"}
    assert all(set(seeds) == {"0"} for seeds in summary["runs"].values())
    assert all(run["step"] == 2 for seeds in summary["runs"].values() for run in seeds.values())
    text = (output / "report" / "summary.txt").read_text()
    assert "mean ± std over seeds" in text and "UNet+C vs UNet" in text
    assert (output / "report" / "comparison.png").exists()
    # A third run finds everything finished and trains nothing.
    again = subprocess.run(
        _compare_cmd(output, data), env=train_env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "== " not in again.stdout


def test_parallel_runs_train_in_worker_processes_and_resume(tmp_path, train_env):
    data, output = tmp_path / "tfds", tmp_path / "cmp"
    assert main(["build-dataset", "synthetic/tiny", "--data-dir", str(data)]) == 0
    cmd = _compare_cmd(output, data) + ["--jobs", "2"]
    out = subprocess.run(cmd, env=train_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for folder, name in (("unet", "UNet"), ("unet_c", "UNet+C")):
        assert f"== {name}, seed 0" in out.stdout
        log = (output / "logs" / f"{folder}_seed0.log").read_text()
        assert "done: 2 steps" in log  # each run's own output went to its log
        assert (output / folder / "seed0" / "result.json").exists()
    summary = json.loads((output / "report" / "comparison.json").read_text())
    assert set(summary["runs"]) == {"UNet", "UNet+C"}
    assert all(run["step"] == 2 for seeds in summary["runs"].values() for run in seeds.values())
    again = subprocess.run(cmd, env=train_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "== " not in again.stdout  # nothing left to train


def test_a_failed_worker_run_is_named_with_its_log(tmp_path, train_env):
    not_a_folder = tmp_path / "data.txt"  # the runs cannot build or read a dataset there
    not_a_folder.write_text("")
    cmd = _compare_cmd(tmp_path / "cmp", not_a_folder) + ["--jobs", "2"]
    out = subprocess.run(cmd, env=train_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "failed (exit code" in out.stderr and "seed 0" in out.stderr
    assert str(tmp_path / "cmp" / "logs") in out.stderr
    assert "Traceback" not in out.stderr  # one line from the CLI, the log holds the rest


_THREADS = """
import json, os, sys
from ife_jax.train.compare import _pin, usable_cpus
cpus = usable_cpus()
_pin(cpus[:1], cpus if sys.argv[1] == "shared" else cpus[:1])
import jax.numpy as jnp
x = jnp.ones((64, 64))
(x @ x).block_until_ready()
tids = os.listdir("/proc/self/task")
print(json.dumps([len(tids), sorted({tuple(sorted(os.sched_getaffinity(int(t)))) for t in tids})]))
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or len(compare_module.usable_cpus()) < 2,
    reason="thread affinity: Linux with 2 cores or more",
)
def test_a_run_on_shared_cores_has_one_core_pools_and_may_use_every_core():
    def threads(mode):
        out = subprocess.run([sys.executable, "-c", _THREADS, mode], capture_output=True,
                             text=True, check=True, timeout=120)  # fmt: skip
        return json.loads(out.stdout)

    cpus = compare_module.usable_cpus()
    pinned, shared = threads("pinned"), threads("shared")
    assert pinned[1] == [[cpus[0]]]
    assert shared[1] == [cpus]  # every thread may run on every core
    assert shared[0] == pinned[0]  # with the thread pools of a one-core process


def test_one_core_workers_get_the_memory_schedule_and_the_users_flags_stay():
    one, two = [0], [0, 1]
    env = {"PATH": "/bin", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    got = compare_module._worker_env(env, one)
    assert got["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", *compare_module.ONE_CORE_XLA_FLAGS]
    assert got["PATH"] == "/bin" and env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"  # not changed
    assert compare_module._worker_env(env, two) is env  # more cores: the default schedule
    assert compare_module._worker_env({}, one)["XLA_FLAGS"].split() == list(
        compare_module.ONE_CORE_XLA_FLAGS
    )
    mine = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}
    assert compare_module._worker_env(mine, one) == mine  # the user's choice wins
    # This JAX accepts the flags (XLA aborts on a flag it does not know).
    run = subprocess.run(
        [sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
        env={**os.environ, **compare_module._worker_env({}, one)}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "3.0", run.stderr[-2000:]


def test_jobs_are_checked_and_cores_split(monkeypatch):
    from ife_jax.train.config import preset

    base = preset("tiny")
    with pytest.raises(ValueError, match="jobs=0"):
        compare_module.compare(base, ["unet"], "/nonexistent/never", jobs=0)
    with pytest.raises(ValueError, match="inputs=None"):
        compare_module.compare(base, ["unet"], "/nonexistent/never", jobs=2, inputs=lambda: 0)
    monkeypatch.setattr(compare_module, "usable_cpus", lambda: [0, 1, 2])
    assert compare_module._cpu_groups(2) == [([0, 1], [0, 1]), ([2], [2])]
    assert compare_module._cpu_groups(3) == [([0], [0]), ([1], [1]), ([2], [2])]
    assert compare_module._cpu_groups(1) == [([0, 1, 2], [0, 1, 2])]
    # More runs than cores: one-core pools, all cores shared.
    assert compare_module._cpu_groups(4) == [([k % 3], [0, 1, 2]) for k in range(4)]
    assert compare_module.default_jobs(limit=2) == 2  # the tests run on the CPU backend
    assert compare_module.default_jobs() == 3


@pytest.mark.parametrize("flag", ["0", "-1", "two"])
def test_cli_refuses_bad_jobs(flag, capsys):
    assert main(["compare", "--variants", "unet", "--output", "x", "--jobs", flag]) == 2
    assert "--jobs: must be an integer >= 1" in capsys.readouterr().err


def test_convergence_is_the_gain_of_the_best_over_the_last_quarter():
    from ife_jax.train.compare import convergence

    curve = [(e, v) for e, v in enumerate([0.3, 0.5, 0.7, 0.80, 0.84, 0.85, 0.846, 0.851], 1)]
    # 8 epochs: the last quarter starts at epoch 6 (0.85); its best is 0.851.
    assert convergence(curve) == pytest.approx(0.001)
    assert convergence(curve[:6]) == pytest.approx(0.85 - 0.84)  # from epoch 5 to 6
    assert math.isnan(convergence(curve[:3]))
    # Validation every 3 epochs of 12: the quarter starts at epoch 9, validated; of 10, at
    # epoch 8, so the reference is epoch 6.
    sparse = [(3, 0.6), (6, 0.8), (9, 0.82), (12, 0.825)]
    assert convergence(sparse) == pytest.approx(0.005)
    assert convergence([(3, 0.6), (6, 0.8), (9, 0.79), (10, 0.83)]) == pytest.approx(0.03)
    assert math.isnan(convergence([(10, 0.8)]))
    # A dip at the quarter's first epoch is no gain; a new best counts by how much it beats
    # every earlier epoch, here epoch 5.
    dip = [
        (e, v) for e, v in enumerate([0.5, 0.7, 0.8, 0.85, 0.9, 0.88, 0.89, 0.86, 0.9, 0.905], 1)
    ]
    assert convergence(dip) == pytest.approx(0.005)
    assert convergence(dip[:9]) == pytest.approx(0.0)  # 9 epochs: from epoch 7, nothing beats 0.9
    # From the value at the quarter's first epoch (8 of 10: 0.86) instead, the dip counts.
    assert convergence(dip, from_best=False) == pytest.approx(0.905 - 0.86)
    assert convergence(curve, from_best=False) == pytest.approx(0.001)
    assert convergence(sparse, from_best=False) == pytest.approx(0.005)


def test_the_validated_epoch_is_read_from_new_whole_lines(tmp_path):
    watch = compare_module._ValidatedEpoch(tmp_path)
    assert watch() == 0  # no file yet
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "epoch": 1, "loss": 1.0}\n')
    with open(log, "a") as f:
        f.write('{"step": 2, "epoch": 1, "val_dice": 0.5}\n')
    assert watch() == 1
    with open(log, "a") as f:
        f.write('{"step": 4, "epoch": 2, "val_dice": 0.6}\n{"step": 6, "epoch": 3, "val_')
    assert watch() == 2  # the half-written line waits
    with open(log, "a") as f:
        f.write('dice": 0.7}\n')
    assert watch() == 3
    log.write_text('{"step": 2, "epoch": 1, "val_dice": 0.5}\n')  # a resumed run rewrote it
    assert watch() == 1


def test_the_demo_prints_both_convergence_measures_of_every_run(tmp_path, monkeypatch, capsys):
    import types

    import tfds_cosmos
    from ife_jax.train import demo

    # The demo's printing on hand-made curves (training is what the compare tests cover).
    curves = {
        "UNet": {0: [(e, 0.8 + 0.01 * e) for e in range(1, 9)]},  # +0.02 in the last quarter
        "UNet+C": {0: [(1, 0.5), (2, 0.9), (3, 0.8), (4, 0.85)]},  # a dip: +0.00 / +0.05
    }
    result = {
        "runs": {n: {s: {"curve": c} for s, c in runs.items()} for n, runs in curves.items()},
        "text": {"standard": "(tables)"},
        "report": tmp_path / "report",
    }
    split = types.SimpleNamespace(num_examples=1)
    builder = types.SimpleNamespace(info=types.SimpleNamespace(
        splits={"train": split, "test": split}, full_name="synthetic/small/1.2.0"))  # fmt: skip
    monkeypatch.setattr(tfds_cosmos, "build", lambda *a, **k: builder)
    monkeypatch.setattr(compare_module, "compare", lambda *a, **k: result)
    demo.run_demo(tmp_path / "demo", seeds=1, progress=False, jobs=1)
    lines = capsys.readouterr().out.splitlines()
    # The heading names the epochs the demo's 10-epoch configuration compares.
    assert "Convergence (best validation Dice gained over the last quarter of epochs, after " \
        "epoch 8 of 10):" in lines  # fmt: skip
    assert "  UNet: seed 0 +2.00 points (NOT converged: seed 0 gained 1 point or more; from the " \
        "quarter's first epoch: +2.00)" in lines  # fmt: skip
    assert "  UNet+C: seed 0 +0.00 points (converged: each < 1 point; from the quarter's first " \
        "epoch: +5.00)" in lines  # fmt: skip
