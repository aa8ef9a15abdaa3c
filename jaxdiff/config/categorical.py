"""The discrete-state objectives of a run: "d3pm" and "masked" (`jaxdiff.discrete`).

Data reach the training job as images in [-1, 1] whose 8-bit levels encode categories
(`jaxdiff.discrete.levels`: the digits' 17 gray levels, a word list's letters,
Fashion-MNIST rounded to K levels); `images_to_tokens` turns them into tokens 0..K-1 inside
the jitted step, and samples come back as the images of their tokens. The network (a U-Net
or DiT on one-hot tokens, or the `TokenTransformer`) returns K * C channels: K logits per
data channel (`token_model_fn`). The absorbing kernel and masked diffusion add the mask
token K: the network sees K + 1 tokens and predicts K logits, the mask's logit being fixed
to -1e30 for D3PM (x_0 is never a mask).

- "d3pm": `config.diffusion.kernel` ("uniform", "absorbing", "gaussian") with
  `kernel_schedule` betas over `num_timesteps` steps, `discrete_loss` ("hybrid" with
  `hybrid_coeff`, "kl", "ce"), sampled with "d3pm" (ancestral, the whole chain);
- "masked": alpha(t) = `masking` ("linear", "cosine", "poly" with `masking_exponent`),
  the continuous-time ELBO, sampled with "unmask" in `num_steps` steps (default 100); the
  network gets the time as t * 999, as continuous-time Gaussian models do.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import discrete, parallel
from jaxdiff.discrete import levels
from jaxdiff.evaluation import bpd

OBJECTIVES = ("d3pm", "masked")
KERNELS = ("uniform", "absorbing", "gaussian")   # "embedding" needs embeddings: use the library
SAMPLER_OF = {"d3pm": "d3pm", "masked": "unmask"}
SAMPLERS = {"d3pm": "ancestral sampling of a D3PM chain (Austin et al. 2021)",
            "unmask": "masked diffusion's unmasking sampler (MD4, Shi et al. 2024)"}
DEFAULT_UNMASK_STEPS = 100
TIME_SCALE = 999.0            # the masked network's time input, t * 999
_NO_MASK_LOGIT = -1e30
_DATA_CHECK_EXAMPLES = 10_000

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def is_categorical(config: ml_collections.ConfigDict) -> bool:
  """Whether the run's objective is a discrete-state one."""
  return config.diffusion.objective in OBJECTIVES


def has_mask(diffusion_config: ml_collections.ConfigDict) -> bool:
  """Whether x_t holds the mask token K (masked diffusion, the absorbing kernel)."""
  return diffusion_config.objective == "masked" or diffusion_config.kernel == "absorbing"


def num_tokens(diffusion_config: ml_collections.ConfigDict) -> int:
  """Tokens the network sees in x_t: K, plus the mask token when there is one."""
  return diffusion_config.num_categories + int(has_mask(diffusion_config))


def kernel_from_config(diffusion_config: ml_collections.ConfigDict) -> discrete.Kernel:
  """The D3PM kernel over `num_tokens` states (the absorbing state is the mask K)."""
  betas = discrete.make_betas(diffusion_config.kernel_schedule, diffusion_config.num_timesteps,
                              start=diffusion_config.kernel_beta_start,
                              stop=diffusion_config.kernel_beta_end)
  return discrete.make_kernel(diffusion_config.kernel, num_tokens(diffusion_config), betas)


def masking_from_config(diffusion_config: ml_collections.ConfigDict) -> discrete.MaskingSchedule:
  return discrete.make_masking_schedule(diffusion_config.masking,
                                        exponent=diffusion_config.masking_exponent)


def process_from_config(diffusion_config: ml_collections.ConfigDict) -> Any:
  """The kernel ("d3pm") or the masking schedule ("masked") of a run."""
  if diffusion_config.objective == "d3pm":
    return kernel_from_config(diffusion_config)
  return masking_from_config(diffusion_config)


def _token_logits(model_fn: ModelFn, num_categories: int, pad_mask: bool, time_scale: float,
                  x_t: jax.Array, t: jax.Array) -> jax.Array:
  out = model_fn(x_t, t * time_scale if time_scale != 1.0 else t)
  logits = out.reshape(x_t.shape + (num_categories,))
  if pad_mask:
    logits = jnp.concatenate([logits, jnp.full(x_t.shape + (1,), _NO_MASK_LOGIT,
                                                logits.dtype)], axis=-1)
  return logits


def token_model_fn(diffusion_config: ml_collections.ConfigDict, model_fn: ModelFn) -> ModelFn:
  """``(x_t tokens, t) -> logits [B, H, W, C, K']`` of a network ``model_fn(x_t, t) ->
  [B, H, W, C * K]``: K' = K, plus the mask's fixed logit for the absorbing kernel."""
  masked = diffusion_config.objective == "masked"
  return jax.tree_util.Partial(_token_logits, model_fn, diffusion_config.num_categories,
                               not masked and diffusion_config.kernel == "absorbing",
                               TIME_SCALE if masked else 1.0)


