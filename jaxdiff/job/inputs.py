"""What a run's model trains on: the objective that `jaxdiff.job.step.train_step` minimizes,
and the batches it sees.

`step_objective(config)`: a diffusion loss (`jaxdiff.config.objectives.make_loss_fn`), or
for an autoencoder run the autoencoder's own objective (`jaxdiff.autoencoder`).
`model_batches` turns the pipeline's pixel batches into the model's: for a caption model
the caption tokens of each image (`jaxdiff.data.captions`, built from the pixels and the
label, replaced by the empty caption with probability `train.label_dropout` for
classifier-free guidance) under the key "caption"; for a latent run the scaled latents
of the images (`jaxdiff.job.latents`) instead of the images. Batch `s` uses the key
fold_in(seed key, s), so a resumed run sees the same batches.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff.autoencoder import AutoencoderObjective
from jaxdiff.config import builders, objectives
from jaxdiff.data import captions as captions_lib
from jaxdiff.job.latents import LatentCoder
from jaxdiff.models.text_encoder import null_tokens

_BATCH_KEY_TAG = 0x1a7e  # Separates these draws from the step's own randomness.


def step_objective(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`train_step`'s objective options: {"loss_fn": ...}, or for an autoencoder run
  {"loss_fn": None, "objective_fn": AutoencoderObjective(...)}."""
  if config.model.name != "autoencoder_kl":
    return {"loss_fn": objectives.make_loss_fn(config.diffusion)}
  section = config.autoencoder
  return {"loss_fn": None, "objective_fn": AutoencoderObjective(
      builders.build_autoencoder(config), reconstruction=section.reconstruction,
      kl_weight=section.kl_weight, disc_weight=section.disc_weight,
      disc_start=section.disc_start, sample_posterior=section.sample_posterior)}


def null_condition(config: ml_collections.ConfigDict) -> Any:
  """The "no condition" of classifier-free guidance: the null label (class-conditional
  models), the empty caption int32 [max_length] (caption models), or None."""
  if config.conditioner.name == "text":
    return null_tokens(config.conditioner.max_length)
  return config.model.get("num_classes")


@functools.partial(jax.jit, static_argnames=("caption_set", "max_length", "dropout"))
def _prepare(coder: LatentCoder | None, batch: dict[str, jax.Array], key: jax.Array, *,
             caption_set: captions_lib.CaptionSet | None, max_length: int,
             dropout: float) -> dict[str, jax.Array]:
  caption_key, drop_key, encode_key = jax.random.split(key, 3)
  out = dict(batch)
  if caption_set is not None:
    tokens = captions_lib.caption_tokens(caption_set, batch["image"], batch["label"],
                                         caption_key, max_length=max_length)
    drop = jax.random.bernoulli(drop_key, dropout, tokens.shape[:1])
    out["caption"] = jnp.where(drop[:, None], null_tokens(max_length), tokens)
  if coder is not None:
    out["image"] = coder.encode(batch["image"], encode_key)
  return out


def model_batches(config: ml_collections.ConfigDict,
                  batches: Iterator[dict[str, jax.Array]], *, coder: LatentCoder | None,
                  start_step: int) -> Iterator[dict[str, jax.Array]]:
  """The model's batches of the pipeline's `batches` (module docstring); `batches` itself
  when the run needs neither captions nor latents. Closing the result closes `batches`."""
  text = config.conditioner.name == "text"
  if coder is None and not text:
    return batches
  options = dict(caption_set=builders.caption_set(config) if text else None,
                 max_length=config.conditioner.max_length,
                 dropout=float(config.train.label_dropout))
  base = jax.random.fold_in(jax.random.PRNGKey(config.train.seed), _BATCH_KEY_TAG)

  def generate() -> Iterator[dict[str, jax.Array]]:
    try:
      for step, batch in enumerate(batches, start=start_step):
        yield _prepare(coder, batch, jax.random.fold_in(base, step), **options)
    finally:
      batches.close()

  return generate()
