"""jaxdiff's side of the benchmark: one workload per process, driven by bench.py.

Run with /work/main/.venv's python. Workloads (spec["workload"]):
  train   jaxdiff.job.step.train_step (Adam, grad clipping, EMA, finite check), jitted
          with the state donated; `micro_steps` > 1 scans that many steps per call
  ddpm    jaxdiff.samplers.ddpm: the whole chain is one lax.scan in one jit
  ddim    jaxdiff.samplers.ddim (eta = 0), likewise
  matmul  one n x n matmul: the device's measured matmul peak, for FLOPs utilisation
"""

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import presets
import worker_protocol
from jaxdiff import denoisers, samplers, schedules
from jaxdiff.config import objectives, schema
from jaxdiff.job import runtime
from jaxdiff.job import step as step_lib
from jaxdiff.models import UNet
from jaxdiff.samplers import ancestral


def build_unet(size: presets.ModelSize, *, dtype: str, remat: bool = False) -> UNet:
  """The jaxdiff U-Net of `size`."""
  return UNet(
      base_channels=size.base_channels, channel_mult=size.channel_mult,
      num_res_blocks=size.num_res_blocks, attention_resolutions=(size.attention_resolution,),
      num_heads=1, dropout=size.dropout, num_groups=size.num_groups, dtype=dtype,
      remat=remat,
  )


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def compiled_stats(compiled: jax.stages.Compiled) -> dict[str, float]:
  """FLOPs of one call (XLA's cost analysis) and XLA's memory analysis, in MiB."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  memory = compiled.memory_analysis()
  mib = 2.0**20
  return {
      "flops": float(cost.get("flops", float("nan"))),
      "xla_temp_mb": memory.temp_size_in_bytes / mib,
      "xla_total_mb": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                       + memory.temp_size_in_bytes - memory.alias_size_in_bytes) / mib,
  }


def image_shape(size: presets.ModelSize) -> tuple[int, int, int]:
  """[H, W, C] of one image."""
  return (size.image_size, size.image_size, size.channels)


class JaxWorkload:
  """Peak memory of a jaxdiff workload."""

  def device_peak_mb(self) -> float | None:
    """The device allocator's peak in MiB, or None where it keeps no statistics (CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
      return None
    return stats["peak_bytes_in_use"] / 2.0**20


class TrainWorkload(JaxWorkload):
  """`micro_steps` train steps of jaxdiff.job.step.train_step per compiled call."""

  def __init__(self, preset: presets.Preset, spec: dict[str, Any]):
    size = preset.model
    batch, micro_steps = spec["batch"], spec["micro_steps"]
    model = build_unet(size, dtype=spec["dtype"], remat=spec["remat"])
    tx = step_lib.make_optimizer(learning_rate=2e-4, warmup_steps=5000, grad_clip=1.0)
    self.state = step_lib.init_train_state(jax.random.key(0), model=model, tx=tx,
                                           image_shape=image_shape(size))
    diffusion_config = schema.base_config().diffusion
    diffusion_config.num_timesteps = preset.num_timesteps
    step = functools.partial(step_lib.train_step,
                             loss_fn=objectives.make_loss_fn(diffusion_config),
                             ema_decay=0.9999)
    images = jax.random.uniform(jax.random.key(1), (micro_steps, batch) + image_shape(size),
                                minval=-1.0, maxval=1.0)
    self.batches = {"image": images}
    self.rng = jax.random.key(2)

    def multi_step(state: step_lib.TrainState, batches: dict[str, jax.Array],
                   rng: jax.Array) -> tuple[step_lib.TrainState, jax.Array]:
      if micro_steps == 1:  # No scan: on XLA:CPU a loop body runs slower (RESULTS.md).
        state, metrics = step(state, jax.tree.map(lambda b: b[0], batches), rng)
      else:
        state, metrics = jax.lax.scan(lambda s, b: step(s, b, rng), state, batches)
      return state, metrics["loss"]

    donate = (0,) if spec["donate"] else ()
    jitted = jax.jit(multi_step, donate_argnums=donate)
    compiled = jitted.lower(self.state, self.batches, self.rng).compile()
    self.compiled = compiled
    stats = compiled_stats(compiled)
    self.info = {
        "params": count_params(self.state.params),
        "images_per_call": batch * micro_steps,
        # XLA counts a scan's body once, so this is the FLOPs of one step.
        "flops_per_image": stats["flops"] / batch,
        "xla_temp_mb": stats["xla_temp_mb"],
        "xla_total_mb": stats["xla_total_mb"],
    }

  def call(self) -> None:
    """Runs `micro_steps` train steps."""
    self.state, loss = self.compiled(self.state, self.batches, self.rng)
    jax.block_until_ready((self.state, loss))


