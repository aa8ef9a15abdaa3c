"""The one generation path: images from a trained model, for sample.py, the trainer's sample
grids and evaluation alike, so that a key gives the same images everywhere.

`sample_batches(config, model, params, key, request, mesh=...)` draws
`request.num_samples` images in batches of `request.batch_size` (rounded up to a multiple of
the device count) sharded over the mesh: batch i uses `fold_in(key, i)` for its starting
noise and its chain; class labels cycle 0, 1, ..., K - 1 over the sample index. The model
becomes the run's denoiser (`jaxdiff.config.objectives.denoiser_from_config`) with
classifier-free guidance, the x0 maps (clipping, dynamic thresholding) and the sampler of
the table `jaxdiff.config.sampling.SAMPLERS`, with inpainting or SDEdit from a guide image,
or ILVR from a reference image.

A caption model is conditioned on caption tokens (`request.tokens`, cycled like labels; its
null condition is the empty caption). A latent run samples latents of the recorded
autoencoder and decodes them (`jaxdiff.job.latents`): every sampler, objective and guidance
runs on the latents unchanged; a guide image is encoded (its posterior mean) and an
inpainting mask keeps the latent pixels whose f x f image blocks are all known.

Image-to-image runs (`config.data.task`, `jaxdiff.data.tasks`): `request.conditions` holds
one condition per sample (cycled like labels; `test_conditions` takes them from the test
split), bound to the model like labels (`model_fn_for`), noised to `request.aug_level` (CDM's
augmentation) with the batch's key; the known pixels of an inpainting or uncropping
condition are also kept by the runner's replacement (as Palette samples). Classifier-free
guidance on the image condition uses the null condition, zeros. `sample_cascade` runs a
base model and super-resolution stages end to end.
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
from jaxdiff.data import tasks
from jaxdiff.evaluation import datasets
from jaxdiff.job import inputs, latents
from jaxdiff.samplers import discrete, pc


def _conditional(apply_fn: Callable[..., jax.Array], variables: Any, y: jax.Array,
                 x_t: jax.Array, t: jax.Array) -> jax.Array:
  """The conditional model's output for labels `y`."""
  return apply_fn(variables, x_t, t, y)


