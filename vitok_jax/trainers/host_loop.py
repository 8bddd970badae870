"""The host loop every trainer shares: data -> jitted step -> finite checks
-> logs -> checkpoints -> pictures -> evaluators, with exact resume.

A trainer (trainers/tokenizer.py, trainers/dit.py) describes itself as a
`Task`: its state's shapes and shardings, how to make a fresh state, the
jitted step, its data, its evaluators and its pictures. The loop knows
nothing else of a trainer (what the trainers' steps share is in
trainers/common.py). Everything else is here, once:

  * the workdir lock and SIGTERM/SIGINT handling (save this step, exit
    128 + signal);
  * resume from the newest intact checkpoint (state + data iterator), with
    the rows a killed run logged after its last save dropped;
  * unreadable records, as the input iterator counts them
    (input_pipeline.CountingIterator), against the task's max_bad_fraction;
  * per-step "finite" flags read at log steps and before every save, so a
    non-finite state is never written;
  * metrics (TensorBoard + metrics.jsonl), pictures (TensorBoard and
    <workdir>/<name>.png), evaluators every `log_steps` and at the end, whose
    summary lines are printed last.
"""
import dataclasses
import logging
import time
from typing import Any, Callable, Dict, NamedTuple, Optional

from clu import parameter_overview  # parameter_overview imports without TensorFlow
import jax
import numpy as np

from vitok_jax import config_utils
from vitok_jax import flops
from vitok_jax.data import input_pipeline
from vitok_jax.evaluators import common as evaluators
from vitok_jax.io import checkpoint as ckpt_lib
from vitok_jax.io import fileio
from vitok_jax.io import metrics_writer
from vitok_jax.io import workdir_lock
from vitok_jax.parallel import sharding as sh
from vitok_jax.parallel import stop_request
import vitok_jax.utils as u


class Task(NamedTuple):
  """What a trainer hands the host loop."""
  abstract_state: Any  # shapes of the train state (a dict with "step")
  state_sharding: Any
  init_state: Callable[[], Any]  # a fresh, sharded state (seeded init, init_from)
  train_step: Callable[[Any, dict], Any]  # (state, local batch) -> (state, measurements)
  train_data: Any  # grain IterDataset of local batches (dicts)
  examples_per_step: int  # images (frames) per step, for images/s
  log_line: Callable[[dict], str]  # host measurements -> "loss .. rec .."
  evaluators: Dict[str, Any]  # name -> .run(params, final), .log_steps, [.summary]
  pictures: Callable[[Any], Dict[str, np.ndarray]]  # eval params -> uint8 images
  description: str  # "ViTok S-B/16 with 22.1M params"
  eval_params: Callable[[Any], Any]  # state -> what evaluators and pictures see
  max_bad_fraction: float = 0.01  # unreadable records tolerated (of those read)
  flops_per_step: float = 0.0  # model FLOPs of one global step (flops.py), for MFU


# The keys every trainer's config has for the loop, and the rule each
# satisfies (config_utils.check_values).
LOOP_VALIDATORS = {
    "total_steps": config_utils.POSITIVE, "log_every": config_utils.POSITIVE,
    "ckpt_every": config_utils.POSITIVE, "keep_ckpts": config_utils.POSITIVE,
    "image_every": config_utils.NON_NEGATIVE,
    "num_preview": config_utils.POSITIVE,
    "ema_decay": config_utils.FRACTION,
    "peak_tflops": config_utils.NON_NEGATIVE,
    "profile_steps": config_utils.NON_NEGATIVE,
    **input_pipeline.VALIDATORS,
}


def loop_config(c, *, total_steps: int, log_every: int, ckpt_every: int,
                image_every: int, num_preview: int):
  """Sets the loop's keys on a trainer's default config `c`."""
  c.seed = 0
  c.total_steps = total_steps
  c.log_every = log_every
  c.ckpt_every = ckpt_every
  c.keep_ckpts = 3
  c.async_ckpt = True
  c.image_every = image_every  # the picture; 0 = only at the end
  c.num_preview = num_preview
  # Tuples, not lists: the command line can set tuples
  # (--config.mesh="(('data', -1), ('fsdp', 2))").
  # MFU's peak per device in TFLOP/s; 0: by device kind (flops.PEAK_TFLOPS).
  c.peak_tflops = 0.0
  # > 0: a jax.profiler trace of that many steps, from the second step this
  # run takes (the first compiles), in <workdir>/profile (TensorBoard).
  c.profile_steps = 0
  c.mesh = (("data", -1), ("fsdp", 1))
  c.sharding = dict(rules=(), fsdp_min_size=2**18)
  return c


def is_due(step: int, every: int, last: int) -> bool:
  """The one rule for "is it time to log, save, draw or evaluate": every
  `every` steps (0 = never) and at the last step of this run."""
  return step == last or bool(every and step % every == 0)


