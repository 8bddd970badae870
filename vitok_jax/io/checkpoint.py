"""Orbax checkpoints of the train state, the data iterator and the config.

Layout: <workdir>/checkpoints/<step>/{state,data,config}. Saves are
asynchronous (training continues while arrays are written) and atomic (Orbax
writes to a temporary folder and renames it), so a killed run resumes from the
last complete step. Restores take target shardings, so a checkpoint written on
one mesh restores onto any other.
"""
import json
import logging
import threading
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from vitok_jax.io import fileio
from vitok_jax.parallel import sharding as sh


class Checkpointer:

  def __init__(self, workdir: str, *, max_to_keep: Optional[int] = 3,
               async_save: bool = True):
    self.directory = fileio.join(fileio.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "config"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_state=None, config=None,
           force: bool = False) -> bool:
    items = dict(state=ocp.args.StandardSave(state),
                 data=ocp.args.JsonSave(data_state or {}),
                 config=ocp.args.JsonSave(_config_to_dict(config)))
    return self.manager.save(int(step), args=ocp.args.Composite(**items),
                             force=force)

  def restore(self, abstract_state, shardings, step: Optional[int] = None):
    """-> (state placed with `shardings`, data iterator state, config dict)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}")
    if step not in self.manager.all_steps():
      raise FileNotFoundError(f"No checkpoint for step {step} in "
                              f"{self.directory}; have {self.all_steps()}")
    target = sh.with_sharding(abstract_state, shardings)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
    return out["state"], out["data"], out["config"]

  def restore_latest_intact(self, abstract_state, shardings):
    """restore() of the newest step that loads. A damaged one is moved to
    <workdir>/checkpoints_damaged/<step> (kept for a post-mortem, out of
    Orbax's way) with a warning naming it, and the previous step is tried."""
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return self.restore(abstract_state, shardings, step)
      except Exception as e:  # pylint: disable=broad-except
        damaged = fileio.join(fileio.dirname(self.directory),
                              "checkpoints_damaged", str(step))
        logging.warning("Checkpoint %s/%d is damaged (%s: %s); moving it to "
                        "%s and falling back to the previous step",
                        self.directory, step, type(e).__name__, e, damaged)
        fileio.makedirs(fileio.dirname(damaged))
        fileio.rmtree(damaged)
        fileio.move(fileio.join(self.directory, str(step)), damaged)
        self.manager.reload()
    raise FileNotFoundError(f"No intact checkpoint left in {self.directory}")

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def abandon(self, timeout_s: float = 60.0) -> None:
    """On a failure: finish a pending save within `timeout_s`, else leave it
    (Orbax writes to a temporary folder, so the last complete step stays).
    Never raises and never blocks longer than the timeout."""
    def close():
      try:
        self.close()
      except Exception as e:  # pylint: disable=broad-except
        logging.error("Discarding the pending checkpoint save: %s: %s",
                      type(e).__name__, e)
    t = threading.Thread(target=close, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
      logging.error("A pending checkpoint save did not finish in %.0f s; it is "
                    "discarded", timeout_s)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _config_to_dict(config) -> dict:
  if config is None:
    return {}
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return dict(config)


def step_dir(workdir: str, step: Optional[int] = None) -> Tuple[str, int]:
  """(folder, step) of a workdir's checkpoint: the given or the latest step."""
  ckpt_dir = fileio.join(fileio.abspath(workdir), "checkpoints")
  steps = sorted(int(s) for s in fileio.listdir(ckpt_dir)
                 if s.isdigit()) if fileio.isdir(ckpt_dir) else []
  if not steps:
    raise FileNotFoundError(f"No checkpoint in {ckpt_dir}")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"No checkpoint for step {step} in {ckpt_dir}; "
                            f"have {steps}")
  return fileio.join(ckpt_dir, str(step)), step


def load_state_tree(path_or_workdir: str, step: Optional[int] = None,
                    item: str = "state") -> Any:
  """The saved train state as host numpy arrays, without any target tree.

  Accepts a workdir (its latest or given step) or a step folder. Used by the
  stage-2 initialisation and the PyTorch export.
  """
  path = fileio.abspath(path_or_workdir)
  if fileio.isdir(fileio.join(path, "checkpoints")):
    path, _ = step_dir(path, step)
  item_dir = fileio.join(path, item)
  if not fileio.isdir(item_dir):
    raise FileNotFoundError(f"{item_dir} is not an Orbax checkpoint item")
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(item_dir)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    restore_args = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckptr.restore(item_dir, restore_args=restore_args)