def _image_conditioned(apply_fn: Callable[..., jax.Array], variables: Any,
                       labels: jax.Array | None, aug_level: jax.Array, x_t: jax.Array,
                       t: jax.Array, condition: jax.Array) -> jax.Array:
  """The image-conditioned model's output for `condition` (CFG's `model_fn(x_t, t, y)`): the
  labels and the scalar augmentation level are repeated to x_t's batch (CFG doubles it)."""
  batch = x_t.shape[0]
  kwargs = {} if aug_level is None else {"aug_level": jnp.full((batch,), aug_level)}
  if labels is not None:
    labels = jnp.tile(labels, batch // labels.shape[0])
  return apply_fn(variables, x_t, t, labels, condition=condition, **kwargs)


def _bound_condition(conditioned: Callable[..., jax.Array], condition: jax.Array,
                     x_t: jax.Array, t: jax.Array) -> jax.Array:
  return conditioned(x_t, t, condition)


def model_fn_for(model: nn.Module, params: Any, *, labels: jax.Array | None = None,
                 guidance_scale: float = 1.0, null_label: int | None = None,
                 condition: jax.Array | None = None, aug_level: float | None = None
                 ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`model_fn(x_t, t)` of `model` with `params`: unconditional, conditional or CFG-guided.

  Built as a `jax.tree_util.Partial` of `model.apply`, so samplers reuse their compiled
  chain when only the parameters change. With labels, guidance_scale 1 is the plain
  conditional model; other scales use classifier-free guidance with `null_label`. With an
  image `condition` [B, h, w, c] (and the augmentation level `aug_level` of a model that
  embeds it) the condition is bound instead, and guidance is on the condition, the null
  condition being zeros (labels, if any, stay fixed).
  """
  variables = {"params": params}
  if condition is not None:
    level = None if aug_level is None else jnp.asarray(aug_level, jnp.float32)
    conditioned = jax.tree_util.Partial(_image_conditioned, model.apply, variables, labels,
                                        level)
    if guidance_scale == 1.0:
      return jax.tree_util.Partial(_bound_condition, conditioned, condition)
    return samplers.classifier_free_guidance(conditioned, condition, guidance_scale, 0.0)
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
  `tokens` are a caption model's caption token ids [N, L].
  `conditions` ([N, h, w, c] in [-1, 1], cycled over the samples) condition an
  image-to-image model at augmentation level `aug_level`; `reference` ([H, W, C]) with
  `ilvr_factor` N guides an unconditional model by ILVR."""
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
  conditions: Optional[np.ndarray] = None
  aug_level: float = 0.0
  reference: Optional[np.ndarray] = None
  ilvr_factor: Optional[int] = None


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


def test_conditions(config: ml_collections.ConfigDict, num_samples: int, *, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(conditions [N, h, w, c], references [N, H, W, C]) of an image-to-image run: the first
  N images of the test split, degraded by the run's task with generator (seed, 3, i)."""
  task = tasks.task_from_config(config.data)
  if task is None:
    raise ValueError("test conditions need an image-to-image run (config.data.task.name)")
  references, _ = datasets.load_images(config.data, split="test", max_examples=num_samples)
  conditions = np.stack([task.degrade(image, np.random.default_rng([seed, 3, i]))
                         for i, image in enumerate(references)])
  return conditions, references


def request_from_config(config: ml_collections.ConfigDict, **overrides: Any) -> Request:
  """The request `config.sample` describes (its sampler, steps, guidance, clipping, and for
  an image-to-image run the test split's conditions), with `overrides` (e.g. num_samples)."""
  sample = config.sample
  num_samples = overrides.pop("num_samples", sample.num_samples)
  fields = dict(num_samples=num_samples, batch_size=min(num_samples, 256),
                sampler=sample.sampler, num_steps=sample.num_steps,
                labels=cycled_labels(config.model.num_classes, num_samples),
                tokens=class_captions(config, num_samples),
                guidance_scale=sample.guidance_scale, clip_denoised=sample.clip_denoised,
                aug_level=sample.aug_level)
  if "conditions" not in overrides and tasks.task_from_config(config.data) is not None:
    fields["conditions"] = test_conditions(config, num_samples)[0]
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
  """The runner's inpainting (known, mask), SDEdit (start, strength) or ILVR (reference,
  ilvr_factor) arguments (inpainting and SDEdit in latent space for a latent run)."""
  if request.reference is not None:
    reference = np.broadcast_to(request.reference, shape).astype(np.float32)
    return {"reference": jax.device_put(reference, sharding),
            "ilvr_factor": request.ilvr_factor}
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


def _condition_inputs(config: ml_collections.ConfigDict, request: Request, index: int,
                      key: jax.Array, sharding: jax.sharding.Sharding,
                      batch_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """(model_fn_for's condition and aug_level, the runner's known / mask) of batch `index`:
  its rows of the cycled conditions, noised to the augmentation level (CDM); a masked
  condition's known pixels (Palette's replacement)."""
  if request.conditions is None:
    return {}, {}
  rows = np.resize(request.conditions[index * batch_size:(index + 1) * batch_size],
                   (batch_size,) + request.conditions.shape[1:]).astype(np.float32)
  task = tasks.task_from_config(config.data)
  runner = {}
  if task is not None and task.name in tasks.MASKED_TASKS:
    known, mask = tasks.known_and_mask(rows)
    runner = {"known": jax.device_put(known, sharding), "mask": jax.device_put(mask, sharding)}
  if not config.model.get("aug_level_embedding"):
    return {"condition": jax.device_put(rows, sharding)}, runner
  noise = np.asarray(jax.random.normal(key, rows.shape))
  rows = tasks.noise_augment(rows, np.full(batch_size, request.aug_level), noise)
  return {"condition": jax.device_put(rows, sharding), "aug_level": request.aug_level}, runner


@functools.partial(jax.jit, static_argnames=("shape", "sharding"))
def _prior_noise(key: jax.Array, scale: Any, *, shape: tuple[int, ...],
                 sharding: jax.sharding.Sharding) -> jax.Array:
  """scale * N(0, I) of `shape`, laid out as `sharding` says."""
  noise = scale * jax.random.normal(key, shape)
  return jax.lax.with_sharding_constraint(noise, sharding)


def _one_batch(config: ml_collections.ConfigDict, den: Any, key: jax.Array, request: Request,
               sharding: jax.sharding.Sharding, shape: tuple[int, ...],
               coder: Optional[latents.LatentCoder],
               runner_inputs: dict[str, Any]) -> jax.Array:
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
                         **_guide_inputs(request, shape, sharding, coder), **runner_inputs,
                         **options)


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
    batch_key = jax.random.fold_in(key, index)
    conditioning, runner_inputs = _condition_inputs(
        config, request, index, jax.random.fold_in(batch_key, 1), sharding, batch_size)
    model_fn = model_fn_for(model, params, labels=labels, guidance_scale=request.guidance_scale,
                            null_label=inputs.null_condition(config), **conditioning)
    if categorical.is_categorical(config):
      batch = categorical.generate(config, model_fn, batch_key, shape,
                                   num_steps=request.num_steps, sharding=sharding)
    else:
      batch = _one_batch(config, _denoiser(config, model_fn, request, process), batch_key,
                         request, sharding, shape, coder, runner_inputs)
    if coder is not None:
      batch = _decode(coder, batch)
    outputs.append(np.asarray(multihost_utils.process_allgather(batch, tiled=True)))
    if on_batch is not None:
      on_batch(index + 1, num_batches)
  return np.concatenate(outputs)[:request.num_samples]


def check_cascade(configs: list[ml_collections.ConfigDict]) -> None:
  """Raises ValueError (one line, before anything compiles) unless every stage after the
  first is a super-resolution run whose condition is the previous stage's image size."""
  for index in range(1, len(configs)):
    task = tasks.task_from_config(configs[index].data)
    previous = builders.image_shape(configs[index - 1])
    if task is None or task.name != "super_resolution":
      raise ValueError(f"cascade stage {index} is not a super-resolution run "
                       f"(config.data.task.name={getattr(task, 'name', None)!r})")
    wanted = task.condition_shape(builders.image_shape(configs[index]))
    if wanted != previous:
      raise ValueError(f"cascade stage {index} takes {wanted[0]}x{wanted[1]}x{wanted[2]} "
                       f"conditions, but stage {index - 1} makes {previous[0]}x{previous[1]}x"
                       f"{previous[2]} images: the resolutions do not chain")


def sample_cascade(stages: list[tuple[ml_collections.ConfigDict, nn.Module, Any]],
                   key: jax.Array, request: Request, *,
                   mesh: Optional[jax.sharding.Mesh] = None) -> list[np.ndarray]:
  """Each stage's images [N, H_k, W_k, C] of a cascade (Ho et al. 2022, CDM): stage 0 (a
  base model, or any run) draws `request`; stage k > 0, a super-resolution run, takes stage
  k - 1's images as its conditions, noised to `request.aug_level`, with the same sampler
  and key fold_in(key, k). `stages` are (config, model, params); `check_cascade` runs
  first."""
  check_cascade([config for config, _, _ in stages])
  outputs = []
  for index, (config, model, params) in enumerate(stages):
    if index:
      request = dataclasses.replace(
          request, conditions=outputs[-1], guidance_scale=1.0, image=None, mask=None,
          reference=None, labels=cycled_labels(config.model.num_classes, request.num_samples))
    outputs.append(sample_batches(config, model, params, jax.random.fold_in(key, index),
                                  request, mesh=mesh))
  return outputs
