"""The one generation path: images from a trained model, for sample.py, the trainer's sample
grids and evaluation alike, so that a key gives the same images everywhere.

`sample_batches(config, model, params, key, request, mesh=...)` draws
`request.num_samples` images in batches of `request.batch_size` (rounded up to a multiple of
the device count) sharded over the mesh: batch i uses `fold_in(key, i)` for its starting
noise and its chain; class labels cycle 0, 1, ..., K - 1 over the sample index. The model
becomes the run's denoiser (`jaxdiff.config.objectives.denoiser_from_config`) with
classifier-free guidance, the x0 maps (clipping, dynamic thresholding) and the sampler of
the table `jaxdiff.config.sampling.SAMPLERS`, with inpainting or SDEdit from a guide image.

A caption model is conditioned on caption tokens (`request.tokens`, cycled like labels; its
null condition is the empty caption). A latent run samples latents of the recorded
autoencoder and decodes them (`jaxdiff.job.latents`): every sampler, objective and guidance
runs on the latents unchanged; a guide image is encoded (its posterior mean) and an
inpainting mask keeps the latent pixels whose f x f image blocks are all known.
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
from jaxdiff.config import builders, objectives, sampling
from jaxdiff.job import inputs, latents
from jaxdiff.samplers import discrete, pc


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
  inpaints, `image` alone edits (SDEdit at `strength`); `options` are more runner options;
  `tokens` are a caption model's caption token ids [N, L]."""
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
  tokens: Optional[np.ndarray] = None


def cycled_labels(num_classes: Optional[int], num_samples: int,
                  wanted: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
  """int32 labels [num_samples] cycling `wanted` (default 0, ..., K - 1); None when the model
  is unconditional."""
  if num_classes is None:
    return None
  wanted = np.arange(num_classes) if wanted is None else np.asarray(wanted)
  return np.resize(wanted, num_samples).astype(np.int32)


def class_captions(config: ml_collections.ConfigDict, num_samples: int,
                   wanted: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
  """A caption model's tokens [num_samples, L] of the bare class names, cycling `wanted`
  (default every class); None for other models."""
  if config.conditioner.name != "text":
    return None
  captions = builders.caption_set(config)
  table = np.stack([captions.tokenize(name, max_length=config.conditioner.max_length)
                    for name in captions.class_names])
  return table[cycled_labels(len(captions.class_names), num_samples, wanted)]


def request_from_config(config: ml_collections.ConfigDict, **overrides: Any) -> Request:
  """The request `config.sample` describes (its sampler, steps, guidance, clipping), with
  `overrides` (e.g. num_samples, batch_size)."""
  sample = config.sample
  num_samples = overrides.pop("num_samples", sample.num_samples)
  fields = dict(num_samples=num_samples, batch_size=min(num_samples, 256),
                sampler=sample.sampler, num_steps=sample.num_steps,
                labels=cycled_labels(config.model.num_classes, num_samples),
                tokens=class_captions(config, num_samples),
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


def _guide_inputs(request: Request, shape: tuple[int, ...], sharding: jax.sharding.Sharding,
                  coder: Optional[latents.LatentCoder]) -> dict[str, Any]:
  """The runner's inpainting (known, mask) or SDEdit (start, strength) arguments (in latent
  space for a latent run)."""
  if request.image is None:
    return {}
  image, mask = request.image, request.mask
  if coder is not None:
    image = np.asarray(_encode_mean(coder, image[None]))[0]
    if mask is not None:
      f = request.mask.shape[1] // image.shape[0]
      mask = mask.reshape(1, image.shape[0], f, image.shape[1], f, 1).all(axis=(2, 4))
  image = jax.device_put(np.broadcast_to(image, shape).astype(np.float32), sharding)
  if mask is not None:
    return {"known": image, "mask": jnp.asarray(mask)}
  return {"start": image, "strength": request.strength}


@jax.jit
def _encode_mean(coder: latents.LatentCoder, images: jax.Array) -> jax.Array:
  return coder.replace(sample_posterior=False).encode(images, jax.random.PRNGKey(0))


@jax.jit
def _decode(coder: latents.LatentCoder, batch: jax.Array) -> jax.Array:
  return coder.decode(batch)


@functools.partial(jax.jit, static_argnames=("shape", "sharding"))
def _prior_noise(key: jax.Array, scale: Any, *, shape: tuple[int, ...],
                 sharding: jax.sharding.Sharding) -> jax.Array:
  """scale * N(0, I) of `shape`, laid out as `sharding` says."""
  noise = scale * jax.random.normal(key, shape)
  return jax.lax.with_sharding_constraint(noise, sharding)


def _one_batch(config: ml_collections.ConfigDict, den: Any, key: jax.Array, request: Request,
               sharding: jax.sharding.Sharding, shape: tuple[int, ...],
               coder: Optional[latents.LatentCoder]) -> jax.Array:
  """One batch from `key`: x_T = prior_std * N(0, I) on the devices, then the sampler."""
  noise_key, chain_key = jax.random.split(key)
  process = den.process
  x_T = _prior_noise(noise_key, process.prior_std, shape=shape, sharding=sharding)
  entry = sampling.SAMPLERS[request.sampler]
  if entry.sampler == "ode":
    return sde_samplers.probability_flow_sampler(
        pc.score_fn_of(den), process, chain_key, shape, solver="tsit5", rtol=1e-3, atol=1e-3,
        x_T=x_T, eps=process.t_min)[0]
  options = {**sampling.default_options(request.sampler, config), **dict(request.options)}
  return samplers.sample(den, chain_key, x_T=x_T, sampler=entry.sampler,
                         **sampling.grid_request(request.sampler, config, request.num_steps),
                         **_guide_inputs(request, shape, sharding, coder), **options)


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
  shape = (batch_size,) + builders.model_input_shape(config)
  num_batches = -(-request.num_samples // batch_size)
  coder = latents.load_coder(config, mesh) if builders.is_latent(config) else None
  conditions = request.labels if request.tokens is None else request.tokens
  outputs = []
  for index in range(num_batches):
    labels = None
    if conditions is not None:
      part = conditions[index * batch_size:(index + 1) * batch_size]
      rows = part[np.arange(batch_size) % len(part)]
      labels = jax.device_put(rows.astype(np.int32), sharding)
    model_fn = model_fn_for(model, params, labels=labels, guidance_scale=request.guidance_scale,
                            null_label=inputs.null_condition(config))
    batch = _one_batch(config, _denoiser(config, model_fn, request, process),
                       jax.random.fold_in(key, index), request, sharding, shape, coder)
    if coder is not None:
      batch = _decode(coder, batch)
    outputs.append(np.asarray(multihost_utils.process_allgather(batch, tiled=True)))
    if on_batch is not None:
      on_batch(index + 1, num_batches)
  return np.concatenate(outputs)[:request.num_samples]
