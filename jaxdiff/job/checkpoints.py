"""Checkpoints with Orbax: save, keep the last N, verify, restore (falling back past bad ones).

A checkpoint holds params, EMA params, optimizer state, step (TrainState), the run's base
rng key, and JSON metadata: the data position (the number of global batches consumed) and,
for every array, its shape, dtype and a checksum of its bits (`leaf_checksums`). Orbax
writes each step into a temporary directory and renames it when complete, so a crash or
kill mid-save never replaces a good checkpoint with half of one. A workdir looks like:

    WORKDIR/config.json          the ConfigDict of the run (written at train start)
    WORKDIR/checkpoints/<step>/  Orbax step directories

Restoring checks, in order: the metadata reads; its shapes and dtypes fit the requested
state (else `CheckpointMismatch`: another config, not damage, and nothing is touched);
the arrays read; their checksums and the step and data position agree. A checkpoint that
fails any check but the second is damaged: `restore_latest` warns in one line and falls
back to the previous one (when resuming training it also renames the damaged directory to
`<step>.unreadable`, so that the step can be saved again and the files stay for
inspection).

For sampling and evaluation, `load_workdir(workdir)` returns the saved config and the
restored checkpoint; `Checkpointer(dir).restore(step, template, rng_template)` restores
into any TrainState template (e.g. with other shardings).
"""

import contextlib
import dataclasses
import io
import logging
import os
import sys
from collections.abc import Iterator
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


class CheckpointMismatch(ValueError):
  """The checkpoint's arrays do not fit the requested state: it was written with another
  config. Not damage: the checkpoint is left as it is."""


class CheckpointDamaged(RuntimeError):
  """The checkpoint cannot be read, or what it reads is not what was saved."""


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


def _checksum(x: jax.Array) -> jax.Array:
  """sum_i (2 i + 1) * bits_i mod 2^32 over the flattened bits of `x` (uint32 words).

  Any change of one element changes the sum (an odd weight times a non-zero difference
  below 2^32 is not 0 mod 2^32); the sum does not depend on how `x` is sharded.
  """
  itemsize = jnp.dtype(x.dtype).itemsize
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  elif itemsize >= 4:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  else:
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * itemsize}")).astype(jnp.uint32)
  bits = bits.reshape(-1)
  weights = 2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1
  return jnp.sum(bits * weights, dtype=jnp.uint32)


@jax.jit
def _checksums(leaves: list[jax.Array]) -> list[jax.Array]:
  return [_checksum(leaf) for leaf in leaves]


def leaf_checksums(tree: Any) -> dict[str, int]:
  """{key path: checksum} of every array of `tree` (computed where the arrays live)."""
  paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(tree)[0])
  sums = jax.device_get(_checksums(list(leaves)))
  return {jax.tree_util.keystr(path): int(value) for path, value in zip(paths, sums)}


