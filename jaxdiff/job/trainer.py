"""The training job behind train.py: data, sharded jitted steps, checkpoints, logs, samples.

`train(config, workdir=...)` validates the config, builds a ("data",) mesh over every
device of every process, resumes from the newest readable checkpoint in the workdir (or
initialises), then runs `jaxdiff.training.train_step` as one jit with explicit shardings.
It saves every `train.checkpoint_every` steps, at the end and on SIGTERM, stops with
FloatingPointError on a non-finite loss (the last checkpoint stays as it was), logs
scalars to TensorBoard/stdout/metrics.jsonl, writes EMA sample grids with the sampler of
`config.sample` (one that fits `config.diffusion.objective`) and, every `eval.every`
steps, logs `config.eval`'s metrics of the EMA parameters as eval/NAME. Only process 0
writes logs and images; every process takes part in checkpointing (Orbax coordinates).

Workdir: config.json, checkpoints/<step>/, samples/step_<step>.png, metrics.jsonl and
TensorBoard event files.
"""

import functools
import os
import signal
import threading
import time

import jax
import ml_collections
import numpy as np
import tqdm
from etils import epath

from jaxdiff import data, images, parallel
from jaxdiff.config import builders, validation
from jaxdiff.job import checkpoints as checkpointing
from jaxdiff.job import evaluation as eval_metrics
from jaxdiff.job import generation, inputs, latents
from jaxdiff.job import distributed
from jaxdiff.job import step as training
from jaxdiff.job.writers import MetricWriter


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


def _check_labels(config: ml_collections.ConfigDict, source: data.ImageSource) -> None:
  if len(source) == 0:
    raise ValueError(f"Dataset {config.data.name!r} split {config.data.split!r} is empty.")
  _, labels = source.read([0])
  if config.model.get("num_classes") is not None and labels is None:
    raise ValueError(f"config.model.num_classes={config.model.num_classes} needs labels, "
                     f"but dataset {config.data.name!r} has none.")
  if config.conditioner.name == "text" and labels is None:
    raise ValueError(f"config.conditioner.name='text' builds captions from the labels, but "
                     f"dataset {config.data.name!r} has none.")


def _save_samples(config: ml_collections.ConfigDict, model, state: training.TrainState,
                  rng: jax.Array, *, step: int, workdir: epath.Path,
                  sharding: jax.sharding.Sharding, writer: MetricWriter) -> None:
  if config.model.name == "autoencoder_kl":  # test images above their reconstructions
    pictures, folder, rows = latents.reconstruction_grid(config, model, state.ema_params), \
        "reconstructions", 2
  else:
    pictures, folder, rows = images.to_uint8(generation.sample_batches(
        config, model, state.ema_params, jax.random.fold_in(rng, step),
        generation.request_from_config(config), mesh=sharding.mesh)), "samples", None
  if jax.process_index() == 0:
    grid = images.save_grid(os.fspath(workdir / folder / f"step_{step:08d}.png"), pictures,
                            rows=rows)
    writer.write_image(step, f"{folder}_ema", grid)


def _evaluate(config: ml_collections.ConfigDict, model, state: training.TrainState,
              rng: jax.Array, *, step: int, writer: MetricWriter) -> None:
  """`config.eval`'s metrics of the EMA parameters, logged as eval/NAME (process 0 writes)."""
  eval_config = config.eval
  scalars = eval_metrics.evaluate_during_training(
      config, model, state.ema_params, jax.random.fold_in(rng, step),
      metrics=tuple(eval_config.metrics), num_samples=eval_config.num_samples,
      bpd_split=eval_config.bpd_split, bpd_examples=eval_config.bpd_examples,
      inception_weights=eval_config.inception_weights, cache_dir=eval_config.cache_dir)
  writer.write_scalars(step, {f"eval/{name}": value for name, value in scalars.items()})