def train_and_evaluate(config, workdir: str,
                       make_task: Callable[[Any, Any, str], Task], *,
                       max_steps: Optional[int] = None) -> dict:
  """Trains until config.total_steps (or `max_steps` more steps in this run,
  which simulates a preemption in tests). Returns the last measurements.

  `config` is resolved (defaults merged, ranges checked) by the trainer;
  make_task(config, mesh, workdir) builds its Task. Holds the workdir's lock;
  SIGTERM/SIGINT save the current step and raise StopRequested; any other
  failure leaves the last good checkpoint and re-raises at once.
  """
  fileio.makedirs(workdir)
  with workdir_lock.WorkdirLock(workdir), stop_request.StopRequest() as stop:
    return _train(config, workdir, make_task, max_steps, stop)


def _train(config, workdir, make_task, max_steps, stop) -> dict:
  mesh = sh.make_mesh(config.mesh)
  task = make_task(config, mesh, workdir)
  writer = metrics_writer.MetricWriter(workdir)
  logging.info("Mesh %s; %s", dict(mesh.shape), task.description)
  if jax.process_index() == 0:
    writer.write_texts(0, {"config": config.to_json_best_effort(indent=2)})
    logging.info("Parameters:\n%s", parameter_overview.get_parameter_overview(
        task.abstract_state["params"], include_stats=False))

  train_it = input_pipeline.CountingIterator(iter(task.train_data))
  ckpt = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_ckpts,
                               async_save=config.async_ckpt)
  try:
    if ckpt.latest_step() is not None:
      state, data_state, _ = ckpt.restore_latest_intact(task.abstract_state,
                                                        task.state_sharding)
      train_it.set_state(data_state)
      logging.info("Resumed from step %d", int(state["step"]))
    else:
      state = task.init_state()
    start = int(state["step"])
    writer.drop_rows_after(start)  # steps a killed run logged past its save
    last = config.total_steps if max_steps is None else min(
        config.total_steps, start + max_steps)
    run = _Run(workdir=workdir, config=config, task=task, every=_Every.of(config),
               writer=writer, ckpt=ckpt, train_it=train_it, stop=stop,
               start=start, last=last)
    measurements = _loop(run, state)
  except BaseException:
    ckpt.abandon()  # the last complete checkpoint stays
    writer.close()
    raise
  ckpt.close()
  writer.close()
  if stop.signum is not None:
    stop.exit()
  return measurements


class _Every(NamedTuple):
  """The loop's own config keys: when it logs, saves and draws."""
  total_steps: int
  log: int
  ckpt: int
  image: int

  @classmethod
  def of(cls, config) -> "_Every":
    return cls(config.total_steps, config.log_every, config.ckpt_every,
               config.image_every)


@dataclasses.dataclass
class _Run:
  """One run of the loop: what it steps, where it writes, when it stops."""
  workdir: str
  config: Any  # stored with each checkpoint (the eval job restores it)
  task: Task
  every: _Every
  writer: Any  # metrics_writer.MetricWriter
  ckpt: Any  # ckpt_lib.Checkpointer
  train_it: Any  # input_pipeline.CountingIterator
  stop: Any  # stop_request.StopRequest
  start: int  # the step it resumed at (0: a fresh run)
  last: int  # the step it stops after


