"""Sampling images from a trained model as `config.sample` and `config.diffusion` describe."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from jaxdiff import samplers
from jaxdiff.config import sampling


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


def sample_labels(config: ml_collections.ConfigDict) -> jax.Array | None:
  """Labels 0, 1, ..., num_classes-1, 0, ... for a class-conditional model, else None."""
  if config.model.num_classes is None:
    return None
  return jnp.arange(config.sample.num_samples, dtype=jnp.int32) % config.model.num_classes


def sample_images(config: ml_collections.ConfigDict, model: nn.Module, params: Any,
                  rng: jax.Array,
                  *, sharding: jax.sharding.Sharding | None = None) -> jax.Array:
  """`config.sample.num_samples` images [N, H, W, C] in [-1, 1] from `params`.

  Runs `config.sample.sampler` from the one sampler table
  (`jaxdiff.sampling.SAMPLERS`: the discrete chains for objective "ddpm", the SDE
  samplers for "sde_dsm", annealed Langevin dynamics for "ncsn") with `config.sample`'s
  steps and options. With `sharding` (split over the batch axis) the chain runs on all its
  devices.
  """
  sample_config = config.sample
  shape = (sample_config.num_samples, config.data.image_size, config.data.image_size,
           config.data.channels)
  noise_rng, chain_rng = jax.random.split(rng)
  x_T = jax.jit(lambda key: jax.random.normal(key, shape), out_shardings=sharding)(noise_rng)
  model_fn = model_fn_for(model, params, labels=sample_labels(config),
                          guidance_scale=sample_config.guidance_scale,
                          null_label=config.model.num_classes)
  job = sampling.Job(model_fn=model_fn, diffusion=config.diffusion, rng=chain_rng,
                              x_T=x_T, num_steps=sample_config.num_steps,
                              eta=sample_config.eta, clip_denoised=sample_config.clip_denoised,
                              step_lr=sample_config.ald_step_lr)
  return sampling.run_sampler(sample_config.sampler, job)
