"""The training job behind train.py: data, sharded jitted steps, checkpoints, logs, samples.

`train(config, workdir=...)` checks the config and what it names (the data's channels and
classes, evaluation splits and files: `_open_data`) before compiling or writing anything,
takes the workdir's lock (`workdir_lock`), refuses a config that changes what the
workdir's checkpoints mean (`validation.check_resume`), resumes from the newest good
checkpoint (or initialises), then runs the step loop on a ("data",) mesh over every
device of every process. The loop only dispatches the jitted step
(`jaxdiff.job.step.accumulating_train_step`, one compiled program with explicit
shardings): the loss and gradient norm are summed on the device, and the host reads them
only when a periodic action needs the device. The periodic actions, each with its own
interval, are the one list of `periodic_actions`:

  log         every `train.log_every` steps and at the end: mean loss and gradient norm,
              learning rate, steps/s, images/s, TFLOP/s and MFU (`jaxdiff.job.throughput`)
  checkpoint  every `train.checkpoint_every` steps and at the end
  posthoc_ema every `train.posthoc_every` steps and at the end, with
              `train.posthoc_sigma_rels`: snapshots of the power-function EMAs
              (`jaxdiff.job.posthoc_ema`)
  preemption  every step, host only: after SIGTERM save, stop and raise `Preempted`
  samples     every `train.sample_every` steps (0: only at the end): an EMA sample grid
  evaluation  every `eval.every` steps (0: never): `config.eval`'s metrics as eval/NAME

Before every action that reads the device (so before every save and at every log step)
the loop checks that no step so far was non-finite; if one was, it raises
FloatingPointError naming that step. A non-finite step leaves the state unchanged and
freezes the later ones (see `jaxdiff.job.step`), so nothing after it is saved; a
checkpoint that itself produced a non-finite loss is set aside (`_non_finite_error`).
Only process 0 writes logs and images; every process takes part in checkpointing (Orbax
coordinates).

Workdir: config.json, train.lock, checkpoints/<step>/, samples/step_<step>.png,
metrics.jsonl and TensorBoard event files.
"""

import dataclasses
import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import tqdm
from etils import epath

from jaxdiff import data, images, parallel
from jaxdiff.config import builders, categorical, objectives, validation
from jaxdiff.job import checkpoints as checkpointing
from jaxdiff.job import cli
from jaxdiff.job import distill, distributed
from jaxdiff.job import evaluation as eval_metrics
from jaxdiff.job import generation, inputs, latents
from jaxdiff.job import posthoc_ema
from jaxdiff.job import step as training
from jaxdiff.job import throughput as throughput_lib
from jaxdiff.job import workdir_lock
from jaxdiff.job.writers import MetricWriter


class Preempted(Exception):
  """Training stopped after SIGTERM (a preemption notice), with `step` saved; rerun it."""

  def __init__(self, step: int):
    super().__init__(f"Preempted (SIGTERM): saved step {step}; rerun to resume.")
    self.step = step