def _loop(run: _Run, state) -> dict:
  """From step run.start + 1 to run.last (or a stop request)."""
  task, writer, ckpt, train_it = run.task, run.writer, run.ckpt, run.train_it
  every, last, stop, workdir = run.every, run.last, run.stop, run.workdir
  summaries = []  # one line per evaluator, from the final evaluation

  def run_evals(step, final):
    for name, ev in task.evaluators.items():
      if is_due(step, ev.log_steps, last):  # the last step included
        results = dict(ev.run(task.eval_params(state), final=final))
        scalars = evaluators.write_results(writer, step, results)
        logging.info("eval %s at step %d: %s", name, step, scalars)
        if final and hasattr(ev, "summary"):
          summaries.append(ev.summary(scalars))

  def write_pictures(step):
    pictures = task.pictures(task.eval_params(state))
    writer.write_images(step, pictures)
    if jax.process_index() == 0:
      for name, pic in pictures.items():
        fileio.save_image(fileio.join(workdir, f"{name}.png"), pic)

  finite_flags = []  # (step, device bool) not yet read by the host

  def check_finite(step, measurements):
    """Raises naming the first non-finite step since the last check; so no
    non-finite state is ever saved (this runs before every save)."""
    flags = jax.device_get([f for _, f in finite_flags])
    bad = [s for (s, _), ok in zip(finite_flags, flags) if not ok]
    finite_flags.clear()
    if bad:
      u.check_finite(
          host_measurements(measurements), step, bad[0],
          note=f"The last good checkpoint, step {ckpt.latest_step()}, is "
          "kept; lower the lr or look at the data of that step.")

  measurements = {}
  t0, n_ex, t_start = time.time(), 0, time.time()
  per_step = task.examples_per_step
  peak = peak_flops_per_device(run.config)
  profile = Profile(run.config.get("profile_steps", 0), run.start,
                    fileio.join(workdir, "profile"))
  step = run.start
  for step in range(run.start + 1, last + 1):
    profile.at(step, state)
    local = next(train_it)
    # Unreadable records of this process since (re)start.
    skipped, read = train_it.skipped, train_it.read
    input_pipeline.check_bad_fraction(skipped, read, task.max_bad_fraction)
    state, measurements = task.train_step(state, local)
    finite_flags.append((step, measurements["finite"]))
    n_ex += per_step
    stopping = stop.requested()
    if is_due(step, every.log, last):
      check_finite(step, measurements)
      measurements = host_measurements(measurements)
      dt = time.time() - t0
      speed = dict(images_per_sec=n_ex / dt,
                   step_time_ms=1000 * dt * per_step / n_ex,
                   **performance(task.flops_per_step, dt * per_step / n_ex,
                                 peak))
      writer.write_scalars(step, {**measurements, **speed,
                                  "data/skipped_records": skipped})
      if skipped:
        logging.warning("%d unreadable training records skipped so far (%.2f%%"
                        " of %d read); the warnings above name them", skipped,
                        100 * skipped / read, read)
      eta = (every.total_steps - step) * dt * per_step / n_ex
      logging.info("step %d/%d %s | %.1f img/s%s | ETA %s", step,
                   every.total_steps, task.log_line(measurements),
                   speed["images_per_sec"], progress_text(speed),
                   _fmt_time(eta))
      t0, n_ex = time.time(), 0
    if is_due(step, every.ckpt, last) or stopping:
      check_finite(step, measurements)
      if step not in ckpt.all_steps():
        ckpt.save(step, state, train_it.get_state(), run.config,
                  force=stopping)
    if stopping:
      ckpt.wait()  # synchronously: the process is about to end
      logging.warning("Stopped at step %d, saved; run the same command to "
                      "resume", step)
      break
    if is_due(step, every.image, last):
      write_pictures(step)
    run_evals(step, final=step == last)
  profile.stop(state)
  logging.info("Done: %d steps in %.1fs", step - run.start,
               time.time() - t_start)
  if jax.process_index() == 0:
    for line in summaries:
      print(line, flush=True)
  return host_measurements(measurements)


def peak_flops_per_device(config):
  """config.peak_tflops, else the device kind's peak (None: unknown)."""
  if config.get("peak_tflops", 0.0):
    return float(config.peak_tflops) * 1e12
  return flops.peak_flops(jax.devices()[0].device_kind)


def performance(flops_per_step: float, step_seconds: float, peak,
                memory_stats=None) -> dict:
  """MFU (model FLOPs / step time / the devices' peak; absent without a
  known peak or FLOP count) and device memory of the first local device in
  GiB (absent where the backend reports none, as on CPU)."""
  out = {}
  if flops_per_step and peak and step_seconds > 0:
    out["perf/mfu"] = flops_per_step / step_seconds / (peak * jax.device_count())
  if memory_stats is None:
    memory_stats = jax.local_devices()[0].memory_stats()
  if memory_stats:
    gib = lambda k: memory_stats.get(k, 0) / 2**30
    out["perf/device_memory_gib"] = gib("bytes_in_use")
    out["perf/device_peak_memory_gib"] = gib("peak_bytes_in_use")
    if memory_stats.get("bytes_limit"):
      out["perf/device_memory_limit_gib"] = gib("bytes_limit")
  return out


def progress_text(speed: dict) -> str:
  """' | MFU 41.2% | mem 30.1/80.0 GiB' (what is known) for the log line."""
  text = ""
  if "perf/mfu" in speed:
    text += f" | MFU {100 * speed['perf/mfu']:.1f}%"
  if "perf/device_peak_memory_gib" in speed:
    limit = speed.get("perf/device_memory_limit_gib")
    text += (f" | mem {speed['perf/device_peak_memory_gib']:.1f}"
             + (f"/{limit:.1f}" if limit else "") + " GiB")
  return text


class Profile:
  """A jax.profiler trace of `num` steps from the second step of this run
  (the first compiles), written to `log_dir` (TensorBoard's profile tab)."""

  def __init__(self, num: int, start: int, log_dir: str):
    self.first, self.end = start + 2, start + 2 + int(num)
    self.log_dir, self.on = log_dir, False
    self.enabled = int(num) > 0

  def at(self, step: int, state) -> None:
    """Called before `step` runs."""
    if not self.enabled:
      return
    if step == self.first:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.log_dir)
      self.on = True
      logging.info("Profiling steps %d to %d into %s", self.first,
                   self.end - 1, self.log_dir)
    elif step == self.end:
      self.stop(state)

  def stop(self, state) -> None:
    if self.on:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.on = False
      logging.info("Profile written to %s", self.log_dir)


def host_measurements(measurements) -> dict:
  """The step's measurements on the host, less the per-step finite flag."""
  return {k: v for k, v in jax.device_get(measurements).items()
          if k != "finite"}


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
