"""The learning-rate schedule against the reference's formula, worked by hand."""

import numpy as np
import pytest

from ife_jax.train.config import TrainConfig, preset
from ife_jax.train.state import host_learning_rate, learning_rate_schedule

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


def test_cosine_by_hand():
    # T = 4 epochs x 2 steps = 8 steps: lr * (1 + cos(pi * t / 8)) / 2 for t = 0..7, with
    # cos(pi/8) = sqrt(2 + sqrt(2)) / 2, cos(pi/4) = sqrt(2) / 2,
    # cos(3 pi/8) = sqrt(2 - sqrt(2)) / 2.
    config = TrainConfig(epochs=4, learning_rate=1e-3, lr_schedule="cosine")
    schedule = learning_rate_schedule(config, 2)
    c1, c2, c3 = np.sqrt(2 + np.sqrt(2)) / 2, np.sqrt(2) / 2, np.sqrt(2 - np.sqrt(2)) / 2
    expected = 1e-3 * np.array([2, 1 + c1, 1 + c2, 1 + c3, 1, 1 - c3, 1 - c2, 1 - c1]) / 2
    lrs = np.array([float(schedule(t)) for t in range(8)])
    np.testing.assert_allclose(lrs, expected, rtol=RTOL)
    # Past the end (a rate read after the last step) stays at the last step's rate.
    assert float(schedule(8)) == float(schedule(7))


def test_cosine_ignores_the_decay_fields():
    a = TrainConfig(epochs=6, learning_rate=2e-3, lr_schedule="cosine")
    b = a.replace(decay_every_epochs=1, decay_factor=0.5)
    steps = range(6 * 3)
    sa, sb = learning_rate_schedule(a, 3), learning_rate_schedule(b, 3)
    assert [float(sa(t)) for t in steps] == [float(sb(t)) for t in steps]


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(epochs=5, learning_rate=3e-3, lr_schedule="cosine"),
        TrainConfig(epochs=7, learning_rate=1e-3, decay_factor=0.5, decay_every_epochs=2),
    ],
    ids=["cosine", "step"],
)
def test_host_rate_is_the_schedule_bit_for_bit(config):
    # The log's rate (NumPy) and the optimiser's (the device table) for every step of the run,
    # one before it and two past its end.
    spe = 3
    schedule, host = learning_rate_schedule(config, spe), host_learning_rate(config, spe)
    steps = range(-1, config.epochs * spe + 2)
    device = np.array([schedule(t) for t in steps], np.float32)
    logged = np.array([host(t) for t in steps], np.float32)
    np.testing.assert_array_equal(logged, device)
    assert isinstance(host(0), float)
    assert len(set(logged.tolist())) > 3  # the rates do change over the run


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="lr_schedule='linear'"):
        TrainConfig(lr_schedule="linear")