class _SigtermFlag:
  """Records SIGTERM (preemption notice) while installed; restores the old handler after."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class _Run:
  """A training job as the loop and its periodic actions see it."""

  config: ml_collections.ConfigDict
  workdir: epath.Path
  model: Any
  mesh: jax.sharding.Mesh
  shardings: Any                      # Of the TrainState's leaves.
  state: training.TrainState
  train_rng: jax.Array
  checkpointer: checkpointing.Checkpointer
  writer: MetricWriter
  learning_rate: optax.Schedule
  start_step: int
  sigterm: _SigtermFlag | None = None
  progress: Any = None
  step_fn: Callable[..., Any] | None = None  # The compiled step, from the first batch.
  throughput: throughput_lib.Throughput | None = None
  sums: training.MetricSums | None = None
  zero_sums: Callable[[], training.MetricSums] | None = None
  fetched: training.MetricSums | None = None  # Host copy of `sums` at `checked_step`.
  checked_step: int = -1
  interval_start: float = 0.0         # Since the last log (perf_counter seconds) ...
  excluded: float = 0.0               # ... minus the time spent in periodic actions.
  preempted: bool = False
  teacher: Any = None                 # Distillation: (the teacher's config, EMA params).

  @property
  def batch_sharding(self) -> jax.sharding.Sharding:
    return parallel.batch_sharding(self.mesh)

  @property
  def replicated(self) -> jax.sharding.Sharding:
    return parallel.replicated(self.mesh)


@dataclasses.dataclass(frozen=True)
class PeriodicAction:
  """An action of the training loop: runs after step `s` when `every` divides `s` (never
  when `every` is 0) and, with `at_end`, after the last step. `reads_device` actions wait
  for the device and check finiteness first; their time is left out of the throughput."""

  name: str
  every: int
  run: Callable[[_Run, int], None]
  at_end: bool = False
  reads_device: bool = True

  def due(self, step: int, *, last_step: int) -> bool:
    return (self.every > 0 and step % self.every == 0) or (self.at_end and step == last_step)


def _log(run: _Run, step: int) -> None:
  """Mean loss and gradient norm since the last log, learning rate and throughput."""
  now = time.perf_counter()
  sums = run.fetched
  count = max(int(sums.count), 1)
  steps_per_sec = int(sums.count) / max(now - run.interval_start - run.excluded, 1e-9)
  loss = float(sums.loss) / count
  run.writer.write_scalars(step, {
      "loss": loss, "grad_norm": float(sums.grad_norm) / count,
      "learning_rate": run.learning_rate(step - 1), "steps_per_sec": steps_per_sec,
      **run.throughput.scalars(steps_per_sec)})
  if run.progress is not None:
    run.progress.set_postfix(loss=f"{loss:.4f}")
  run.sums = run.zero_sums()
  run.interval_start, run.excluded = now, 0.0


def _save(run: _Run, step: int) -> None:
  """Starts saving the state after `step` steps (asynchronously when configured)."""
  run.checkpointer.save(step, run.state, run.train_rng, metadata={"data_position": step})


def _save_posthoc_ema(run: _Run, step: int) -> None:
  """Writes the tracked power-function EMAs after `step` steps (`jaxdiff.job.posthoc_ema`)."""
  posthoc_ema.save_snapshot(run.workdir, run.state, step,
                            tuple(run.config.train.posthoc_sigma_rels))


def _check_preemption(run: _Run, step: int) -> None:
  """After SIGTERM (on any process), saves `step` and stops the loop."""
  preempted = (run.sigterm.raised if jax.process_count() == 1
               else run.checkpointer.reached_preemption(step))
  if not preempted:
    return
  _check_finite(run, step)
  _save(run, step)
  run.checkpointer.wait_until_finished()
  run.preempted = True


def _save_samples(run: _Run, step: int) -> None:
  """An EMA sample grid with `config.sample`'s sampler: samples/step_<step>.png; for an
  autoencoder run test images above their reconstructions: reconstructions/step_<step>.png."""
  config = run.config
  if config.model.name == "autoencoder_kl":
    pictures, folder, rows = latents.reconstruction_grid(config, run.model,
                                                         run.state.ema_params), \
        "reconstructions", 2
  else:
    sample_rng = jax.random.PRNGKey(config.sample.seed)  # Grids at step s: fold_in(., s).
    pictures, folder, rows = images.to_uint8(generation.sample_batches(
        config, run.model, run.state.ema_params, jax.random.fold_in(sample_rng, step),
        generation.request_from_config(config), mesh=run.mesh)), "samples", None
  if jax.process_index() == 0:
    grid = images.save_grid(os.fspath(run.workdir / folder / f"step_{step:08d}.png"),
                            pictures, rows=rows)
    run.writer.write_image(step, f"{folder}_ema", grid)


def _evaluate(run: _Run, step: int) -> None:
  """`config.eval`'s metrics of the EMA parameters, logged as eval/NAME (process 0 writes)."""
  eval_config = run.config.eval
  eval_rng = jax.random.split(jax.random.PRNGKey(run.config.sample.seed))[1]
  scalars = eval_metrics.evaluate_during_training(
      run.config, run.model, run.state.ema_params, jax.random.fold_in(eval_rng, step),
      metrics=tuple(eval_config.metrics), num_samples=eval_config.num_samples,
      bpd_split=eval_config.bpd_split, bpd_examples=eval_config.bpd_examples,
      inception_weights=eval_config.inception_weights, cache_dir=eval_config.cache_dir)
  run.writer.write_scalars(step, {f"eval/{name}": value for name, value in scalars.items()})


