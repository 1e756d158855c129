"""The learning-rate schedule against the reference's formula, worked by hand."""

import numpy as np

from ife_jax.train.config import TrainConfig, preset
from ife_jax.train.state import learning_rate_schedule

# Each rate is the float32 rounding of the reference's float64 value: within half a float32 ulp
# (2**-24 relative) of it, and the float64 value is within 1e-15 of the decimal written here.
RTOL = 2.0**-24 + 1e-15


def rates_per_epoch(config, steps_per_epoch):
    schedule = learning_rate_schedule(config, steps_per_epoch)
    steps = np.arange(config.epochs * steps_per_epoch)
    lrs = np.array([float(schedule(s)) for s in steps])
    per_epoch = lrs.reshape(config.epochs, steps_per_epoch)
    assert (per_epoch == per_epoch[:, :1]).all()  # constant within an epoch
    return per_epoch[:, 0]


def test_step_decay_at_half_the_epochs():
    schedule = learning_rate_schedule(TrainConfig(epochs=4, learning_rate=1e-4), 10)
    lrs = np.array([float(schedule(s)) for s in (0, 19, 20, 39)])
    np.testing.assert_allclose(lrs, [1e-4, 1e-4, 1e-5, 1e-5], rtol=RTOL)


def test_every_epoch_of_a_decay_every_3_run():
    # lr = 1e-3 * 0.5 ** (epoch // 3), epochs 0..9.
    config = TrainConfig(epochs=10, learning_rate=1e-3, decay_factor=0.5, decay_every_epochs=3)
    expected = [1e-3] * 3 + [5e-4] * 3 + [2.5e-4] * 3 + [1.25e-4]
    np.testing.assert_allclose(rates_per_epoch(config, 2), expected, rtol=RTOL)


def test_reference_presets():
    # UNet: 1e-4 for epochs 0..49, 1e-5 for 50..99. DeepLabV3+ and SINetV2: 30 and 30 of 60.
    unet = [1e-4] * 50 + [1e-5] * 50
    np.testing.assert_allclose(rates_per_epoch(preset("unet"), 1), unet, rtol=RTOL)
    for name in ("deeplabv3plus", "sinetv2+e"):
        np.testing.assert_allclose(
            rates_per_epoch(preset(name), 1), [1e-4] * 30 + [1e-5] * 30, rtol=RTOL
        )
    # Training longer keeps the reference's decay period (every 50 epochs), not half the run.
    longer = [1e-4] * 50 + [1e-5] * 50 + [1e-6] * 50 + [1e-7] * 10
    np.testing.assert_allclose(rates_per_epoch(preset("unet", epochs=160), 1), longer, rtol=RTOL)
