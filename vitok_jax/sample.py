r"""Samples a trained DiT: `python -m vitok_jax.sample --workdir=DIR --num=N --cfg=1.5 [--classes=...]`
(or `vitok-sample`).

Restores the DiT run's checkpoint (its EMA params), the frozen tokenizer the
run is pinned to (<workdir>/tokenizer.json) and the run's latent statistics, draws N images with DDIM
and classifier-free guidance, and writes under DIR/samples/. The classes are
drawn uniformly at random from --classes (default all classes), seeded by
--seed, as DiT's sampling protocol does; --labels=balanced takes them in
turn instead (equal counts).


  parts_<step>_cfg<s>_seed<k>/ each process's samples as it makes them
                              (a rerun samples only what is missing)
  samples_<step>_cfg<s>.png   a grid of the first 64 samples
  samples_<step>_cfg<s>.npz   arr_0: uint8 [N, H, W, 3] (the layout of the
                              ADM/DiT evaluation suite), labels: int32 [N]
  results_<step>_cfg<s>.json  gFID, gIS, sFID, precision and recall (ADM's
                              evaluator protocol; images) against the training set's Inception
                              statistics when Inception weights exist
                              (--inception, default the config's generation
                              evaluator's), with --ref_stats or the cached
                              ones (evaluators/ref_stats.py)

Without --config the job uses the config the run saved with its checkpoint;
--config (the training run's, with its arguments) overrides it.
"""
import resource
import time

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
from ml_collections import config_flags
import numpy as np

from vitok_jax import cli
from vitok_jax.data import input_pipeline
from vitok_jax.data import preprocess as ops
from vitok_jax.evaluators import common
from vitok_jax.evaluators import generation
from vitok_jax.evaluators import scoring
from vitok_jax.io import fileio
from vitok_jax.io import sample_parts
from vitok_jax.parallel import multihost
from vitok_jax.parallel import startup
from vitok_jax.trainers import dit
import vitok_jax.utils as u

def _generation_eval(config) -> dict:
  """The fields of the config's first generation evaluator (its weights,
  reference statistics and subset), the defaults of this job's scoring."""
  for name in config.evals.keys():
    if config.evals[name].type == "generation":
      return dict(config.evals[name])
  return dict(inception_weights="", ref_stats="", i3d_weights="",
              ref_examples=None, inception_input="adm")