def train(config: ml_collections.ConfigDict, *, workdir: str | os.PathLike
          ) -> training.TrainState:
  """Trains (or resumes training) as `config` says, writing into `workdir`.

  Returns the final TrainState. Raises ValueError on a bad config before compiling
  anything, FloatingPointError on a non-finite loss or gradient norm.
  """
  config = latents.resolve_config(config, workdir=workdir)
  validation.validate_config(config, num_devices=jax.device_count())
  workdir = epath.Path(workdir)
  train_config = config.train
  mesh = parallel.make_mesh()
  batch_sharding = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)
  source = data.make_source(config.data)
  _check_labels(config, source)
  coder = latents.training_coder(config, mesh)

  model, tx = builders.build_model(config), training.build_optimizer(config)
  learning_rate = training.learning_rate_schedule(
      learning_rate=train_config.learning_rate, warmup_steps=train_config.warmup_steps)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(train_config.seed))
  sample_rng = jax.random.PRNGKey(config.sample.seed)  # Grids at step s use fold_in(., s).
  eval_rng = jax.random.split(sample_rng)[1]           # Evaluations at step s likewise.
  init_fn = functools.partial(training.init_train_state, model=model, tx=tx,
                              image_shape=builders.model_input_shape(config))
  abstract_state = jax.eval_shape(init_fn, init_rng)
  shardings = distributed.state_shardings(abstract_state, mesh,
                                       shard_params=train_config.shard_params,
                                       min_size=train_config.shard_min_size)

  checkpointer = checkpointing.Checkpointer(
      workdir / checkpointing.CHECKPOINT_DIR, max_to_keep=train_config.keep_checkpoints,
      async_save=train_config.async_checkpointing)
  template = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_state, shardings)
  rng_template = jax.ShapeDtypeStruct(train_rng.shape, train_rng.dtype, sharding=replicated)
  restored = checkpointer.restore_latest(template, rng_template, set_aside_unreadable=True)
  if restored is None:
    state = jax.jit(init_fn, out_shardings=shardings)(init_rng)
    # From a host value: device_put of a local jax.Array breaks across processes.
    train_rng = jax.device_put(np.asarray(train_rng), replicated)
  else:
    state, train_rng = restored.state, restored.rng
    if restored.metadata["data_position"] != int(state.step):
      raise RuntimeError(
          f"Checkpoint {restored.step} is inconsistent: data_position "
          f"{restored.metadata['data_position']} != step {int(state.step)}.")
  start_step = int(state.step)
  if jax.process_index() == 0:
    checkpointing.write_config(workdir, config)
    print(f"{'Resuming from step ' + str(start_step) if restored else 'Starting'}: "
          f"{jax.device_count()} devices, {jax.process_count()} processes, "
          f"{sum(x.size for x in jax.tree.leaves(state.params)):,} parameters.", flush=True)

  step_fn = jax.jit(
      functools.partial(training.train_step, **inputs.step_objective(config),
                        ema_decay=train_config.ema_decay,
                        label_dropout=train_config.label_dropout,
                        num_classes=config.model.get("num_classes")),
      in_shardings=(shardings, batch_sharding, replicated),
      out_shardings=(shardings, replicated), donate_argnums=0)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  batches = inputs.model_batches(config, data.device_batches(
      source, config.data, seed=train_config.seed, batch_size=train_config.batch_size,
      start_step=start_step, num_steps=train_config.num_steps, sharding=batch_sharding),
      coder=coder, start_step=start_step)
  progress = tqdm.tqdm(total=train_config.num_steps, initial=start_step, unit="step",
                       disable=jax.process_index() != 0)
  losses, grad_norms, interval_start = [], [], time.perf_counter()

  def save(step: int) -> None:
    checkpointer.save(step, state, train_rng, metadata={"data_position": step})

  with _SigtermFlag() as sigterm:
    try:
      for step, batch in zip(range(start_step, train_config.num_steps), batches):
        state, metrics = step_fn(state, batch, train_rng)
        metrics = jax.device_get(metrics)
        if not metrics["finite"]:
          checkpointer.wait_until_finished()
          raise FloatingPointError(
              f"Non-finite loss {metrics['loss']} or gradient norm {metrics['grad_norm']} at "
              f"step {step}; training stopped. The checkpoints in {checkpointer.directory} "
              f"(steps {checkpointer.all_steps()}) are untouched.")
        done = step + 1
        losses.append(metrics["loss"])
        grad_norms.append(metrics["grad_norm"])
        progress.update(1)
        if done % train_config.log_every == 0 or done == train_config.num_steps:
          elapsed = time.perf_counter() - interval_start
          writer.write_scalars(done, {
              "loss": np.mean(losses), "grad_norm": np.mean(grad_norms),
              "learning_rate": learning_rate(step), "steps_per_sec": len(losses) / elapsed,
              "images_per_sec": len(losses) * train_config.batch_size / elapsed})
          progress.set_postfix(loss=f"{np.mean(losses):.4f}")
          losses, grad_norms, interval_start = [], [], time.perf_counter()
        preempted = (sigterm.raised if jax.process_count() == 1
                     else checkpointer.reached_preemption(done))
        if done % train_config.checkpoint_every == 0 or done == train_config.num_steps:
          save(done)
        if preempted:
          save(done)
          checkpointer.wait_until_finished()
          print(f"Preempted (SIGTERM): saved step {done}; rerun to resume.", flush=True)
          return state
        sample_every = train_config.sample_every
        if (sample_every and done % sample_every == 0) or done == train_config.num_steps:
          _save_samples(config, model, state, sample_rng, step=done, workdir=workdir,
                        sharding=batch_sharding, writer=writer)
        if config.eval.every and done % config.eval.every == 0:
          _evaluate(config, model, state, eval_rng, step=done, writer=writer)
    finally:
      batches.close()
      progress.close()
      checkpointer.close()
      writer.close()
  return state