def apply_eps(model: UNet, params: Any, x: jax.Array, t: jax.Array) -> jax.Array:
  """The U-Net's eps prediction, a `model_fn` once params are bound."""
  return model.apply({"params": params}, x, t)


class SampleWorkload(JaxWorkload):
  """One whole sampling chain (DDPM or DDIM) for a batch.

  With spec["loop"] (DDPM only) the chain is a Python loop over one jitted
  `ancestral_step` (the runner's step function) instead of the runner's single scan: the
  dispatch-per-step baseline that the scan lever is measured against.
  """

  def __init__(self, preset: presets.Preset, spec: dict[str, Any]):
    size = preset.model
    model = build_unet(size, dtype=spec["dtype"])
    shape = (preset.sample_batch,) + image_shape(size)
    params = model.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros(shape[:1], jnp.int32))
    params = params["params"]
    self.model_fn = jax.tree_util.Partial(functools.partial(apply_eps, model), params)
    self.schedule = schedules.make_schedule("linear", preset.num_timesteps)
    self.shape = shape
    self.sampler = spec["workload"]
    self.num_steps = preset.ddpm_steps if self.sampler == "ddpm" else preset.ddim_steps
    self.loop = spec.get("loop", False)
    if self.loop:
      kept = schedules.space_timesteps(preset.num_timesteps, f"ddim{self.num_steps}")
      self.denoiser = denoisers.clip(denoisers.make_denoiser(self.model_fn, self.schedule))
      self.inputs = ancestral.ancestral_inputs(self.schedule, jnp.asarray(kept[::-1]), {})
      self.step = jax.jit(lambda den, x, inp, key: ancestral.ancestral_step(
          den, x, jnp.zeros((0,)), inp, key, {"variance": "fixed_small"})[0])
    start = time.perf_counter()
    forward = jax.jit(self.model_fn).lower(jnp.zeros(shape), jnp.zeros(shape[:1], jnp.int32))
    stats = compiled_stats(forward.compile())
    self.info = {
        "params": count_params(params),
        "images_per_call": preset.sample_batch,
        "flops_per_image": stats["flops"] * self.num_steps / preset.sample_batch,
        # Compiling the forward for its FLOPs is not part of jaxdiff's startup.
        "analysis_s": time.perf_counter() - start,
    }

  def call(self) -> None:
    """Samples one batch."""
    rng = jax.random.key(3)
    if self.loop:
      key_T, key_steps = jax.random.split(rng)
      x = jax.random.normal(key_T, self.shape)
      keys = jax.random.split(key_steps, self.num_steps)
      for k in range(self.num_steps):
        inp = jax.tree_util.tree_map(lambda a, k=k: a[k], self.inputs)
        x = self.step(self.denoiser, x, inp, keys[k])
    else:
      sample = samplers.ddpm if self.sampler == "ddpm" else samplers.ddim
      x = sample(self.model_fn, self.schedule, rng, self.shape, num_steps=self.num_steps)
    jax.block_until_ready(x)


class MatmulWorkload(JaxWorkload):
  """One n x n by n x n matmul in `dtype`: 2 n^3 FLOPs."""

  def __init__(self, preset: presets.Preset, spec: dict[str, Any]):
    n = preset.matmul_size
    keys = jax.random.split(jax.random.key(0))
    self.a, self.b = (jax.random.normal(k, (n, n), spec["dtype"]) for k in keys)
    self.compiled = jax.jit(jnp.matmul).lower(self.a, self.b).compile()
    self.info = {"images_per_call": 1, "flops_per_image": 2.0 * n**3}

  def call(self) -> None:
    """One matmul."""
    self.compiled(self.a, self.b).block_until_ready()


WORKLOADS = {"train": TrainWorkload, "ddpm": SampleWorkload, "ddim": SampleWorkload,
             "matmul": MatmulWorkload}


def configure(spec: dict[str, Any]) -> None:
  """The entry points' runtime settings (jaxdiff.job.runtime), before jax initializes.

  spec["xla_flags"] (a flag variant of bench.py) is added to XLA_FLAGS;
  spec["compilation_cache"] is the persistent cache's directory or "off".
  """
  if spec.get("xla_flags"):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {spec['xla_flags']}".strip()
  runtime.setup(compilation_cache=spec.get("compilation_cache"))


def build(spec: dict[str, Any]) -> worker_protocol.Workload:
  """The workload that `spec` names, at its preset's size."""
  configure(spec)
  info = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}
  workload = WORKLOADS[spec["workload"]](presets.PRESETS[spec["preset"]], spec)
  workload.info.update(info)
  return workload


if __name__ == "__main__":
  worker_protocol.serve(build)