def sample(config, workdir: str, num: int, *, cfg=None, classes=None,
           steps=None, eta=None, seed: int = 0, batch_size: int = 64,
           checkpoint=None, inception_weights=None, ref_stats=None,
           labels: str = "random", i3d_weights=None,
           inception_input=None) -> dict:
  """Writes the files above; returns {"png", "npz", "step", metrics...}.

  As a multi-process job each process samples its rows of every global batch
  and writes them as it goes (io/sample_parts.py); a rerun samples only what is
  missing; process 0 merges the parts at the end, one part at a time.
  """
  config = dit.resolve_config(config)
  run = dit.restore_run(config, workdir, checkpoint)
  setup, step, params, mesh = run.setup, run.step, run.params, run.setup.mesh
  cfg = config.sampling.cfg_scale if cfg is None else float(cfg)
  sampler = dit.make_sampler(config, setup, cfg_scale=cfg, num_steps=steps,
                             eta=eta)
  label_kind = labels
  if classes:
    pool = np.asarray([int(c) for c in classes], np.int32)
    bad = pool[(pool < 0) | (pool > config.num_classes)]
    if bad.size:
      raise ValueError(f"--classes {bad.tolist()} are outside [0, "
                       f"{config.num_classes}] ({config.num_classes} = "
                       "unconditional)")
    labels = pool[generation.sample_labels(num, len(pool), label_kind, seed)]
  else:
    labels = generation.sample_labels(
        num, config.num_classes, label_kind, seed,
        input_pipeline.source_labels(config.input)
        if label_kind == "data" else None)
  batch = -(-min(batch_size, num) // mesh.size) * mesh.size
  # The scoring networks and references load before sampling: a missing file
  # fails now, not after hours of sampling.
  ev = _generation_eval(config)
  frames = config.input.frames
  nets = scoring.load_nets(
      config.input, mesh, "vitok_jax.sample",
      inception_weights=inception_weights or ev["inception_weights"],
      ref_stats=ref_stats or ev["ref_stats"],
      i3d_weights=i3d_weights or ev["i3d_weights"],
      ref_examples=ev["ref_examples"],
      inception_input=inception_input or ev["inception_input"])

  out_dir = fileio.join(workdir, "samples")
  name = f"{step}_cfg{cfg:g}"
  parts = sample_parts.Parts(
      fileio.join(out_dir, f"parts_{name}_seed{seed}"),
      dict(step=step, cfg=cfg, seed=seed, classes=list(map(int, classes or [])),
           labels=label_kind, tokenizer_step=int(setup.codec.step),
           num_steps=steps or config.sampling.num_steps,
           **({"flow_solver": config.sampling.solver}
              if config.diffusion.kind == "flow" else {}),
           eta=config.sampling.eta if eta is None else float(eta)))
  done = parts.covered(num)
  # Every process decides from the same listing, before any writes more.
  multihost_utils.sync_global_devices("vitok_jax.sample: parts listed")
  fn = lambda p, y, i, s: sampler(p, run.tok_params, run.stats, y, i, s)[0]
  t0, new = time.time(), 0
  for imgs, y, index in generation.generate(
      fn, params, labels, batch, mesh, seed, skip=lambda i: done[
          np.minimum(i, num - 1)] & (i < num)):
    parts.write(ops.to_uint8(imgs), y, index)
    new += len(index)
    logging.info("%d new samples on this process (%.2f samples/s), %d of %d "
                 "were written before", new, new / (time.time() - t0),
                 int(done.sum()), num)
  seconds = time.time() - t0
  multihost_utils.sync_global_devices("vitok_jax.sample: parts written")
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  logging.info("process %d: %d new samples in %.1f s (%.2f samples/s), peak "
               "host memory %.0f MiB", jax.process_index(), new, seconds,
               new / max(seconds, 1e-9), peak_mib)
  total_new = float(multihost.sum_over_processes(new))
  results = {"sample/num_new": total_new,
             "sample/num_reused": float(done.sum()),
             "sample/samples_per_sec": total_new / max(seconds, 1e-9),
             "sample/peak_host_mib_process0": peak_mib}
  if nets.inception_params is not None or nets.i3d_params is not None:
    samples = ((ops.value_range(imgs), y, index)
               for imgs, y, index in parts.read_sharded(num, batch))
    results.update(scoring.score(
        samples, num, nets, "sample", frames=frames, mesh=mesh,
        local_batch=batch // jax.process_count()))
  results["sample/num_samples"] = float(num)
  paths = dict(png=fileio.join(out_dir, f"samples_{name}.png"),
               npz=fileio.join(out_dir, f"samples_{name}.npz"))
  if multihost.is_main():
    parts.merge(num, paths["npz"])
    first = parts.head(min(num, 64))
    fileio.save_image(paths["png"],
                      common.grid_picture(ops.value_range(first)))
    fileio.write_json(fileio.join(out_dir, f"results_{name}.json"),
                      dict(step=step, cfg=cfg, seed=seed, labels=label_kind,
                           protocol=scoring.protocol("sample", results, nets,
                                                     config.input),
                           **results))
  multihost_utils.sync_global_devices("vitok_jax.sample: merged")
  line = scoring.summary("sample", results, label_kind, cfg)
  if config.input.frames > 1 or "sample/gfid" in results:
    line += f" [{scoring.protocol('sample', results, nets, config.input)}]"
  line += f"; step {step}, {new} new on this process -> {paths['png']}"
  if multihost.is_main():
    print(line, flush=True)
  return dict(paths, step=step, labels=labels, **results)


def define_flags() -> dict:
  """The command line's flags; defined only when run as a program, so that
  importing this module (tests, other tools) defines no absl flags."""
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "Overrides the config the DiT run saved with its "
      "checkpoint (optionally ':args'); default: that saved config.",
      lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "The DiT run's workdir.")
  _NUM = flags.DEFINE_integer("num", 64, "How many samples.")
  _CFG = flags.DEFINE_float("cfg", None, "Guidance scale (default: "
                            "config.sampling.cfg_scale); 1 = no guidance.")
  _CLASSES = flags.DEFINE_list("classes", None, "Class labels to draw from "
                               "(default: all classes).")
  _LABELS = flags.DEFINE_enum("labels", "random", ["random", "balanced",
                                                   "data"],
                              "random: uniform, seeded by --seed (DiT's "
                              "protocol); balanced: the classes in turn; "
                              "data: the labels of seeded random training "
                              "examples (LARP's gFVD protocol).")
  _STEPS = flags.DEFINE_integer("steps", None, "DDIM steps (default: "
                                "config.sampling.num_steps).")
  _ETA = flags.DEFINE_float("eta", None, "DDIM eta (default: config.sampling.eta).")
  _SEED = flags.DEFINE_integer("seed", 0, "Noise seed.")
  _BATCH = flags.DEFINE_integer("batch_size", 64, "Samples per jitted call.")
  _CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Step (default: latest).")
  _INCEPTION = flags.DEFINE_string("inception", None, "Inception .npz for "
                                   "gFID/gIS (tools/convert_inception.py).")
  _REF_STATS = flags.DEFINE_string("ref_stats", None, "Reference statistics "
                                   "(tools/compute_ref_stats.py).")
  _INCEPTION_INPUT = flags.DEFINE_enum(
      "inception_input", None, ["adm", "pytorch_fid"], "Inception's input "
      "convention (default: the config's generation evaluator's, ADM's).")
  _I3D = flags.DEFINE_string("i3d", None, "Video DiTs: I3D .npz for gFVD "
                             "(tools/convert_i3d.py; default the config's "
                             "generation evaluator's i3d_weights).")
  return dict(config=_CONFIG, workdir=_WORKDIR, num=_NUM, cfg=_CFG,
              classes=_CLASSES, steps=_STEPS, eta=_ETA, seed=_SEED,
              batch=_BATCH, checkpoint=_CHECKPOINT, inception=_INCEPTION,
              ref_stats=_REF_STATS, labels=_LABELS, i3d=_I3D,
              inception_input=_INCEPTION_INPUT)


def main(argv, f: dict):
  del argv
  if f["workdir"].value is None:
    raise app.UsageError("--workdir is required")
  cli.run_job(JOB, lambda: _job({k: flag.value for k, flag in f.items()}))


def _job(v: dict):
  config = v["config"]
  if config is None:
    config = cli.run_config(v["workdir"], v["checkpoint"],
                            lambda name: dit.default_config())
  if config.get("trainer") != "dit":
    raise ValueError(f"--workdir={v['workdir']}: {JOB} samples a DiT run "
                     "(config.trainer 'dit'), not a "
                     f"{config.get('trainer', 'tokenizer')!r} run")
  cli.check_config(JOB, dit.resolve_config, config)
  u.quiet_library_logs()
  startup.maybe_initialize()
  sample(config, v["workdir"], v["num"], cfg=v["cfg"], classes=v["classes"],
         steps=v["steps"], eta=v["eta"], seed=v["seed"],
         batch_size=v["batch"], checkpoint=v["checkpoint"],
         inception_weights=v["inception"], ref_stats=v["ref_stats"],
         labels=v["labels"], i3d_weights=v["i3d"],
         inception_input=v["inception_input"])


JOB = "vitok_jax.sample"


def run():
  """The console script `vitok-sample` (= python -m vitok_jax.sample)."""
  f = define_flags()
  app.run(lambda argv: main(argv, f), flags_parser=cli.flags_parser(JOB, __doc__))


if __name__ == "__main__":
  run()