def periodic_actions(config: ml_collections.ConfigDict) -> list[PeriodicAction]:
  """The training loop's actions, in the order they run after a step."""
  train_config = config.train
  return [
      PeriodicAction("log", train_config.log_every, _log, at_end=True),
      PeriodicAction("checkpoint", train_config.checkpoint_every, _save, at_end=True),
      PeriodicAction("posthoc_ema", train_config.posthoc_every, _save_posthoc_ema,
                     at_end=bool(train_config.posthoc_sigma_rels)),
      PeriodicAction("preemption", 1, _check_preemption, reads_device=False),
      PeriodicAction("samples", train_config.sample_every, _save_samples, at_end=True),
      PeriodicAction("evaluation", config.eval.every, _evaluate),
  ]


def _non_finite_error(run: _Run, sums: training.MetricSums) -> FloatingPointError:
  """The error for the first non-finite step. When its loss or gradient norm was not
  finite and the state it started from is a checkpoint, that checkpoint is a dead end
  (resuming it repeats the same step on the same batch), so it is set aside."""
  step, loss, grad_norm = int(sums.first_non_finite), float(sums.bad_loss), float(
      sums.bad_grad_norm)
  checkpointer = run.checkpointer
  checkpointer.wait_until_finished()
  inherent = not (np.isfinite(loss) and np.isfinite(grad_norm))
  what = ("loss or gradient norm" if inherent
          else "updated state (parameters, EMA or optimizer state)")
  message = (f"Non-finite {what} at step {step} (loss {loss}, gradient norm {grad_norm}); "
             "training stopped.")
  if inherent and step in checkpointer.all_steps():
    path = checkpointer.set_aside(step, "non_finite")
    return FloatingPointError(
        f"{message} Checkpoint {step} holds the state that produced it, so it was set aside "
        f"as {path}; a rerun resumes from step {(checkpointer.all_steps() or [0])[-1]}.")
  return FloatingPointError(f"{message} The checkpoints in {checkpointer.directory} (steps "
                            f"{checkpointer.all_steps()}) are untouched.")


def _check_finite(run: _Run, step: int) -> None:
  """Waits for the device, fetches the metric sums, raises if any step was not finite."""
  if run.checked_step == step:
    return
  sums = jax.device_get(run.sums)
  if int(sums.first_non_finite) >= 0:
    raise _non_finite_error(run, sums)
  run.fetched, run.checked_step = sums, step


def _step_objective(run: _Run) -> dict[str, Any]:
  """`train_step`'s objective options: the run's (`inputs.step_objective`), or a
  distillation run's loss (`job.distill`)."""
  if run.teacher is None:
    return inputs.step_objective(run.config)
  return {"loss_fn": distill.teacher_loss_fn(run.config, run.model, run.teacher)}


