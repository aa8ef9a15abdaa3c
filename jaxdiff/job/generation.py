"""The one generation path: images from a trained model, for sample.py, the trainer's sample
grids and evaluation alike, so that a key gives the same images everywhere.

`sample_batches(config, model, params, key, request, mesh=...)` draws
`request.num_samples` images in batches of `request.batch_size` (rounded up to a multiple of
the device count) sharded over the mesh: batch i uses `fold_in(key, i)` for its starting
noise and its chain; class labels cycle 0, 1, ..., K - 1 over the sample index. The model
becomes the run's denoiser (`jaxdiff.config.objectives.denoiser_from_config`) with
classifier-free guidance, the x0 maps (clipping, dynamic thresholding) and the sampler of
the table `jaxdiff.config.sampling.SAMPLERS`, with inpainting or SDEdit from a guide image.
A discrete run ("d3pm", "masked") draws its tokens with `jaxdiff.config.categorical.generate`
and returns their images.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn
from jax.experimental import multihost_utils

from jaxdiff import parallel, samplers, sde_samplers
from jaxdiff.config import builders, categorical, objectives, sampling
from jaxdiff.samplers import discrete


def _conditional(apply_fn: Callable[..., jax.Array], variables: Any, y: jax.Array,
                 x_t: jax.Array, t: jax.Array) -> jax.Array:
  """The conditional model's output for labels `y`."""
  return apply_fn(variables, x_t, t, y)