def make_loss_fn(diffusion_config: ml_collections.ConfigDict
                 ) -> Callable[[ModelFn, jax.Array, jax.Array], jax.Array]:
  """`loss_fn(model_fn, images, rng) -> [B]` bits/dim of the run's discrete objective."""
  k = diffusion_config.num_categories
  process = process_from_config(diffusion_config)
  if diffusion_config.objective == "d3pm":
    options = dict(loss_type=diffusion_config.discrete_loss,
                   hybrid_coeff=diffusion_config.hybrid_coeff)
    return lambda model_fn, x0, rng: discrete.d3pm_loss(
        token_model_fn(diffusion_config, model_fn), process, levels.images_to_tokens(x0, k),
        rng, **options)
  return lambda model_fn, x0, rng: discrete.masked_loss(
      token_model_fn(diffusion_config, model_fn), process, levels.images_to_tokens(x0, k),
      rng, num_classes=k)


def _check_choices(diffusion_config: ml_collections.ConfigDict) -> None:
  for field, choices in (("kernel", KERNELS), ("kernel_schedule", discrete.BETA_SCHEDULES),
                         ("discrete_loss", discrete.D3PM_LOSS_TYPES),
                         ("masking", discrete.MASKING_SCHEDULES)):
    if diffusion_config[field] not in choices:
      hint = (" (the embedding kernel needs token embeddings: build it with "
              "jaxdiff.discrete.make_kernel)" if diffusion_config[field] == "embedding" else "")
      raise ValueError(f"config.diffusion.{field}={diffusion_config[field]!r} is not one of "
                       f"{choices}{hint}.")
  start, end = diffusion_config.kernel_beta_start, diffusion_config.kernel_beta_end
  if not 0 < start <= end <= 1:
    raise ValueError(f"config.diffusion.kernel_beta_start={start}, kernel_beta_end={end}; "
                     "expected 0 < start <= end <= 1.")
  for field in ("hybrid_coeff", "masking_exponent"):
    if not diffusion_config[field] >= (0 if field == "hybrid_coeff" else 1e-12):
      raise ValueError(f"config.diffusion.{field}={diffusion_config[field]}; expected a "
                       f"{'non-negative' if field == 'hybrid_coeff' else 'positive'} number.")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field when a discrete run's config cannot train: K, the
  kernel and schedule choices, and a network with K logits per channel (and K' tokens)."""
  diffusion = config.diffusion
  if diffusion.objective not in OBJECTIVES:
    return
  k = diffusion.num_categories
  if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 256:
    raise ValueError(f"config.diffusion.num_categories={k!r}; the {diffusion.objective!r} "
                     "objective needs K, the number of categories of the data, in [2, 256].")
  _check_choices(diffusion)
  expected = k * config.data.channels
  if config.model.out_channels != expected:
    raise ValueError(f"config.model.out_channels={config.model.out_channels!r}; the "
                     f"{diffusion.objective!r} objective needs num_categories * channels = "
                     f"{expected} (K logits per channel).")
  if config.model.name == "transformer" and config.model.num_tokens != num_tokens(diffusion):
    raise ValueError(f"config.model.num_tokens={config.model.num_tokens!r}; x_t holds "
                     f"{num_tokens(diffusion)} tokens (K{' and the mask' * has_mask(diffusion)}).")
  if config.model.get("learn_sigma", False):
    raise ValueError(f"config.model.learn_sigma=True learns a Gaussian variance; the "
                     f"{diffusion.objective!r} objective has none.")


def check_sampler(name: str, config: ml_collections.ConfigDict,
                  num_steps: Optional[int]) -> None:
  """Raises ValueError unless the tools' sampler ``name`` fits the run's objective: "d3pm"
  (the whole chain) for "d3pm", "unmask" (any number of steps) for "masked"."""
  objective = config.diffusion.objective
  if objective in OBJECTIVES and name != SAMPLER_OF[objective]:
    raise ValueError(f"the {objective!r} objective samples with {SAMPLER_OF[objective]!r}, "
                     f"not {name!r}")
  if objective not in OBJECTIVES and name in SAMPLERS:
    owner = next(o for o, s in SAMPLER_OF.items() if s == name)
    raise ValueError(f"sampler {name!r} is for the discrete {owner!r} objective; this run's "
                     f"objective is {objective!r}")
  steps = config.diffusion.num_timesteps
  if name == "d3pm" and num_steps not in (None, steps):
    raise ValueError(f"d3pm runs the whole chain of config.diffusion.num_timesteps={steps} "
                     f"steps; num_steps must be None or {steps}, got {num_steps}")
  if num_steps is not None and (isinstance(num_steps, bool) or num_steps < 1):
    raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")


def check_data(config: ml_collections.ConfigDict, source: Any, *,
               every_level: bool = True) -> None:
  """Raises ValueError when a discrete run's data do not fit K: a value off the K levels
  round(k * 255 / (K - 1)), or (``every_level``) fewer than K levels in use. Reads up to
  10000 examples spread over the source, cropped and resized as training sees them. Skipped
  when config.data.quantize rounds the data to K levels."""
  from jaxdiff import data  # pylint: disable=g-import-not-at-top  (TFDS, only when training)
  if not is_categorical(config) or config.data.quantize:
    return
  k = config.diffusion.num_categories
  count = min(len(source), _DATA_CHECK_EXAMPLES)
  indices = np.unique(np.linspace(0, len(source) - 1, count).astype(np.int64))
  images, _ = source.read(indices)
  values = np.unique(np.concatenate([
      np.unique(data.center_crop_resize(image, size=config.data.image_size))
      for image in images]))
  grid = levels.uint8_levels(k)
  off_grid = np.setdiff1d(values, grid)
  if off_grid.size or (every_level and len(values) < k):
    what = (f"level {int(off_grid[0])} is not one of the {k} levels round(k * 255 / {k - 1})"
            if off_grid.size else f"only {len(values)} of the {k} levels occur")
    raise ValueError(
        f"config.diffusion.num_categories={k} does not match dataset {config.data.name!r} "
        f"({len(values)} distinct 8-bit levels): {what}; set num_categories to the data's "
        "number of levels, or config.data.quantize=True to round the data to K levels.")


@functools.partial(jax.jit, static_argnames=("shape", "num_categories", "mask", "sharding"))
def _prior_tokens(key: jax.Array, *, shape: tuple[int, ...], num_categories: int, mask: bool,
                  sharding: jax.sharding.Sharding) -> jax.Array:
  """x_T: all masks, or uniform tokens, laid out as ``sharding`` says."""
  tokens = (jnp.full(shape, num_categories, jnp.int32) if mask
            else jax.random.randint(key, shape, 0, num_categories))
  return jax.lax.with_sharding_constraint(tokens, sharding)


def generate(config: ml_collections.ConfigDict, model_fn: ModelFn, key: jax.Array,
             shape: tuple[int, ...], *, num_steps: Optional[int],
             sharding: jax.sharding.Sharding) -> jax.Array:
  """Images [B, H, W, C] in [-1, 1] of samples of a discrete run's network ``model_fn``
  (`jaxdiff.discrete.d3pm_sample` or `unmask_sample`), x_T laid out over ``sharding``."""
  diffusion = config.diffusion
  k = diffusion.num_categories
  model = token_model_fn(diffusion, model_fn)
  init_key, chain_key = jax.random.split(key)
  x_T = _prior_tokens(init_key, shape=shape, num_categories=k, mask=has_mask(diffusion),
                      sharding=sharding)
  if diffusion.objective == "d3pm":
    tokens = discrete.d3pm_sample(model, kernel_from_config(diffusion), chain_key, x_T=x_T)
  else:
    tokens = discrete.unmask_sample(model, masking_from_config(diffusion), chain_key, x_T=x_T,
                                    num_classes=k, num_steps=num_steps or DEFAULT_UNMASK_STEPS)
  return levels.tokens_to_images(tokens, k)


MASKED_BPD_POINTS = 128       # time points per example of masked diffusion's bound


@functools.partial(jax.jit, static_argnames=("apply_fn", "diffusion"))
def _batch_bound(variables: Any, process: Any, images: jax.Array, key: jax.Array, *,
                 apply_fn: Callable[..., jax.Array],
                 diffusion: ml_collections.FrozenConfigDict) -> dict[str, jax.Array]:
  model = token_model_fn(diffusion, jax.tree_util.Partial(apply_fn, variables))
  x0 = levels.images_to_tokens(images, diffusion.num_categories)
  if diffusion.objective == "d3pm":
    return discrete.calc_bpd(model, process, x0, key)
  return discrete.masked_bpd(model, process, x0, key, num_classes=diffusion.num_categories,
                             num_points=MASKED_BPD_POINTS)


def dataset_bpd(config: ml_collections.ConfigDict, apply_fn: Callable[..., jax.Array],
                variables: Any, images: np.ndarray, *, rng: jax.Array, batch_size: int,
                mesh: Optional[jax.sharding.Mesh] = None,
                on_batch: Optional[Callable[[int, int], None]] = None) -> Any:
  """The bits/dim bound of images [N, H, W, C] (`jaxdiff.evaluation.bpd.dataset_bound`):
  D3PM's whole chain (`discrete.calc_bpd`) or masked diffusion's L_inf at 128 stratified
  times per image (`discrete.masked_bpd`)."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  variables = jax.device_put(variables, parallel.replicated(mesh))
  diffusion = ml_collections.FrozenConfigDict(config.diffusion)
  process = process_from_config(config.diffusion)
  return bpd.dataset_bound(
      lambda batch, key: _batch_bound(variables, process, batch, key, apply_fn=apply_fn,
                                      diffusion=diffusion),
      images, rng=rng, batch_size=batch_size, mesh=mesh, on_batch=on_batch)
