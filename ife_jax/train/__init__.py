"""Training: config (``TrainConfig``, presets), the sharded train state and step, Orbax
checkpointing, ``train_and_evaluate``, ``evaluate`` and ``predict``.

Submodules are imported on use so that the step and the benchmark need neither TFDS nor grain.
"""


def load_run(workdir):
    """Opens the training run in ``workdir`` read-only: see :func:`ife_jax.train.run.load_run`."""
    from ife_jax.train.run import load_run as _load_run

    return _load_run(workdir)
