r"""Evaluation job: `python -m vitok_jax.eval --config=... --workdir=DIR [--checkpoint=STEP]`.

Restores a checkpoint of a training run (its EMA params when present) onto
the current mesh, runs every evaluator of `config.evals` (a default
reconstruction evaluator on the training data when there is none), and writes
under DIR/eval/: TensorBoard scalars, results_<step>.json and
reconstruction_<step>.png (originals on top, reconstructions below, like the
paper's Fig. 3; for videos each clip's frames side by side, and an animated
reconstruction_<step>.gif). For a DiT run (config.trainer "dit") the evaluators are its
generation evaluators (gFID/gIS).
"""
import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vitok_jax import checkpoint as ckpt_lib
from vitok_jax import metrics_writer
from vitok_jax import sharding as sh
from vitok_jax import distributed
from vitok_jax.evaluators import common as evaluators
from vitok_jax.trainers import tokenizer
import vitok_jax.utils as u

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The training config of the run (optionally ':args').",
    lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None,
                                   "Step to evaluate (default: the latest).")


def evaluate(config, workdir: str, step=None) -> dict:
  """Restores `step` (or the latest) of workdir and returns {metric: value}."""
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(ckpt_dir):  # a read-only job creates nothing
    raise FileNotFoundError(f"--workdir={workdir!r} has no checkpoints folder "
                            f"({ckpt_dir}): is it the training run's workdir?")
  if config.get("trainer") == "dit":
    return _evaluate_dit(config, workdir, step)
  config = tokenizer.resolve_config(config)
  if not config.evals:
    config.evals = {"recon": dict(type="reconstruction", batch_size=8,
                                  num_examples=None)}
  mesh = sh.make_mesh(config.mesh)
  setup = tokenizer.make_setup(config, mesh)
  ckpt = ckpt_lib.Checkpointer(workdir)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {ckpt.directory} to evaluate")
  state, _, _ = ckpt.restore(setup.abstract_state, setup.state_sharding, step)
  ckpt.close()
  use_ema = "params_ema" in state
  params = state["params_ema"] if use_ema else state["params"]
  logging.info("Evaluating step %d (%s params)", step,
               "EMA" if use_ema else "raw")
  evals = evaluators.build_all(config.evals, model=setup.model, mesh=mesh,
                               params_sharding=setup.state_sharding["params"],
                               input_config=config.input)
  out_dir = os.path.join(workdir, "eval")
  writer = metrics_writer.MetricWriter(out_dir)
  results = {}
  for name, ev in evals.items():
    r = dict(ev.run(params))
    results.update(r)
    if hasattr(ev, "summary") and jax.process_index() == 0:
      print(ev.summary(r), flush=True)
    if ev.last_picture is not None:
      writer.write_images(step, {f"{name}/reconstruction": ev.last_picture})
      if jax.process_index() == 0:
        from PIL import Image  # pylint: disable=g-import-not-at-top
        Image.fromarray(ev.last_picture).save(
            os.path.join(out_dir, f"{name}_reconstruction_{step}.png"))
        if getattr(ev, "last_clips", None) is not None:  # videos: a GIF too
          evaluators.save_comparison_gif(
              os.path.join(out_dir, f"{name}_reconstruction_{step}.gif"),
              *ev.last_clips, fps=ev.data_config.get("fps") or 8.0)
  writer.write_scalars(step, results)
  writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, f"results_{step}.json"), "w") as f:
      json.dump(dict(step=step, ema=use_ema, **results), f, indent=2)
  logging.info("Results at step %d: %s", step, results)
  return results


def _evaluate_dit(config, workdir: str, step=None) -> dict:
  """The generation evaluators of a DiT run's config on its EMA params."""
  from vitok_jax.trainers import dit  # pylint: disable=g-import-not-at-top
  config = dit.resolve_config(config)
  if not config.evals:
    raise ValueError("config.evals has no generation evaluator to run")
  run = dit.restore_run(config, workdir, step)
  step = run.step
  evals = dit.build_evaluators(config, run.setup, run.tok_params, run.stats)
  out_dir = os.path.join(workdir, "eval")
  writer = metrics_writer.MetricWriter(out_dir)
  results = {}
  for ev in evals.values():
    r = dict(ev.run(run.params))
    results.update(r)
    if jax.process_index() == 0:
      print(ev.summary(r), flush=True)
  writer.write_scalars(step, results)
  writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, f"results_{step}.json"), "w") as f:
      json.dump(dict(step=step, **results), f, indent=2)
  return results


def main(argv):
  del argv
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  u.quiet_library_logs()
  distributed.maybe_initialize()
  evaluate(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
