"""Training: config (``TrainConfig``, presets), the sharded train state and step, Orbax
checkpointing, ``train_and_evaluate``, ``evaluate`` and ``predict``.

Submodules are imported on use so that the step and the benchmark need neither TFDS nor grain.
"""
