"""The training objective of the KL-regularized autoencoder (Rombach et al. 2022, Sec. 3.1
and App. G; the adversarial part is Esser et al. 2021's VQGAN loss, Sec. 3.2).

Per example, with x the image, q(z | x) the diagonal-Gaussian posterior and x^ = D(z) for
z ~ q(z | x):

    L = sum_pixels |x - x^|  (or squared)  +  kl_weight * KL(q(z | x) || N(0, I))
        + [step >= disc_start] * (lambda * L_G + L_D)

with the generator loss L_G = -mean(D_psi(x^)) over the patch logits, the discriminator's
hinge loss L_D = (mean(relu(1 - D_psi(x))) + mean(relu(1 + D_psi(x^)))) / 2, and Esser et
al.'s adaptive weight (eq. 7) lambda = disc_weight * ||grad_{G_L} L_rec|| /
(||grad_{G_L} L_G|| + 1e-4), G_L being the decoder's last layer. Reconstruction terms are
summed over pixels as in Rombach et al.'s code, so their kl_weight (1e-6) keeps its meaning.
L_G reaches only the autoencoder's parameters and L_D only the discriminator's (stop
gradients), so one gradient of the sum trains both, as their two optimizers do.
No perceptual (LPIPS) term: it needs downloaded VGG weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.models.autoencoder import AutoencoderWithDiscriminator
from jaxdiff.models.autoencoder_kl import AutoencoderKL
from jaxdiff.models.diffusers_blocks import ACTIVATIONS, conv
from jaxdiff.posterior import DiagonalGaussian

RECONSTRUCTION_LOSSES = ("l1", "l2")
_DELTA = 1e-4        # Esser et al.'s eq. 7 denominator offset.
_MAX_WEIGHT = 1e4    # ... and the clip of their code.


def _per_example_sum(x: jax.Array) -> jax.Array:
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def _per_example_mean(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def reconstruction_loss(x: jax.Array, reconstruction: jax.Array, *, kind: str) -> jax.Array:
  """Per-example [B] sum over pixels of |x - x^| ("l1") or (x - x^)^2 ("l2")."""
  if kind not in RECONSTRUCTION_LOSSES:
    raise ValueError(f"reconstruction loss {kind!r} is not one of {RECONSTRUCTION_LOSSES}")
  error = x - reconstruction
  return _per_example_sum(jnp.abs(error) if kind == "l1" else jnp.square(error))


def hinge_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """Per-example [B] hinge loss of a patch discriminator (Lim & Ye 2017; Esser et al.)."""
  return 0.5 * (_per_example_mean(jax.nn.relu(1.0 - logits_real))
                + _per_example_mean(jax.nn.relu(1.0 + logits_fake)))


def adaptive_weight(rec_grad: jax.Array, gan_grad: jax.Array) -> jax.Array:
  """Esser et al. 2021, eq. 7: ||rec_grad|| / (||gan_grad|| + 1e-4), clipped to [0, 1e4],
  without gradient (both are gradients with respect to the decoder's last layer)."""
  weight = jnp.linalg.norm(rec_grad) / (jnp.linalg.norm(gan_grad) + _DELTA)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, _MAX_WEIGHT))


def _is_output_norm(module: Any, method_name: str) -> bool:
  return method_name == "__call__" and module.name == "conv_norm_out"


def decode_with_features(autoencoder: AutoencoderKL, params: Any,
                         z: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(decode(z), h)`` with h the input of the decoder's last convolution ``conv_out``."""
  reconstruction, state = autoencoder.apply(
      {"params": params}, z, method=AutoencoderKL.decode, capture_intermediates=_is_output_norm,
      mutable=["intermediates"])
  normed = state["intermediates"]["decoder"]["conv_norm_out"]["__call__"][0]
  return reconstruction, ACTIVATIONS[autoencoder.act_fn](normed)


def last_layer_grads(autoencoder: AutoencoderKL, params: Any, features: jax.Array,
                     *cotangents: jax.Array) -> list[jax.Array]:
  """Gradients with respect to ``conv_out``'s kernel of losses whose gradients with respect
  to the reconstruction are ``cotangents`` (one backward step through the last layer)."""
  head = params["decoder"]["conv_out"]
  layer = conv(autoencoder.out_channels, name=None)
  _, pull = jax.vjp(lambda kernel: layer.apply(
      {"params": {"kernel": kernel, "bias": head["bias"]}}, features), head["kernel"])
  return [pull(cotangent)[0] for cotangent in cotangents]


@dataclasses.dataclass(frozen=True)
class AutoencoderObjective:
  """``objective(params, images, rng, step) -> per-example loss [B]`` (module docstring) for
  the parameters of ``model``.

  Attributes:
    model: the autoencoder and its optional discriminator.
    reconstruction: "l1" or "l2".
    kl_weight: weight of the posterior's KL to N(0, I).
    disc_weight: the adversarial term's weight, times the adaptive weight.
    disc_start: the step from which the adversarial terms count.
    sample_posterior: decode z ~ q(z | x) (True) or the posterior mean.
  """

  model: AutoencoderWithDiscriminator
  reconstruction: str = "l1"
  kl_weight: float = 1e-6
  disc_weight: float = 0.5
  disc_start: int = 0
  sample_posterior: bool = True

  def __call__(self, params: Any, images: jax.Array, rng: jax.Array,
               step: jax.Array) -> jax.Array:
    autoencoder = self.model.autoencoder
    mean, logvar = autoencoder.apply({"params": params["autoencoder"]}, images,
                                     method=AutoencoderKL.encode)
    posterior = DiagonalGaussian(mean, logvar)
    z = posterior.sample(rng) if self.sample_posterior else posterior.mode()
    reconstruction, features = decode_with_features(autoencoder, params["autoencoder"], z)
    loss = (reconstruction_loss(images, reconstruction, kind=self.reconstruction)
            + self.kl_weight * posterior.kl())
    if self.model.discriminator is None:
      return loss
    return loss + self._adversarial(params, images, reconstruction, features, step)

  def _adversarial(self, params: Any, images: jax.Array, reconstruction: jax.Array,
                   features: jax.Array, step: jax.Array) -> jax.Array:
    """[step >= disc_start] * (lambda * L_G + L_D), per example."""
    discriminator, d_params = self.model.discriminator, params["discriminator"]
    frozen = jax.lax.stop_gradient(d_params)

    def generator_loss(x_hat: jax.Array) -> jax.Array:
      return -_per_example_mean(discriminator.apply({"params": frozen}, x_hat))

    fixed = jax.lax.stop_gradient(reconstruction)
    rec_cotangent = jax.grad(lambda r: jnp.mean(
        reconstruction_loss(images, r, kind=self.reconstruction)))(fixed)
    gan_cotangent = jax.grad(lambda r: jnp.mean(generator_loss(r)))(fixed)
    rec_grad, gan_grad = last_layer_grads(self.model.autoencoder, params["autoencoder"],
                                          jax.lax.stop_gradient(features), rec_cotangent,
                                          gan_cotangent)
    weight = self.disc_weight * adaptive_weight(rec_grad, gan_grad)
    d_loss = hinge_discriminator_loss(discriminator.apply({"params": d_params}, images),
                                      discriminator.apply({"params": d_params}, fixed))
    active = (step >= self.disc_start).astype(d_loss.dtype)
    return active * (weight * generator_loss(reconstruction) + d_loss)
