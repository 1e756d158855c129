"""Training end to end on a tiny network and tiny in-memory data (``tinyrun.py`` in a fresh
process): checkpoints and logs, resume after SIGKILL, a corrupt checkpoint, 1 vs 2 devices,
2 processes, a non-finite loss."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _subprocess import sigkill_when_hanging

HERE = Path(__file__).parent
# 16 examples at batch 4: 4 steps per epoch; 2 epochs; a checkpoint every 2 steps.
RUN = ["--epochs", "2", "--examples", "16", "--checkpoint-every", "2"]
LIMIT = 400  # seconds per training subprocess (the first one compiles)


def _cmd(workdir, *args):
    return [sys.executable, str(HERE / "tinyrun.py"), str(workdir), *RUN, *args]


def _run(env, workdir, *args):
    out = subprocess.run(
        _cmd(workdir, *args), env=env, capture_output=True, text=True, timeout=LIMIT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _params(npz):
    with np.load(npz) as f:
        return {k: f[k] for k in f.files}


def _records(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _losses(workdir):
    return np.array([r["loss"] for r in _records(workdir) if "loss" in r])


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# The error model of the 1-device vs 2-device (or 2-process) comparisons.
#
# Splitting the batch over devices changes nothing but the order of floating-point sums: the
# loss's mean, BatchNorm's batch statistics, the gradient's batch reduction, and the kernels XLA
# picks for each shape. Reordering a float32 sum of n terms moves it by at most
# lambda sqrt(n) u sum|x_i| with probability at least 1 - 2n exp(-lambda^2 / 2) (the probabilistic
# rounding-error bound of Higham and Mary, 2019; u = 2^-24). With lambda = 10 that probability of
# failure is below 1e-17 per sum. The longest sum of a step runs over the batch's pixels,
# N = 4 x 32 x 32, and each step's perturbation carries into the next without growth (SGD at
# lr 1e-3 over 8 steps), so after t steps the bound is t lambda sqrt(N) u, relative.
#
# It applies to what the network computes, not to every number in the state. The comparison
# therefore covers
#   - the loss of every step, relative to its value (a mean of positive terms), and
#   - BatchNorm's running statistics, relative to what training changed in them (as a whole);
# and not the parameters or the optimiser state: BatchNorm makes the loss invariant to some
# directions of the parameters (the conv bias before it, the scale of the conv kernel), whose
# gradients are exactly zero or cancel to rounding, and in which rounding noise grows without
# limit. Reversing the rows of every batch on one device already moves the parameters by 2e-4
# of their change, while the loss and the statistics stay within 3e-7. For the same reason the
# runs train the plain network: IFE's top-k selection is discontinuous, and a rounding-sized
# difference can swap two channels whose scores nearly tie.
#
# The bound is a few hundred times what rounding gives, whichever CPU runs the tests, and below
# what a real defect gives: the tests after it run a duplicated batch row (about 100 times over
# the bound) and a skipped gradient all-reduce (about 10 times) and require the check to fail.
UNIT_ROUNDOFF = 2.0**-24
LAMBDA = 10.0
REDUCTION = 4 * 32 * 32  # the global batch's pixels, the longest sum of a step
STEPS = 8
PER_STEP = LAMBDA * np.sqrt(REDUCTION) * UNIT_ROUNDOFF


def _divergence(workdir, params, ref_workdir, ref_params, init) -> tuple[float, str]:
    """The largest ratio of a difference to its bound (<= 1: equivalent up to rounding), and
    where it occurs."""
    assert params.keys() == ref_params.keys()
    assert init.keys() == ref_params.keys(), sorted(set(init) ^ set(ref_params))
    ratios = {}
    losses, ref_losses = _losses(workdir), _losses(ref_workdir)
    assert losses.shape == ref_losses.shape == (STEPS,)
    for t, (a, b) in enumerate(zip(losses, ref_losses, strict=True), start=1):
        ratios[f"loss at step {t}"] = abs(a - b) / (t * PER_STEP * abs(b))
    stats = [k for k in ref_params if k.startswith("[batch_stats]")]
    assert stats
    change = np.sqrt(sum(np.sum((ref_params[k] - init[k]) ** 2) for k in stats))
    error = np.sqrt(sum(np.sum((params[k] - ref_params[k]) ** 2) for k in stats))
    ratios["BatchNorm statistics"] = error / (STEPS * PER_STEP * change)
    where = max(ratios, key=lambda k: np.nan_to_num(ratios[k], nan=np.inf))
    return float(ratios[where]), where


def _assert_equivalent(workdir, params, ref_workdir, ref_params, init):
    """The same training up to the order of floating-point sums (see the error model above)."""
    assert int(params["[step]"]) == int(ref_params["[step]"]) == STEPS
    ratio, where = _divergence(workdir, params, ref_workdir, ref_params, init)
    assert ratio <= 1.0, f"{where}: difference {ratio:.3g} times the rounding bound"


def test_checkpoints_resume_after_sigkill_and_corrupt_checkpoint(tmp_path, train_env):
    env = train_env()
    # An uninterrupted run: logs, curves, checkpoints.
    ref = tmp_path / "ref"
    _run(env, ref, "--dump", str(tmp_path / "ref.npz"))
    ref_params = _params(tmp_path / "ref.npz")
    records = _records(ref)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))
    assert [r["epoch"] for r in records if "val_dice" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in records if "loss" in r)
    assert any("compile_seconds" in r for r in records)
    assert (ref / "curves.png").stat().st_size > 1000
    assert sorted(int(p.name) for p in (ref / "checkpoints").iterdir()) == [6, 8]
    assert len(list((ref / "best").iterdir())) == 1
    assert int(ref_params["[step]"]) == 8
    assert any("momentum" in k or "trace" in k for k in ref_params), "no optimiser state saved"

    # Killed with SIGKILL in epoch 2, after step 5 ran but before it was checkpointed.
    killed = tmp_path / "killed"
    sigkill_when_hanging(_cmd(killed, "--hang-at", "5"), env, killed, LIMIT)
    steps = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] <= 4
    out = _run(env, killed, "--dump", str(tmp_path / "killed.npz"))
    assert f"resumed {killed} at step {steps[-1]}" in out.stdout
    _assert_same(_params(tmp_path / "killed.npz"), ref_params)
    assert [r["step"] for r in _records(killed) if "loss" in r] == list(range(1, 9))
    np.testing.assert_array_equal(_losses(killed), _losses(ref))

    # A corrupt latest checkpoint: moved aside with a warning, training goes on from step 6.
    import jax

    from ife_jax.train.checkpointing import Checkpointer

    corrupt = tmp_path / "corrupt"
    shutil.copytree(ref, corrupt)
    for f in (corrupt / "checkpoints" / "8" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0garbage")
    ck = Checkpointer(corrupt)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), ck.read(6)[0])
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        state, data, meta = ck.restore(target)
    ck.close()
    assert int(state["step"]) == 6 and data == {"step": 6} and meta["step"] == 6
    assert (corrupt / "corrupt" / "checkpoints_8").is_dir()
    out = _run(env, corrupt, "--dump", str(tmp_path / "corrupt.npz"))
    assert f"resumed {corrupt} at step 6" in out.stdout
    _assert_same(_params(tmp_path / "corrupt.npz"), ref_params)


def test_checkpoints_every_few_epochs_write_the_held_best_with_the_next(tmp_path, train_env):
    # 8 examples at batch 4: 2 steps per epoch; 4 epochs, checkpointed after epochs 3 and 4.
    # The scripted validation Dice peaks at epoch 2 (step 4), which is not checkpointed.
    env = train_env()
    every3 = ["--epochs", "4", "--examples", "8", "--val-dice", "0.2,0.6,0.4,0.5"]
    every3 += ["--checkpoint-every-epochs", "3"]

    def run(workdir, *extra):
        cmd = [sys.executable, str(HERE / "tinyrun.py"), str(workdir), *every3, *extra]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LIMIT)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    def steps(workdir, folder):
        return sorted(int(p.name) for p in (workdir / folder).iterdir() if p.name.isdigit())

    from ife_jax.train.checkpointing import Checkpointer

    def saved(workdir, step, *, best=False):
        ck = Checkpointer(workdir, read_only=True)
        state, _, meta = ck.read(step, best=best)
        ck.close()
        return state, meta

    held = tmp_path / "held"
    run(held)
    assert steps(held, "checkpoints") == [6, 8] and steps(held, "best") == [4]
    best, meta = saved(held, 4, best=True)
    assert int(best["step"]) == 4 and (meta["best_step"], meta["best_val_dice"]) == (4, 0.6)
    assert saved(held, 8)[1]["best_step"] == 4

    # The same training checkpointed every epoch: its step-4 checkpoint is the held best.
    every = tmp_path / "every"
    run(every, "--checkpoint-every-epochs", "1", "--keep", "4")
    assert steps(every, "checkpoints") == [2, 4, 6, 8] and steps(every, "best") == [4]
    reference = jax_leaves(saved(every, 4)[0]["params"])
    _assert_same(jax_leaves(best["params"]), reference)

    # Killed in epoch 4 (after the epoch-3 checkpoint): resumes from step 6 with that best.
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(HERE / "tinyrun.py"), str(killed), *every3, "--hang-at", "7"]
    sigkill_when_hanging(cmd, env, killed, LIMIT)
    assert steps(killed, "checkpoints") == [6] and steps(killed, "best") == [4]
    out = run(killed)
    assert f"resumed {killed} at step 6" in out.stdout
    assert steps(killed, "checkpoints") == [6, 8] and steps(killed, "best") == [4]
    _assert_same(jax_leaves(saved(killed, 4, best=True)[0]["params"]), reference)
    _assert_same(jax_leaves(saved(killed, 8)[0]["params"]), jax_leaves(
        saved(held, 8)[0]["params"]))  # fmt: skip


def jax_leaves(tree) -> dict:
    import jax

    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in
            jax.tree_util.tree_leaves_with_path(tree)}  # fmt: skip


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# The equivalence runs train the plain network (see the error model).
PLAIN = ("--ife", "none")


def _one_device_run(train_env, tmp_path):
    """The reference run: its workdir, final state and initial state."""
    one = tmp_path / "one"
    _run(
        train_env(),
        one,
        *PLAIN,
        "--dump",
        str(tmp_path / "one.npz"),
        "--dump-init",
        str(tmp_path / "0.npz"),
    )
    return one, _params(tmp_path / "one.npz"), _params(tmp_path / "0.npz")


def test_two_devices_and_two_processes_give_the_one_device_result(tmp_path, train_env):
    one, ref_params, init = _one_device_run(train_env, tmp_path)

    two = tmp_path / "two_devices"
    _run(train_env(device_count=2), two, *PLAIN, "--dump", str(tmp_path / "two.npz"))
    _assert_equivalent(two, _params(tmp_path / "two.npz"), one, ref_params, init)

    # Two processes of one CPU device each, over JAX's distributed runtime on localhost.
    procs = tmp_path / "two_processes"
    address = f"localhost:{_free_port()}"
    running = [
        subprocess.Popen(
            _cmd(procs, *PLAIN, "--dump", str(tmp_path / "procs.npz")),
            env=train_env(
                JAX_COORDINATOR_ADDRESS=address,
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(pid),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    try:
        outs = [p.communicate(timeout=LIMIT) for p in running]
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(running, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    _assert_equivalent(procs, _params(tmp_path / "procs.npz"), one, ref_params, init)


@pytest.mark.parametrize("bug", ["dup-row", "no-allreduce"])
def test_the_device_equivalence_check_catches_a_duplicated_row_and_a_skipped_all_reduce(
    tmp_path, train_env, bug
):
    # The check above must fail on real defects of data parallelism: one shard's last example
    # replaced by its neighbour, or each device applying its own shard's gradient (no
    # all-reduce). Both are correct on one device. Their differences are not rounding noise but
    # the defect's own effect, the same on any CPU: about 100 and 10 times the bound.
    one, ref_params, init = _one_device_run(train_env, tmp_path)
    if bug == "no-allreduce":  # the replaced step is the correct one on one device
        same = tmp_path / "same"
        _run(train_env(), same, *PLAIN, "--bug", bug, "--dump", str(tmp_path / "same.npz"))
        _assert_equivalent(same, _params(tmp_path / "same.npz"), one, ref_params, init)

    two = tmp_path / "two"
    _run(train_env(device_count=2), two, *PLAIN, "--bug", bug, "--dump", str(tmp_path / "two.npz"))
    ratio, where = _divergence(two, _params(tmp_path / "two.npz"), one, ref_params, init)
    assert ratio > 4.0, f"{bug} went unnoticed: worst {where} at {ratio:.3g} times the bound"


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, train_env
):
    # Batch index 5 (step 6) carries a NaN pixel; checkpoints at steps 2 and 4 are good.
    out = subprocess.run(
        _cmd(tmp_path / "run", "--inject-nan-at", "5"),
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    assert out.returncode != 0
    assert "NonFiniteLossError" in out.stderr and "at step 6" in out.stderr
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps == [2, 4]


def test_metrics_log_drops_records_past_the_resumed_step(tmp_path):
    from ife_jax.train.loop import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 7):
        log.append({"step": step, "loss": float(step)})
    log.append({"step": 4, "epoch": 1, "val_dice": 0.5})
    log.truncate_after(4)
    assert [(r["step"], "loss" in r) for r in log.read()] == [
        (1, True),
        (2, True),
        (3, True),
        (4, True),
        (4, False),
    ]


def test_validation_reads_each_example_once_and_scores_every_map():
    import jax

    from ife_jax.train import loop
    from ife_jax.train.config import TrainConfig
    from ife_jax.train.inference import dice, predict_images
    from ife_jax.train.input import Example
    from ife_jax.train.sharding import make_mesh

    rng = np.random.default_rng(0)
    examples = [
        Example(
            image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            mask=(rng.random((h, w)) > 0.5).astype(np.uint8),
            image_id=str(i),
            modality="CT",
            anatomy="x",
        )  # fmt: skip
        for i, (h, w) in enumerate([(20, 30), (33, 17), (24, 24), (40, 21), (18, 18)])
    ]

    class Counted:  # a lazy sequence that counts its reads
        reads = 0

        def __len__(self):
            return len(examples)

        def __iter__(self):
            for ex in examples:
                Counted.reads += 1
                yield ex

    def eval_step(variables, batch):  # any function of the image
        return jax.nn.sigmoid(4 * (batch[..., :1] - batch[..., 1:2]))

    config = TrainConfig(model="unet", batch_size=2, eval_size=16)
    mesh = make_mesh()
    got = loop._validate(eval_step, None, Counted(), config, mesh)
    assert Counted.reads == len(examples)
    maps = predict_images(eval_step, None, [ex.image for ex in examples], size=16,
                          batch_size=2, mesh=mesh)  # fmt: skip
    want = np.mean([dice(m >= 0.5, ex.mask > 0) for m, ex in zip(maps, examples, strict=True)])
    assert got == pytest.approx(float(want), rel=0, abs=0)


def test_validation_examples_are_kept_decoded_only_when_small():
    from ife_jax.train.input import Example
    from ife_jax.train.loop import _DecodedOnce

    reads = []

    class Lazy:  # decodes (here: builds) an example on every read
        def __len__(self):
            return 3

        def __iter__(self):
            for i in range(3):
                reads.append(i)
                image, mask = np.full((4, 5, 3), i, np.uint8), np.zeros((4, 5), np.uint8)
                yield Example(image=image, mask=mask, image_id=str(i), modality="CT", anatomy="x")

    each = 4 * 5 * 3 + 4 * 5  # bytes of one image and its mask
    small = _DecodedOnce(Lazy(), budget=3 * each)
    first = [int(ex.image[0, 0, 0]) for ex in small]
    assert first == [0, 1, 2] and reads == [0, 1, 2] and len(small) == 3
    assert [int(ex.image[0, 0, 0]) for ex in small] == first
    assert reads == [0, 1, 2]  # the second pass read nothing
    reads.clear()
    large = _DecodedOnce(Lazy(), budget=3 * each - 1)  # one byte short: stays lazy
    for _ in range(2):
        assert [int(ex.image[0, 0, 0]) for ex in large] == [0, 1, 2]
    assert reads == [0, 1, 2, 0, 1, 2]
    reads.clear()
    partial = _DecodedOnce(Lazy(), budget=3 * each)
    next(iter(partial))  # a pass left unfinished keeps nothing
    assert [int(ex.image[0, 0, 0]) for ex in partial] == [0, 1, 2]
    assert reads == [0, 0, 1, 2]


def test_training_records_are_kept_read_only_within_the_budget_and_batches_do_not_change():
    from ife_jax.data import make_train_loader
    from ife_jax.train.datasets import KeptRecords

    reads = []

    class Source:  # decodes (here: builds) a record on every read
        def __len__(self):
            return 6

        def __getitem__(self, i):
            reads.append(i)
            rng = np.random.default_rng(i)
            mask = np.zeros((30 + i, 27, 1), np.uint8)
            mask[5:15, 4:20] = 1
            image = rng.integers(0, 256, (30 + i, 27, 3), dtype=np.uint8)
            return {"image": image, "mask": mask, "image_id": f"CT_Box_{i}".encode()}

    sizes = [(30 + i) * 27 * 4 for i in range(6)]  # image + mask bytes of record i
    kept = KeptRecords(Source(), budget=sizes[0] + sizes[1])
    a, b = kept[0], kept[1]
    assert kept[0] is a and kept[1] is b and reads == [0, 1]
    assert not a["image"].flags.writeable and not b["mask"].flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        a["image"][0, 0, 0] = 1
    kept[2], kept[2]
    assert reads == [0, 1, 2, 2] and len(kept.kept) == 2  # past the budget: read each time
    assert kept.size == sizes[0] + sizes[1]

    # The full reference augmentation over three epochs reads kept records exactly as fresh ones.
    def batches(source):
        loader = make_train_loader(source, batch_size=2, seed=3, sizes=(16, 24), num_epochs=3)
        return list(loader)

    reads.clear()
    fresh = batches(Source())
    assert len(reads) == 18
    reads.clear()
    again = batches(KeptRecords(Source()))
    assert sorted(reads) == list(range(6))  # each record decoded once
    assert len(fresh) == len(again) == 9
    for x, y in zip(fresh, again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])


def test_grain_training_input_gives_its_first_images_as_stored():
    from ife_jax.train.config import preset
    from ife_jax.train.datasets import GrainTrainInput

    rng = np.random.default_rng(0)
    records = [
        {
            "image": rng.integers(0, 256, (20 + i, 18, 3), dtype=np.uint8),
            "mask": np.zeros((20 + i, 18, 1), np.uint8),
            "image_id": f"CT_Box_{i}".encode(),
        }
        for i in range(5)
    ]
    train = GrainTrainInput(records, preset("tiny", batch_size=2, train_sizes=(16,)))
    images = train.first_images(3)
    assert len(images) == 3
    for got, record in zip(images, records, strict=False):
        np.testing.assert_array_equal(got, record["image"])
    assert len(train.first_images(100)) == 5


@pytest.mark.parametrize("augment", ["reference", "no_rotation", "none"])
def test_grain_training_input_uses_the_configured_augmentation(monkeypatch, augment):
    import ife_jax.data as data
    from ife_jax.data.transforms import AUGMENTATIONS
    from ife_jax.train.config import preset
    from ife_jax.train.datasets import GrainTrainInput

    seen = []
    real = data.make_train_loader

    def spy(*args, **kwargs):
        seen.append(kwargs.get("augment"))
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "make_train_loader", spy)
    records = [
        {"image": np.zeros((20, 18, 3), np.uint8), "mask": np.zeros((20, 18, 1), np.uint8)}
        for _ in range(4)
    ]
    GrainTrainInput(records, preset("tiny", batch_size=2, train_sizes=(16,), augment=augment))
    assert seen == [AUGMENTATIONS[augment]]
