"""The diagonal-Gaussian posterior of a KL-regularized autoencoder (Kingma & Welling 2014;
Rombach et al. 2022, Sec. 3.1 and App. G).

The encoder outputs the mean and log-variance of q(z | x) = N(mu, diag(sigma^2)); a latent
is drawn by reparameterization, z = mu + sigma * eps with eps ~ N(0, I) (Kingma & Welling
2014, eq. 10), and the regularizer is KL(q(z | x) || N(0, I)) in closed form (their
Appendix B): 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class DiagonalGaussian:
  """N(mean, diag(exp(logvar))) per example; `mean` and `logvar` are [B, ...] of one shape.

  Reductions (`kl`, `log_prob`) sum over every axis but the first, giving one value per
  example in nats.
  """

  mean: jax.Array
  logvar: jax.Array

  @property
  def std(self) -> jax.Array:
    """sigma = exp(logvar / 2)."""
    return jnp.exp(0.5 * self.logvar)

  def sample(self, key: jax.Array) -> jax.Array:
    """z = mean + std * eps, eps ~ N(0, I) from `key` (the reparameterization trick)."""
    eps = jax.random.normal(key, self.mean.shape, self.mean.dtype)
    return self.mean + self.std * eps

  def mode(self) -> jax.Array:
    """The posterior mode (= mean)."""
    return self.mean

  def kl(self) -> jax.Array:
    """KL(q || N(0, I)) per example [B]: 0.5 * sum(mean^2 + var - 1 - logvar)."""
    terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar
    return 0.5 * jnp.sum(terms, axis=tuple(range(1, terms.ndim)))

  def log_prob(self, z: jax.Array) -> jax.Array:
    """log q(z | x) per example [B]."""
    terms = (math.log(2.0 * math.pi) + self.logvar
             + jnp.square(z - self.mean) * jnp.exp(-self.logvar))
    return -0.5 * jnp.sum(terms, axis=tuple(range(1, terms.ndim)))
