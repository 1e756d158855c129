import numpy as np

from ife_jax.train.config import TrainConfig
from ife_jax.train.state import learning_rate_schedule


def test_step_decay_at_half_the_epochs():
    schedule = learning_rate_schedule(TrainConfig(epochs=4, learning_rate=1e-4), 10)
    lrs = np.array([float(schedule(s)) for s in (0, 19, 20, 39)])
    np.testing.assert_allclose(lrs, [1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)
