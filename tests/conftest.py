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
                    # TorchScript conversions (torch.jit, 20 s of CPU each)
                    "test_torchscript_is_converted_verified_and_its_provenance_logged",
                    "test_torchscript_with_reordered_batchnorm_tensors_is_refused",
                    "test_a_conversion_wrong_in_a_few_logits_only_is_refused"},
    # The quick tier keeps one TPU compile (NaFlex's splash with segment
    # ids, forward) and the tool's command line.
    "test_aot_tpu.py": {"test_the_eval_step_and_the_sampler_compile_on_v5e_2x2",
                        "test_paper_stage1_batch_fits_v5p_hbm",
                        "test_train_steps_compile_for_tpu_topologies",
                        "test_multi_slice_mesh_and_step",
                        "test_splash_attention_inside_the_sharded_stage1_step",
                        "test_splash_with_segment_ids_gradient_compiles_for_a_tpu_topology"},
    # 2048-d Frechet distances and their scipy references (seconds each).
    "test_adm_metrics.py": {
        "test_generation_evaluator_scores_as_adm",
        "test_video_gfvd_is_the_frechet_distance_of_i3d_features",
        "test_old_reference_files_skip_sfid_and_pr_with_a_warning"},
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
    "test_lpips.py": {"test_distance_is_zero_for_identical_images_and_has_input_grads",
                      "test_random_weights_only_when_allowed",
                      "test_parity_with_lpips_package"},
    # The quick tier's end-to-end run is the tokenizer's (train, evaluate,
    # the eval job); the DiT chain and the exports run in the full suite.
    "test_smoke_chain.py": {
        "test_a_resume_with_another_sample_setting_is_refused",
        "test_dit_trains_samples_and_evaluates",
        "test_both_runs_export_to_pytorch"},
    # NaFlex: the quick tier keeps the masking, positions, data, losses and
    # evaluation on tiny inputs; compiled models and trainings run in full.
    "test_naflex_model.py": {
        "test_square_inputs_match_the_grid_path",
        "test_no_gradient_reaches_padding_and_an_empty_sequence_is_zero",
        "test_training_samples_z_only_on_valid_tokens",
        "test_pytorch_export_matches_on_padded_batches"},
    "test_naflex_losses.py": {"test_masked_lpips_with_the_network"},
    "test_naflex_train.py": {
        "test_training_on_mixed_aspects_learns_and_evaluates_natively",
        "test_stage2_terms_lpips_and_gan_on_the_canvas"},
    # Whole trainer steps compiled for their schedules, dtypes or timings.
    "test_optim.py": {"test_trainer_schedule_peaks_at_the_scaled_lr",
                      "test_video_dit_step_trains_at_the_frameless_lr"},
    "test_vit.py": {"test_transformer_bf16_compute_keeps_f32_params"},
    "test_bench.py": {"test_bench_modes_xla_flops_profile_and_input",
                      "test_bench_times_the_dit_step",
                      "test_bench_runs_and_prints"},
    "test_precision.py": {"test_dtypes_of_stream_norms_matmuls_and_loss"},
    # Parity of the ported networks on random weights (their structure and
    # conversion tests stay quick).
    "test_inception.py": {"test_inception_score_is_torch_fidelitys_unbiased_one",
                          "test_pool_features_and_logits_match_pytorch_fid"},
    # A subprocess each (the quick tier keeps the unknown-argument one).
    "test_cli.py": {"test_every_entry_point_and_tool_has_a_complete_help",
                    "test_a_config_error_is_one_line_naming_the_key_and_exits_2"},
    # The paper-size models' abstract parameters, one variant at a time.
    "test_flops.py": {
        "test_xla_counts_of_the_stage1_step_stay_near_the_analytic_count",
        "test_param_counts_within_1pct_of_paper",
        "test_gflops_within_2pct_of_paper"},
    "test_video_protocol.py": {"test_eval_workers_give_the_same_batches"},
}


# The files that take the most CPU, heaviest first (VITOK_TEST_CPU_LOG,
# below). pytest-xdist hands out whole files in collection order
# (pytest.ini: --no-loadscope-reorder; by default it starts with the files
# of the most tests, and these have few): these first, then the rest
# alphabetically, so that no heavy file starts last and runs on alone.
HEAVY_FILES = (
    "test_dit_train.py", "test_multihost_jobs.py", "test_video.py",
    "test_generation_probe.py", "test_stage2.py", "test_naflex_train.py",
    "test_aot_tpu.py", "test_video_protocol.py", "test_eval.py",
    "test_adm_metrics.py", "test_install.py", "test_robustness.py",
    "test_train.py",
)


def pytest_collection_modifyitems(config, items):
  del config
  import pytest  # pylint: disable=g-import-not-at-top
  for item in items:
    name = item.path.name
    if name in SLOW_FILES or item.originalname in SLOW_TESTS.get(name, ()):
      item.add_marker(pytest.mark.slow)
  rank = {name: i for i, name in enumerate(HEAVY_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FILES)))


# Where the suite's CPU goes: with VITOK_TEST_CPU_LOG=<file>, each test's
# CPU seconds (its own process's and the jobs it launched, set-up included)
# are appended to <file>; unlike wall-clock durations they do not depend on
# what else the machine runs. Each line then names the pytest-xdist worker
# and the test's start and end (seconds since the epoch): where the last
# minutes of a run went.
if os.environ.get("VITOK_TEST_CPU_LOG"):
  import resource  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import pytest as _pytest  # pylint: disable=g-import-not-at-top

  def _cpu():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

  @_pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_protocol(item, nextitem):
    del nextitem
    start, t0 = _cpu(), time.time()
    yield
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.environ["VITOK_TEST_CPU_LOG"], "a") as f:
      f.write(f"{_cpu() - start:.2f} {item.nodeid} {worker} {t0:.1f} "
              f"{time.time():.1f}\n")
