"""Checkpoints with Orbax: save, keep the last N, restore (falling back past corrupt ones).

A checkpoint holds params, EMA params, optimizer state, step (TrainState), the run's base
rng key, and JSON metadata (the data position, i.e. the number of global batches consumed).
Orbax writes each step into a temporary directory and renames it when complete, so a
crash or kill mid-save never replaces a good checkpoint with half of one. A workdir looks
like:

    WORKDIR/config.json          the ConfigDict of the run (written at train start)
    WORKDIR/checkpoints/<step>/  Orbax step directories

For sampling and evaluation, `load_workdir(workdir)` returns the saved config and the
restored checkpoint; `Checkpointer(dir).restore(step, template, rng_template)` restores
into any TrainState template (e.g. with other shardings).
"""

import dataclasses
import logging
import os
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from jaxdiff.config import schema
from jaxdiff.job import step as step_lib

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass(frozen=True)
class Restored:
  """A restored checkpoint: state, base rng key, metadata (e.g. data_position), step."""

  state: step_lib.TrainState
  rng: jax.Array
  metadata: dict[str, Any]
  step: int


def _abstract(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings where the leaves have them) of a pytree's leaves."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


def _payload(state: step_lib.TrainState, rng: jax.Array) -> dict[str, Any]:
  return {"state": flax.serialization.to_state_dict(state), "rng": rng}


class Checkpointer:
  """An Orbax CheckpointManager over DIR: async saves, keeps the newest `max_to_keep`."""

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None,
               async_save: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.directory = epath.Path(directory)
    if not self.directory.is_absolute():  # Orbax needs absolute paths; keeps gs:// as is.
      self.directory = epath.Path(os.path.abspath(directory))
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("payload", "metadata"))

  def all_steps(self) -> list[int]:
    """Steps of the finished checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: step_lib.TrainState, rng: jax.Array, *,
           metadata: dict[str, Any]) -> None:
    """Starts saving (asynchronously when enabled); a no-op if `step` is already saved."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        payload=ocp.args.StandardSave(_payload(state, rng)),
        metadata=ocp.args.JsonSave(metadata)), force=True)

  def restore(self, step: int, template: step_lib.TrainState,
              rng_template: jax.Array) -> Restored:
    """Restores `step` into the structure, dtypes and shardings of the templates.

    The templates may be abstract (jax.ShapeDtypeStruct leaves, e.g. from jax.eval_shape).
    """
    restored = self._manager.restore(step, args=ocp.args.Composite(
        payload=ocp.args.StandardRestore(_abstract(_payload(template, rng_template))),
        metadata=ocp.args.JsonRestore()))
    payload = restored["payload"]
    state = flax.serialization.from_state_dict(template, payload["state"])
    return Restored(state=state, rng=payload["rng"], metadata=dict(restored["metadata"]),
                    step=step)

  def restore_latest(self, template: step_lib.TrainState, rng_template: jax.Array, *,
                     set_aside_unreadable: bool = False) -> Restored | None:
    """Restores the newest readable checkpoint; None when there is none at all.

    A checkpoint that fails to restore (corrupt or partly deleted) is reported with a
    warning and the next older one is tried; with `set_aside_unreadable` (for resuming
    training) its directory is renamed to `<step>.unreadable`, so that the resumed run
    can save that step again and the bad files stay for inspection. Raises RuntimeError
    if checkpoints exist but none can be read, rather than silently starting over.
    """
    steps = self.all_steps()
    errors = []
    for step in reversed(steps):
      try:
        return self.restore(step, template, rng_template)
      except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
        logging.warning("Checkpoint %s/%d is unreadable (%s: %s); trying the previous one.",
                        self.directory, step, type(e).__name__, e)
        errors.append(f"step {step}: {type(e).__name__}: {e}")
        if set_aside_unreadable:
          self._set_aside(step)
    if steps:
      raise RuntimeError(f"No readable checkpoint in {self.directory}: " + "; ".join(errors))
    return None

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(self.directory / f"{step}.unreadable")
    multihost_utils.sync_global_devices(f"jaxdiff_set_aside_checkpoint_{step}")
    self._manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any got a preemption notice (multi-process runs)."""
    return self._manager.reached_preemption(step)

  def wait_until_finished(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.close()


def write_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
  """Writes WORKDIR/config.json atomically (temporary file, then rename)."""
  path = epath.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (CONFIG_FILE + ".tmp")
  tmp.write_text(config.to_json(indent=2))
  tmp.replace(path)


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The ConfigDict a training run saved in WORKDIR/config.json."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"No {CONFIG_FILE} in workdir {os.fspath(workdir)!r}: not a "
                            "jaxdiff training workdir, or training never started there.")
  return schema.config_from_json(path.read_text())


def load_workdir(workdir: str | os.PathLike, *, step: int | None = None,
                 sharding: jax.sharding.Sharding | None = None
                 ) -> tuple[ml_collections.ConfigDict, Restored]:
  """Loads a training workdir: (its saved config, the restored checkpoint).

  Args:
    workdir: the `--workdir` of a train.py run.
    step: the checkpoint step to load; None = the newest readable one (falling back past
      corrupt ones with a warning).
    sharding: where every array goes; default: replicated on the first local device.

  Returns `(config, restored)`; sample with `restored.state.ema_params` and
  `jaxdiff.config.builders.build_model(config)` (`UNet(**config.model)` for a U-Net run).
  """
  config = read_config(workdir)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          step_lib.abstract_train_state(config))
  rng_template = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding)
  checkpointer = Checkpointer(epath.Path(workdir) / CHECKPOINT_DIR, max_to_keep=None,
                              async_save=False)
  try:
    if step is None:
      restored = checkpointer.restore_latest(template, rng_template)
      if restored is None:
        raise FileNotFoundError(f"No checkpoint in {checkpointer.directory}.")
    elif step not in checkpointer.all_steps():
      raise FileNotFoundError(f"No checkpoint for step {step} in {checkpointer.directory}; "
                              f"available steps: {checkpointer.all_steps()}.")
    else:
      restored = checkpointer.restore(step, template, rng_template)
  finally:
    checkpointer.close()
  return config, restored
