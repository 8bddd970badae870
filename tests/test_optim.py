"""The learning rate follows the batch: peak lr = base_lr * batch * frames / 256."""
import jax
import numpy as np
import pytest

from configs.vitok import s_b16_256
from vitok_jax import optim
from vitok_jax import sharding as sh
from vitok_jax.trainers import tokenizer


def test_peak_lr_rule():
  c = s_b16_256.get_config()
  assert c.optim.base_lr == 1e-4 and "lr" not in c.optim
  assert optim.peak_lr(c.optim, c.input) == pytest.approx(4e-4)  # batch 1024
  c.input.batch_size = 256
  assert optim.peak_lr(c.optim, c.input) == pytest.approx(1e-4)
  c.input.frames = 16  # 256 clips of 16 frames: 4096 samples
  assert optim.peak_lr(c.optim, c.input) == pytest.approx(1.6e-3)


@pytest.mark.parametrize("batch,frames", [(8, 1), (16, 1), (8, 2)])
def test_trainer_schedule_peaks_at_the_scaled_lr(batch, frames):
  c = s_b16_256.get_config("runlocal,lpips=0")
  c.input.update(res=32, batch_size=batch, frames=frames)
  c.optim.update(base_lr=0.01, warmup_steps=0)  # step 0 of a cosine = peak
  c.evals = {}
  c = tokenizer.resolve_config(c)
  setup = tokenizer.make_setup(c, sh.make_mesh(c.mesh))
  state = setup.init(jax.random.key(0))
  x = np.zeros(tokenizer.input_shape(c), np.float32)
  _, m = setup.step(state, sh.put_global_batch(x, setup.batch_sharding), {})
  np.testing.assert_allclose(float(m["lr"]), 0.01 * batch * frames / 256,
                             rtol=1e-6)