def model_fn_for(model: nn.Module, params: Any, *, labels: jax.Array | None = None,
                 guidance_scale: float = 1.0, null_label: int | None = None
                 ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`model_fn(x_t, t)` of `model` with `params`: unconditional, conditional or CFG-guided.

  Built as a `jax.tree_util.Partial` of `model.apply`, so samplers reuse their compiled
  chain when only the parameters change. With labels, guidance_scale 1 is the plain
  conditional model; other scales use classifier-free guidance with `null_label`.
  """
  variables = {"params": params}
  if labels is None:
    return jax.tree_util.Partial(model.apply, variables)
  if guidance_scale == 1.0:
    return jax.tree_util.Partial(_conditional, model.apply, variables, labels)
  return samplers.classifier_free_guidance(jax.tree_util.Partial(model.apply, variables),
                                           labels, guidance_scale, null_label)


@dataclasses.dataclass(frozen=True)
class Request:
  """What to draw. `image` ([H, W, C] in [-1, 1]) with `mask` ([1, H, W, 1], True = known)
  inpaints, `image` alone edits (SDEdit at `strength`); `options` are more runner options."""
  num_samples: int
  batch_size: int
  sampler: str
  num_steps: Optional[int] = None
  labels: Optional[np.ndarray] = None
  guidance_scale: float = 1.0
  clip_denoised: bool = True
  threshold: Optional[float] = None
  image: Optional[np.ndarray] = None
  mask: Optional[np.ndarray] = None
  strength: float = 0.5
  options: tuple[tuple[str, Any], ...] = ()


def cycled_labels(num_classes: Optional[int], num_samples: int,
                  wanted: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
  """int32 labels [num_samples] cycling `wanted` (default 0, ..., K - 1); None when the model
  is unconditional."""
  if num_classes is None:
    return None
  wanted = np.arange(num_classes) if wanted is None else np.asarray(wanted)
  return np.resize(wanted, num_samples).astype(np.int32)


def request_from_config(config: ml_collections.ConfigDict, **overrides: Any) -> Request:
  """The request `config.sample` describes (its sampler, steps, guidance, clipping), with
  `overrides` (e.g. num_samples, batch_size)."""
  sample = config.sample
  num_samples = overrides.pop("num_samples", sample.num_samples)
  fields = dict(num_samples=num_samples, batch_size=min(num_samples, 256),
                sampler=sample.sampler, num_steps=sample.num_steps,
                labels=cycled_labels(config.model.num_classes, num_samples),
                guidance_scale=sample.guidance_scale, clip_denoised=sample.clip_denoised)
  return Request(**{**fields, **overrides})


def _denoiser(config: ml_collections.ConfigDict, model_fn: Any, request: Request,
              process: Any) -> Any:
  den = objectives.denoiser_from_config(config.diffusion, model_fn, process=process,
                                        learned_variance=bool(config.model.learn_sigma))
  threshold = None if request.threshold is None else jax.tree_util.Partial(
      samplers.dynamic_threshold, percentile=request.threshold)
  return discrete.data_range_maps(den, clip_denoised=request.clip_denoised, x0_fn=threshold,
                                  ancestral=sampling.SAMPLERS[request.sampler].sampler == "ddpm")


def _guide_inputs(request: Request, shape: tuple[int, ...],
                  sharding: jax.sharding.Sharding) -> dict[str, Any]:
  """The runner's inpainting (known, mask) or SDEdit (start, strength) arguments."""
  if request.image is None:
    return {}
  image = jax.device_put(np.broadcast_to(request.image, shape).astype(np.float32), sharding)
  if request.mask is not None:
    return {"known": image, "mask": jnp.asarray(request.mask)}
  return {"start": image, "strength": request.strength}


@functools.partial(jax.jit, static_argnames=("shape", "sharding"))
def _prior_noise(key: jax.Array, scale: Any, *, shape: tuple[int, ...],
                 sharding: jax.sharding.Sharding) -> jax.Array:
  """scale * N(0, I) of `shape`, laid out as `sharding` says."""
  noise = scale * jax.random.normal(key, shape)
  return jax.lax.with_sharding_constraint(noise, sharding)


def _one_batch(config: ml_collections.ConfigDict, den: Any, key: jax.Array, request: Request,
               sharding: jax.sharding.Sharding, shape: tuple[int, ...]) -> jax.Array:
  """One batch from `key`: x_T = prior_std * N(0, I) on the devices, then the sampler."""
  noise_key, chain_key = jax.random.split(key)
  process = den.process
  x_T = _prior_noise(noise_key, process.prior_std, shape=shape, sharding=sharding)
  entry = sampling.SAMPLERS[request.sampler]
  if entry.sampler == "ode":
    return sde_samplers.probability_flow_sampler(
        den, process, chain_key, shape, solver="tsit5", rtol=1e-3, atol=1e-3,
        x_T=x_T, eps=float(process.t_min))[0]
  options = {**sampling.default_options(request.sampler, config), **dict(request.options)}
  return samplers.sample(den, chain_key, x_T=x_T, sampler=entry.sampler,
                         **sampling.grid_request(request.sampler, config, request.num_steps),
                         **_guide_inputs(request, shape, sharding), **options)


def sample_batches(config: ml_collections.ConfigDict, model: nn.Module, params: Any,
                   key: jax.Array, request: Request, *, mesh: Optional[jax.sharding.Mesh] = None,
                   on_batch: Optional[Callable[[int, int], None]] = None,
                   process: Any = None) -> np.ndarray:
  """`request.num_samples` images [N, H, W, C] in [-1, 1] (module docstring), on every
  process. `on_batch(done, total)` is called after each batch (progress reports); `process`
  overrides the run's noise process (an imported model's schedule)."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  sharding = parallel.batch_sharding(mesh)
  batch_size = -(-request.batch_size // mesh.size) * mesh.size
  shape = (batch_size,) + builders.image_shape(config)
  num_batches = -(-request.num_samples // batch_size)
  outputs = []
  for index in range(num_batches):
    labels = None
    if request.labels is not None:
      rows = np.resize(request.labels[index * batch_size:(index + 1) * batch_size], batch_size)
      labels = jax.device_put(rows.astype(np.int32), sharding)
    model_fn = model_fn_for(model, params, labels=labels, guidance_scale=request.guidance_scale,
                            null_label=config.model.num_classes)
    batch_key = jax.random.fold_in(key, index)
    if categorical.is_categorical(config):
      batch = categorical.generate(config, model_fn, batch_key, shape,
                                   num_steps=request.num_steps, sharding=sharding)
    else:
      batch = _one_batch(config, _denoiser(config, model_fn, request, process), batch_key,
                         request, sharding, shape)
    outputs.append(np.asarray(multihost_utils.process_allgather(batch, tiled=True)))
    if on_batch is not None:
      on_batch(index + 1, num_batches)
  return np.concatenate(outputs)[:request.num_samples]
