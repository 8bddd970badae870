"""Test set-up: CPU only, 8 fake devices so that mesh tests can shard."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the whole run, shared by the
# pytest workers and every job the tests launch (they inherit os.environ):
# a resumed, restarted or re-evaluated job loads the executables its first
# run compiled instead of compiling them again (a third less time for the
# resume tests on 2 cores). Made here, in the controlling process, before
# pytest-xdist starts its workers; removed when that process ends. The size
# limit turns on JAX's file lock, so that the workers never read an entry
# half written; an unreadable entry is recompiled, with a warning.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  _CACHE = tempfile.mkdtemp(prefix="vitok_jax_tests_xla_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE,
                    JAX_COMPILATION_CACHE_MAX_SIZE=str(4 << 30),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2")
# Two pytest workers share the 2 cores: BLAS threads of their own would
# only wait on each other (OpenBLAS spins while it waits), so each process
# computes on one. Set here, in the controlling process, so the workers and
# the jobs they launch start with it.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  from tests import helpers  # pylint: disable=g-import-not-at-top
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                             helpers.xla_flags(8))


# The quick tier (`pytest -m "not slow"`, a few minutes on 2 cores) touches
# every module: unit tests, parity at tiny shapes, and test_smoke_chain.py's
# end-to-end run. These are the slow tier's: whole files, or named tests.
SLOW_FILES = {
    "test_multihost_jobs.py", "test_multihost.py", "test_dit_train.py",
    "test_train.py", "test_stage2.py", "test_loss_gradients.py",
    "test_torch_export.py", "test_eval.py", "test_cloud_storage.py",
    "test_install.py",  # a fresh venv and a plain `pip install .`
}
SLOW_TESTS = {
    "test_i3d.py": {"test_a_detector_whose_resize_differs_is_refused",
                    "test_parity_with_the_pytorch_i3d",
                    # the quick tier keeps the conversion itself
                    "test_torchscript_with_reordered_batchnorm_tensors_is_refused",
                    "test_a_conversion_wrong_in_a_few_logits_only_is_refused"},
    # ~15 fresh interpreters importing jax (40 s of CPU).
    "test_cli.py": {"test_every_entry_point_and_tool_has_a_complete_help"},
    # A Ti-Ti/8 train step compiled for its cost analysis (15 s of CPU).
    "test_flops.py": {
        "test_xla_counts_of_the_stage1_step_stay_near_the_analytic_count"},
    # The quick tier keeps one TPU compile (the eval step and the sampler).
    "test_naflex_model.py": {
        "test_splash_with_segment_ids_gradient_compiles_for_a_tpu_topology"},
    "test_aot_tpu.py": {"test_paper_stage1_batch_fits_v5p_hbm",
                        "test_train_steps_compile_for_tpu_topologies",
                        "test_multi_slice_mesh_and_step",
                        "test_splash_attention_inside_the_sharded_stage1_step"},
    # 2048-d Frechet distances and their scipy references (seconds each).
    "test_adm_metrics.py": {
        "test_generation_evaluator_scores_as_adm",
        "test_video_gfvd_is_the_frechet_distance_of_i3d_features",
        "test_old_reference_files_skip_sfid_and_pr_with_a_warning"},
    "test_inception.py": {"test_inception_score_is_torch_fidelitys_unbiased_one"},
    "test_metrics.py": {
        "test_fid_closed_forms_for_rank_deficient_pool_statistics"},
    "test_flow.py": {"test_ddpm_recovers_a_2d_mixture",
                     "test_flow_matching_recovers_a_2d_mixture"},
    "test_video.py": {"test_video_runlocal_trains_and_the_eval_job_reports_rfvd",
                      "test_video_step_with_framewise_lpips_and_gan",
                      "test_train_batches_skip_and_count_bad_videos"},
    "test_robustness.py": {
        "test_sigterm_saves_that_step_and_the_restart_is_exact",
        "test_failure_right_after_a_save_exits_nonzero_at_once",
        "test_non_finite_state_is_never_saved",
        "test_a_second_job_on_the_workdir_fails_naming_the_first",
        "test_a_damaged_latest_checkpoint_falls_back_and_metrics_stay_unique"},
    "test_sweeps.py": {"test_sweep_runs_resumes_skips_and_plots"},
    # The discriminator and LPIPS compiled on the canvas (~a minute).
    "test_naflex_train.py": {"test_stage2_terms_lpips_and_gan_on_the_canvas"},
    "test_lpips.py": {"test_distance_is_zero_for_identical_images_and_has_input_grads",
                      "test_random_weights_only_when_allowed"},
    "test_bench.py": {"test_bench_modes_xla_flops_profile_and_input"},
    # ~15 s of restores on the smoke chain's DiT (its fixture is shared when
    # both tiers run).
    "test_smoke_chain.py": {
        "test_a_resume_with_another_sample_setting_is_refused"},
}


def pytest_collection_modifyitems(config, items):
  del config
  import pytest  # pylint: disable=g-import-not-at-top
  for item in items:
    name = os.path.basename(str(item.fspath))
    if name in SLOW_FILES or item.originalname in SLOW_TESTS.get(name, ()):
      item.add_marker(pytest.mark.slow)


# Where the suite's CPU goes: with VITOK_TEST_CPU_LOG=<file>, each test's
# CPU seconds (its own process's and the jobs it launched, set-up included)
# are appended to <file>; unlike wall-clock durations they do not depend on
# what else the machine runs.
if os.environ.get("VITOK_TEST_CPU_LOG"):
  import resource  # pylint: disable=g-import-not-at-top
  import pytest as _pytest  # pylint: disable=g-import-not-at-top

  def _cpu():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

  @_pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_protocol(item, nextitem):
    del nextitem
    start = _cpu()
    yield
    with open(os.environ["VITOK_TEST_CPU_LOG"], "a") as f:
      f.write(f"{_cpu() - start:.2f} {item.nodeid}\n")