def _leaf_specs(tree: Any) -> dict[str, list[Any]]:
  """{key path: [shape, dtype name]} of every array (or ShapeDtypeStruct) of `tree`."""
  return {jax.tree_util.keystr(path): [list(leaf.shape), jnp.dtype(leaf.dtype).name]
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _one_line(error: BaseException) -> str:
  """`Type: first line of the message` (at most 300 characters)."""
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def _ignore_closed_loop_callbacks() -> None:
  """After a failed read, Orbax's reader threads still complete the read's other requests
  and call back into its event loop, which is closed by then: each callback ends as an
  unraisable "RuntimeError: Event loop is closed", hundreds of tracebacks on stderr. From
  the first failed read on, those (and only those) are dropped."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_callbacks", False):
    return

  def hook(unraisable: Any) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  """Silences Orbax's error logs, and the tracebacks its reader threads print when a
  failed read's event loop is gone, while a read may fail: the caller reports the
  failure in one line."""
  loggers = [logging.getLogger(name) for name in ("absl", "orbax", "asyncio")]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.CRITICAL)
  try:
    with contextlib.redirect_stderr(io.StringIO()):
      yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


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
    """Starts saving (asynchronously when enabled); a no-op if `step` is already saved.

    The metadata gets each array's shape, dtype and checksum under "leaves".
    """
    if step in self._manager.all_steps():
      return
    payload = _payload(state, rng)
    checksums = leaf_checksums(payload)
    leaves = {key: {"shape": shape, "dtype": dtype, "checksum": checksums[key]}
              for key, (shape, dtype) in _leaf_specs(payload).items()}
    self._manager.save(step, args=ocp.args.Composite(
        payload=ocp.args.StandardSave(payload),
        metadata=ocp.args.JsonSave({**metadata, "leaves": leaves})), force=True)

  def _read_metadata(self, step: int) -> dict[str, Any]:
    try:
      with _quiet_orbax():
        return dict(self._manager.restore(step, args=ocp.args.Composite(
            metadata=ocp.args.JsonRestore()))["metadata"])
    except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
      _ignore_closed_loop_callbacks()
      raise CheckpointDamaged(f"its metadata is unreadable ({_one_line(e)})") from None

  def restore(self, step: int, template: step_lib.TrainState,
              rng_template: jax.Array) -> Restored:
    """Restores `step` into the structure, dtypes and shardings of the templates.

    The templates may be abstract (jax.ShapeDtypeStruct leaves, e.g. from jax.eval_shape).
    Raises CheckpointMismatch if the saved arrays do not fit the templates and
    CheckpointDamaged if the checkpoint cannot be read or fails its checks.
    """
    metadata = self._read_metadata(step)
    leaves = metadata.pop("leaves", None)
    abstract = _abstract(_payload(template, rng_template))
    if leaves is not None:
      _check_fits(leaves, _leaf_specs(abstract), step=step)
    try:
      with _quiet_orbax():
        payload = self._manager.restore(step, args=ocp.args.Composite(
            payload=ocp.args.StandardRestore(abstract)))["payload"]
    except Exception as e:  # pylint: disable=broad-except  (Orbax raises many types)
      _ignore_closed_loop_callbacks()
      raise CheckpointDamaged(f"its arrays are unreadable ({_one_line(e)})") from None
    if leaves is not None:
      checksums = leaf_checksums(payload)
      bad = [key for key, leaf in leaves.items() if checksums.get(key) != leaf["checksum"]]
      if bad:
        raise CheckpointDamaged(f"{len(bad)} arrays differ from what was saved (checksums "
                                f"of {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    state = flax.serialization.from_state_dict(template, payload["state"])
    saved_step = int(state.step)
    if saved_step != step or metadata.get("data_position", step) != step:
      raise CheckpointDamaged(f"inconsistent metadata: directory step {step}, state step "
                              f"{saved_step}, data_position {metadata.get('data_position')}")
    return Restored(state=state, rng=payload["rng"], metadata=metadata, step=step)

  def restore_latest(self, template: step_lib.TrainState, rng_template: jax.Array, *,
                     set_aside_unreadable: bool = False) -> Restored | None:
    """Restores the newest good checkpoint; None when there is none at all.

    A damaged checkpoint (see the module docstring) is reported with one warning and the
    next older one is tried; with `set_aside_unreadable` (for resuming training) its
    directory is renamed to `<step>.unreadable`. A CheckpointMismatch is raised at once,
    touching nothing. Raises RuntimeError if checkpoints exist but none can be read,
    rather than silently starting over.
    """
    steps, restored, failures = self.all_steps(), None, []
    with _quiet_orbax():
      for step in reversed(steps):
        try:
          restored = self.restore(step, template, rng_template)
          break
        except CheckpointDamaged as e:
          failures.append((step, e))
          if set_aside_unreadable:
            self.set_aside(step, "unreadable")
    for step, error in failures:  # Logged here, where stderr is the real one again.
      logging.warning("Checkpoint %s/%d is unreadable: %s; falling back to the previous one.",
                      self.directory, step, error)
    if steps and restored is None:
      raise RuntimeError(f"No readable checkpoint in {self.directory}: " + "; ".join(
          f"step {step}: {error}" for step, error in failures))
    return restored

  def set_aside(self, step: int, reason: str) -> epath.Path:
    """Renames checkpoint `step` to `<step>.<reason>` (`.<n>` appended if taken), so that
    the step can be saved again; returns the new path. Every process must call it."""
    target = self.directory / f"{step}.{reason}"
    suffix = 1
    while target.exists():
      target = self.directory / f"{step}.{reason}.{suffix}"
      suffix += 1
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(target)
    multihost_utils.sync_global_devices(f"jaxdiff_set_aside_checkpoint_{step}")
    self._manager.reload()
    return target

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any got a preemption notice (multi-process runs)."""
    return self._manager.reached_preemption(step)

  def wait_until_finished(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.close()


def _check_fits(saved: dict[str, Any], wanted: dict[str, list[Any]], *, step: int) -> None:
  """Raises CheckpointMismatch listing how the saved arrays differ from the wanted ones."""
  differences = [f"{key} missing" for key in wanted if key not in saved]
  differences += [f"{key} not expected" for key in saved if key not in wanted]
  differences += [
      f"{key} is {saved[key]['dtype']}{saved[key]['shape']}, wanted {dtype}{shape}"
      for key, (shape, dtype) in wanted.items()
      if key in saved and [saved[key]["shape"], saved[key]["dtype"]] != [shape, dtype]]
  if differences:
    raise CheckpointMismatch(
        f"Checkpoint {step} does not fit this config ({len(differences)} differences: "
        f"{'; '.join(differences[:3])}{'; ...' if len(differences) > 3 else ''}): it was "
        "written with another model or optimizer config.")


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
      try:
        restored = checkpointer.restore(step, template, rng_template)
      except CheckpointDamaged as e:
        raise CheckpointDamaged(f"Checkpoint {checkpointer.directory}/{step} is unreadable: "
                                f"{e}.") from None
  finally:
    checkpointer.close()
  return config, restored
