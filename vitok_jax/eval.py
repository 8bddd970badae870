r"""Evaluation job: `python -m vitok_jax.eval --workdir=DIR [--checkpoint=STEP] [--config=...]`
(or `vitok-eval`).

Without --config the job uses the config the run saved with that checkpoint
(a DiT run also its pinned tokenizer, <workdir>/tokenizer.json); --config
(with --config.x.y=... overrides) replaces it, e.g. to add evaluators.
Restores a checkpoint of a training run (its EMA params when present) onto
the current mesh, runs every evaluator of `config.evals` (a default
reconstruction evaluator on the training data when there is none), and writes
under DIR/eval/: TensorBoard scalars, results_<step>.json and, per
evaluator, <name>_reconstruction_<step>.png (originals on top, reconstructions below, like the
paper's Fig. 3; for videos each clip's frames side by side, and an animated
<name>_reconstruction_<step>.gif). For a DiT run (config.trainer "dit") the evaluators are its
generation evaluators (gFID/gIS). Both trainers go through the same code:
the trainer restores its run (restore_for_eval) and hands its predict
functions to the evaluators of the registry (evaluators/common.py).
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vitok_jax import cli
from vitok_jax.evaluators import common as evaluators
from vitok_jax.io import fileio
from vitok_jax.io import metrics_writer
from vitok_jax.parallel import startup
from vitok_jax import trainers
import vitok_jax.utils as u

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Overrides the config the run saved with its checkpoint "
    "(optionally ':args'); default: that saved config.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None,
                                   "Step to evaluate (default: the latest).")


def evaluate(config, workdir: str, step=None) -> dict:
  """Restores `step` (or the latest) of workdir and returns {metric: value}.

  One path for every trainer: the trainer restores its run and hands over
  the predict functions; the evaluators come from the registry by type."""
  ckpt_dir = fileio.join(fileio.abspath(workdir), "checkpoints")
  if not fileio.isdir(ckpt_dir):  # a read-only job creates nothing
    raise FileNotFoundError(f"--workdir={workdir!r} has no checkpoints folder "
                            f"({ckpt_dir}): is it the training run's workdir?")
  trainer = trainers.get(config.get("trainer", "tokenizer"))
  config = trainer.resolve_config(config)
  run = trainer.restore_for_eval(config, workdir, step)
  logging.info("Evaluating step %d (%s params)", run.step,
               "EMA" if run.ema else "raw")
  evals = evaluators.build_all(config.evals, predict_fns=run.predict_fns,
                               mesh=run.mesh, input_config=config.input)
  out_dir = fileio.join(workdir, "eval")
  writer = metrics_writer.MetricWriter(out_dir)
  results, protocols = {}, {}
  for ev in evals.values():
    scalars = evaluators.write_results(
        writer, run.step, dict(ev.run(run.params, final=True)), out_dir,
        fps=ev.data_config.fps or 8.0)  # native rate: shown at 8 fps
    results.update(scalars)
    if hasattr(ev, "protocol"):  # what was measured, and on how many
      protocols[ev.name] = ev.protocol(scalars)
    if hasattr(ev, "summary") and jax.process_index() == 0:
      print(ev.summary(scalars), flush=True)
  writer.close()
  if jax.process_index() == 0:
    fileio.write_json(fileio.join(out_dir, f"results_{run.step}.json"),
                      dict(step=run.step, ema=run.ema, protocols=protocols,
                           **results))
  logging.info("Results at step %d: %s", run.step, results)
  return results


JOB = "vitok_jax.eval"


def main(argv):
  del argv
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  cli.run_job(JOB, _job)


def _job():
  config = _CONFIG.value
  if config is None:
    config = cli.run_config(_WORKDIR.value, _CHECKPOINT.value,
                            lambda name: trainers.get(name).default_config())
  trainer = trainers.get(config.get("trainer", "tokenizer"))
  cli.check_config(JOB, trainer.resolve_config, config)
  u.quiet_library_logs()
  startup.maybe_initialize()
  evaluate(config, _WORKDIR.value, _CHECKPOINT.value)


def run():
  """The console script `vitok-eval` (= python -m vitok_jax.eval)."""
  app.run(main, flags_parser=cli.flags_parser(JOB, __doc__))


if __name__ == "__main__":
  run()
