"""sharding.make_mesh's "slice" axis on CPU devices (one slice): a slice
axis of 1 is the same mesh, any other size fails naming config.mesh (the
multi-slice layout itself is tested on a TPU topology, test_aot_tpu.py);
sharding.traced_under shows the mesh to the traced code, nothing else."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitok_jax.parallel import sharding as sh


def test_a_slice_axis_of_one_on_cpu_devices():
  mesh = sh.make_mesh((("slice", 1), ("data", -1), ("fsdp", 2)))
  plain = sh.make_mesh((("data", -1), ("fsdp", 2)))
  assert dict(mesh.shape) == {"slice": 1, "data": 4, "fsdp": 2}
  assert sh.num_slices(jax.devices()) == 1
  np.testing.assert_array_equal(mesh.devices[0], plain.devices)
  # Batches split over every axis, the slice axis included.
  assert sh.batch_sharding(mesh).spec == jax.sharding.PartitionSpec(
      ("slice", "data", "fsdp"))


def test_a_wrong_slice_count_names_the_mesh_and_the_slices():
  with pytest.raises(ValueError, match=r"config.mesh \(\('slice', 2\).*"
                     r"span 1 slice\(s\); set it to \(\"slice\", 1\)"):
    sh.make_mesh((("slice", 2), ("data", -1), ("fsdp", 1)))


def test_traced_under_shows_the_mesh_while_tracing_and_changes_nothing():
  mesh = sh.make_mesh((("data", -1), ("fsdp", 1)))
  seen = []

  def f(x):
    seen.append(jax.sharding.get_abstract_mesh())
    return jnp.tanh(x) @ x.T

  x = jax.random.normal(jax.random.key(0), (8, 8))
  plain = jax.jit(f, in_shardings=sh.batch_sharding(mesh))(x)
  under = jax.jit(sh.traced_under(mesh, f),
                  in_shardings=sh.batch_sharding(mesh))(x)
  np.testing.assert_array_equal(plain, under)
  assert seen[0].empty and seen[1] == mesh.abstract_mesh
  assert jax.sharding.get_abstract_mesh().empty  # only while tracing