def _compile_step(run: _Run, batch: dict[str, jax.Array]) -> None:
  """Compiles the step for `batch`'s shapes and reads its FLOPs for the throughput logs."""
  config = run.config
  step = jax.jit(
      functools.partial(training.accumulating_train_step, **_step_objective(run),
                        ema_decay=config.train.ema_decay,
                        label_dropout=config.train.label_dropout,
                        num_classes=config.model.get("num_classes"),
                        posthoc_gammas=training.posthoc_gammas(config)),
      in_shardings=(run.shardings, run.replicated, run.batch_sharding, run.replicated),
      out_shardings=(run.shardings, run.replicated), donate_argnums=(0, 1))
  run.step_fn = step.lower(run.state, run.sums, batch, run.train_rng).compile()
  run.throughput = throughput_lib.Throughput(
      flops_per_step=throughput_lib.compiled_flops(run.step_fn),
      peak=throughput_lib.device_peak(jax.local_devices()[0]),
      num_devices=jax.device_count(), batch_size=config.train.batch_size)
  if jax.process_index() == 0:
    print(run.throughput.describe(), flush=True)


def _perform(run: _Run, action: PeriodicAction, step: int) -> None:
  if not action.reads_device:
    action.run(run, step)
    return
  _check_finite(run, step)
  start = time.perf_counter()
  action.run(run, step)
  run.excluded += time.perf_counter() - start


def _loop(run: _Run, batches: Iterator[dict[str, jax.Array]],
          actions: list[PeriodicAction]) -> None:
  """Runs the steps from `run.start_step` and the actions due after each."""
  last_step = run.config.train.num_steps
  run.zero_sums = jax.jit(training.MetricSums.zeros, out_shardings=run.replicated)
  run.sums = run.zero_sums()
  run.interval_start = time.perf_counter()
  for step, batch in zip(range(run.start_step, last_step), batches):
    if run.step_fn is None:
      _compile_step(run, batch)
      run.interval_start = time.perf_counter()  # Throughput without the compile time.
    run.state, run.sums = run.step_fn(run.state, run.sums, batch, run.train_rng)
    run.progress.update(1)
    done = step + 1
    for action in actions:
      if action.due(done, last_step=last_step):
        _perform(run, action, done)
      if run.preempted:
        return


def _open_data(config: ml_collections.ConfigDict) -> data.ImageSource:
  """The training data, checked against the config: channels, labels and num_classes,
  and the splits and labels that evaluation will need. Raises ConfigError."""
  data_config = config.data
  name = f"dataset {data_config.name!r} split {data_config.split!r}"
  source = data.make_source(data_config)
  if len(source) == 0:
    raise validation.ConfigError(f"The {name} is empty.")
  (image,), labels = source.read([0])
  if image.ndim != 3 or image.shape[-1] != data_config.channels:
    raise validation.ConfigError(
        f"config.data.channels={data_config.channels}, but the {name} has images of shape "
        f"{image.shape} ({image.shape[-1]} channels).")
  num_classes = config.model.get("num_classes")
  if config.conditioner.name == "text" and labels is None:
    raise validation.ConfigError(
        f"config.conditioner.name='text' builds captions from the labels, but the {name} has "
        "none.")
  if num_classes is not None and labels is None:
    raise validation.ConfigError(
        f"config.model.num_classes={num_classes} needs labels, but the {name} has none.")
  if num_classes is not None and (source.num_classes or 0) > num_classes:
    raise validation.ConfigError(
        f"config.model.num_classes={num_classes}, but the {name} has {source.num_classes} "
        f"classes (labels 0..{source.num_classes - 1}).")
  try:
    categorical.check_data(config, source)
  except ValueError as e:
    raise validation.ConfigError(str(e)) from None
  _check_eval_data(config, has_labels=labels is not None)
  return source


