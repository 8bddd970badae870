"""Jobs start jax.distributed by themselves wherever JAX's own cluster
detection finds more than one process (parallel/startup.py), and never for
a single process."""
from absl import flags
from jax._src import clusters
import pytest

from vitok_jax.parallel import startup

SLURM_2 = dict(SLURM_JOB_ID="77", SLURM_STEP_NODELIST="node[001-002]",
               SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_LOCALID="0")
ENV_VARS = ["SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
            "SLURM_PROCID", "SLURM_LOCALID", "OMPI_COMM_WORLD_SIZE",
            "OMPI_MCA_orte_hnp_uri", "JAX_COORDINATOR_ADDRESS",
            "KUBERNETES_SERVICE_HOST", "TPU_WORKER_HOSTNAMES",
            "TPU_PROCESS_ADDRESSES"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
  for var in ENV_VARS:
    monkeypatch.delenv(var, raising=False)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(["test"])


def _fake(name, present=True, count=4, fails=False):
  class Fake(clusters.ClusterEnv):  # pylint: disable=abstract-method
    @classmethod
    def is_env_present(cls):
      if fails:
        raise RuntimeError("no metadata server")
      return present

    @classmethod
    def get_process_count(cls):
      return count
  Fake.__name__ = name
  clusters.ClusterEnv._cluster_types.remove(Fake)  # pylint: disable=protected-access
  return Fake


def test_the_environments_jax_detects_are_the_documented_ones():
  names = {c.__name__ for c in clusters.ClusterEnv._cluster_types}  # pylint: disable=protected-access
  assert {"SlurmCluster", "OmpiCluster", "K8sCluster", "GceTpuCluster",
          "GkeTpuCluster"} <= names


def test_nothing_is_detected_on_a_plain_machine():
  assert startup.detected_cluster() is None
  assert not startup.is_multiprocess_launch()


def test_slurm_with_two_tasks_is_found_through_jax(monkeypatch):
  for k, v in SLURM_2.items():
    monkeypatch.setenv(k, v)
  assert startup.detected_cluster() == ("SlurmCluster", 2)
  assert startup.is_multiprocess_launch()
  monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: nothing to join
  assert not startup.is_multiprocess_launch()


@pytest.mark.parametrize("count,multi", [(4, True), (1, False)])
def test_any_environment_jax_detects_starts_it_when_many(count, multi,
                                                         monkeypatch):
  """A Kubernetes indexed Job or a multi-host TPU slice, as JAX sees it."""
  monkeypatch.setattr(clusters.ClusterEnv, "_cluster_types",
                      [_fake("K8sCluster", count=count)])
  assert startup.detected_cluster() == ("K8sCluster", count)
  assert startup.is_multiprocess_launch() is multi


def test_a_failing_detection_is_no_cluster(monkeypatch, caplog):
  monkeypatch.setattr(clusters.ClusterEnv, "_cluster_types",
                      [_fake("GceTpuCluster", fails=True),
                       _fake("Opt", count=8)])
  assert startup.detected_cluster() == ("Opt", 8)
  assert "GceTpuCluster failed" in caplog.text
