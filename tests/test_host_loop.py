"""The host loop's own pieces, without a trainer: the one "is it time" rule,
and the bad-record counts it reads from the input iterator (the whole loop
runs in test_train.py, test_robustness.py and test_dit_train.py)."""
import numpy as np
import pytest

from vitok_jax.data import input_pipeline
from vitok_jax.trainers import host_loop


@pytest.mark.parametrize("every,last,due", [
    (3, 10, [3, 6, 9, 10]),  # every 3 steps and at the last
    (0, 10, [10]),  # 0 = only at the last step
    (5, 10, [5, 10]),  # the last step is a multiple: once
    (4, 7, [4, 7]),  # a run cut short (max_steps) still ends with one
])
def test_is_due(every, last, due):
  assert [s for s in range(1, last + 1)
          if host_loop.is_due(s, every, last)] == due


class _Batches:
  """A checkpointable iterator of batches, as grain's."""

  def __init__(self, batches):
    self.batches, self.i = batches, 0

  def __next__(self):
    self.i += 1
    return self.batches[self.i - 1]

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = state["i"]


def test_counting_iterator_counts_skipped_records_and_strips_them():
  batches = [dict(image=np.zeros((4, 2)), skipped=np.array([0, 2, 0, 1])),
             dict(image=np.ones((4, 2)), skipped=np.array([0, 0, 0, 3]))]
  it = input_pipeline.CountingIterator(_Batches(batches))
  first = next(it)
  assert set(first) == {"image"}  # the trainer never sees the counts
  assert (it.skipped, it.read) == (3, 4 + 3)
  state = it.get_state()
  second = next(it)
  np.testing.assert_array_equal(second["image"], 1.0)
  assert (it.skipped, it.read) == (6, 8 + 6)
  it.set_state(state)  # resume: the wrapped iterator's position
  np.testing.assert_array_equal(next(it)["image"], 1.0)


def test_a_source_without_bad_records_counts_every_example_read():
  it = input_pipeline.CountingIterator(_Batches(
      [dict(latent=np.zeros((8, 3)), label=np.arange(8))]))
  assert set(next(it)) == {"latent", "label"}
  assert (it.skipped, it.read) == (0, 8)