def _check_eval_data(config: ml_collections.ConfigDict, *, has_labels: bool) -> None:
  """What periodic evaluation will read and write exists, before anything is compiled."""
  eval_config = config.eval
  if not eval_config.every:
    return
  if "classifier_fd" in eval_config.metrics and not has_labels:
    raise validation.ConfigError(
        f"config.eval.metrics has 'classifier_fd', which trains a classifier on the labels; "
        f"dataset {config.data.name!r} has none.")
  if "bpd" in eval_config.metrics:
    split_config = config.data.copy_and_resolve_references()
    split_config.split = eval_config.bpd_split or config.data.split
    try:
      data.make_source(split_config)
    except Exception as e:  # pylint: disable=broad-except  (TFDS, IDX: many types)
      raise validation.ConfigError(
          f"config.eval.bpd_split={eval_config.bpd_split!r}: dataset {config.data.name!r} "
          f"cannot open it ({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from None
  cache_dir = eval_config.cache_dir or eval_metrics.default_cache_dir()
  reason = cli.unwritable_reason(cache_dir)
  if reason:
    raise validation.ConfigError(f"config.eval.cache_dir={cache_dir!r} is not writable "
                                 f"({reason}).")


def _abstract_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                    ) -> tuple[training.TrainState, Any, Callable[[jax.Array], Any]]:
  """(the state with ShapeDtypeStruct leaves and shardings, the shardings, init_fn)."""
  model, tx = builders.build_model(config), training.build_optimizer(config)
  init_fn = functools.partial(training.init_train_state, model=model, tx=tx,
                              image_shape=builders.model_input_shape(config),
                              posthoc_profiles=len(config.train.posthoc_sigma_rels))
  abstract_state = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  shardings = distributed.state_shardings(abstract_state, mesh,
                                          shard_params=config.train.shard_params,
                                          min_size=config.train.shard_min_size)
  template = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_state, shardings)
  return template, shardings, init_fn


def _initial_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                   checkpointer: checkpointing.Checkpointer, initial_params: Any = None
                   ) -> tuple[training.TrainState, jax.Array, Any, bool]:
  """(state, base rng key, state shardings, restored?): the newest good checkpoint's, else
  freshly initialised ones. Raises ConfigError if the checkpoint does not fit the config."""
  replicated = parallel.replicated(mesh)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.train.seed))
  template, shardings, init_fn = _abstract_state(config, mesh)
  rng_template = jax.ShapeDtypeStruct(train_rng.shape, train_rng.dtype, sharding=replicated)
  try:
    restored = checkpointer.restore_latest(template, rng_template, set_aside_unreadable=True)
  except checkpointing.CheckpointMismatch as e:
    raise validation.ConfigError(f"{e} Resume with that config, or use another --workdir.")
  if restored is None:
    state = jax.jit(init_fn, out_shardings=shardings)(init_rng)
    if initial_params is not None:  # A distillation round starts from its teacher.
      params = jax.device_put(initial_params, shardings.params)
      state = state.replace(params=params, ema_params=jax.tree.map(jax.numpy.copy, params))
    # From a host value: device_put of a local jax.Array breaks across processes.
    return state, jax.device_put(np.asarray(train_rng), replicated), shardings, False
  if restored.step > config.train.num_steps:
    raise validation.ConfigError(
        f"config.train.num_steps={config.train.num_steps} is below step {restored.step} of "
        f"the checkpoint this run resumes; set it to at least {restored.step}.")
  return restored.state, restored.rng, shardings, True


def _check_resume(config: ml_collections.ConfigDict, workdir: epath.Path,
                  checkpointer: checkpointing.Checkpointer, *, allow_changes: bool) -> None:
  """Refuses (ConfigError) to resume checkpoints with a config that changes their meaning,
  comparing with the saved config.json before anything is restored or written."""
  if not checkpointer.all_steps() or not (workdir / checkpointing.CONFIG_FILE).exists():
    return
  try:
    saved = checkpointing.read_config(workdir)
  except ValueError as e:
    raise validation.ConfigError(f"{workdir / checkpointing.CONFIG_FILE}: {e}") from None
  changes = validation.check_resume(saved, config, allow_changes=allow_changes)
  if changes and jax.process_index() == 0:
    print("Resuming with a changed config: " + ", ".join(
        f"config.{name}: {old!r} -> {new!r}" for name, (old, new) in changes.items()) + ".",
          flush=True)


def _setup(config: ml_collections.ConfigDict, workdir: epath.Path, *,
           allow_config_change: bool) -> _Run:
  """Builds the mesh and restores (after checking the config against the saved one) or
  initialises the state; then writes config.json and opens the logs."""
  mesh = parallel.make_mesh()
  train_config = config.train
  checkpointer = checkpointing.Checkpointer(
      workdir / checkpointing.CHECKPOINT_DIR, max_to_keep=train_config.keep_checkpoints,
      async_save=train_config.async_checkpointing)
  try:
    _check_resume(config, workdir, checkpointer, allow_changes=allow_config_change)
    teacher = None
    if config.distill.teacher_workdir is not None:
      teacher = distill.load_teacher(config)
    initial = None if teacher is None or config.diffusion.objective in objectives.CONSISTENCY \
        else teacher[1]
    state, train_rng, shardings, restored = _initial_state(config, mesh, checkpointer, initial)
  except BaseException:
    checkpointer.close()
    raise
  start_step = int(state.step)
  if jax.process_index() == 0:
    checkpointing.write_config(workdir, config)
    print(f"{'Resuming from step ' + str(start_step) if restored else 'Starting'}: "
          f"{jax.device_count()} devices, {jax.process_count()} processes, "
          f"{sum(x.size for x in jax.tree.leaves(state.params)):,} parameters.", flush=True)
  return _Run(
      config=config, workdir=workdir, model=builders.build_model(config), mesh=mesh,
      shardings=shardings, state=state, train_rng=train_rng, checkpointer=checkpointer,
      writer=MetricWriter(workdir, enabled=jax.process_index() == 0, resume_step=start_step),
      learning_rate=training.learning_rate_schedule(
          learning_rate=train_config.learning_rate, warmup_steps=train_config.warmup_steps),
      start_step=start_step, teacher=teacher)


def _train_locked(config: ml_collections.ConfigDict, workdir: epath.Path,
                  source: data.ImageSource, *, allow_config_change: bool) -> _Run:
  """Set-up and the step loop, in a workdir this job owns."""
  coder = latents.training_coder(config, parallel.make_mesh())  # records the scale factor
  run = _setup(config, workdir, allow_config_change=allow_config_change)
  train_config = config.train
  batches = inputs.model_batches(config, data.device_batches(
      source, config.data, seed=train_config.seed, batch_size=train_config.batch_size,
      start_step=run.start_step, num_steps=train_config.num_steps,
      sharding=run.batch_sharding), coder=coder, start_step=run.start_step)
  run.progress = tqdm.tqdm(total=train_config.num_steps, initial=run.start_step, unit="step",
                           disable=jax.process_index() != 0)
  with _SigtermFlag() as run.sigterm:
    try:
      _loop(run, batches, periodic_actions(config))
    finally:
      batches.close()
      run.progress.close()
      run.checkpointer.close()
      run.writer.close()
  return run


def train(config: ml_collections.ConfigDict, *, workdir: str | os.PathLike,
          allow_config_change: bool = False) -> training.TrainState:
  """Trains (or resumes training) as `config` says, writing into `workdir`.

  Returns the final TrainState. Before compiling anything (and before writing into the
  workdir) raises ConfigError (a ValueError) for a config that cannot be trained on its
  data, or cannot resume the workdir's checkpoints (unless `allow_config_change`: see
  `validation.check_resume`), and `workdir_lock.WorkdirBusy` when another job trains in
  `workdir`. Raises FloatingPointError on a non-finite step and `Preempted` after saving
  on SIGTERM.
  """
  config = latents.resolve_config(config, workdir=workdir)
  validation.validate_config(config, num_devices=jax.device_count())
  source = _open_data(config)
  workdir = epath.Path(workdir)
  with workdir_lock.WorkdirLock(workdir):
    run = _train_locked(config, workdir, source, allow_config_change=allow_config_change)
  if run.preempted:
    raise Preempted(int(run.state.step))
  return run.state
