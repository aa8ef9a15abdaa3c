"""Test-set bits/dim driver against an independent float64 derivation of every term.

With an oracle eps-model that knows the (single) data image x0, the predicted x0 is exact,
so every term of the bound is noise-free and has a closed form (Ho et al. 2020, eq. 5):
  L_t (t >= 1), variance "fixed_large": KL(N(mu, pv_t) || N(mu, beta_t)) per pixel
      = 0.5 * (log beta_t - log pv_t + pv_t / beta_t - 1);
  L_0: the discretized Gaussian decoder NLL of x0 around mean x0 with variance pv_1
      (tanh CDF approximation and 1e-12 clamp, as in Ho et al.'s code);
  L_T: KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)).
"""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import schedules
from jaxdiff.evaluation import bpd

T = 20
_BETAS = np.linspace(1e-3, 0.3, T)  # a short chain with a non-trivial prior term


def _approx_cdf(x):
  return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def _expected_terms(betas: np.ndarray, x0: np.ndarray) -> tuple[np.ndarray, float]:
  """(vb [T], prior) in bits/dim for the oracle model, from the betas alone (float64)."""
  alphas_cumprod = np.cumprod(1.0 - betas)
  prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
  vb = np.empty(T)
  vb[1:] = 0.5 * (np.log(betas[1:]) - np.log(posterior_variance[1:])
                  + posterior_variance[1:] / betas[1:] - 1.0) / np.log(2.0)
  inv_std = 1.0 / np.sqrt(posterior_variance[1])
  cdf_plus, cdf_min = _approx_cdf(inv_std / 255.0), _approx_cdf(-inv_std / 255.0)
  log_probs = np.where(x0 < -0.999, np.log(max(cdf_plus, 1e-12)),
                       np.where(x0 > 0.999, np.log(max(1.0 - cdf_min, 1e-12)),
                                np.log(max(cdf_plus - cdf_min, 1e-12))))
  vb[0] = -log_probs.mean() / np.log(2.0)
  mean, var = np.sqrt(alphas_cumprod[-1]) * x0, 1.0 - alphas_cumprod[-1]
  prior = (0.5 * (-1.0 - np.log(var) + var + mean ** 2)).mean() / np.log(2.0)
  return vb, prior


def _oracle_apply(params, x_t, t):
  """eps that makes predicted x0 equal params["x0"]: (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
  abar = params["alphas_cumprod"][t][:, None, None, None]
  return (x_t - jnp.sqrt(abar) * params["x0"]) / jnp.sqrt(1.0 - abar)


def test_bound_is_every_timestep_and_sums_its_terms(x64):
  schedule = schedules.Schedule.from_betas(_BETAS, dtype=jnp.float64)
  levels = np.random.default_rng(0).integers(0, 256, (4, 4, 1))
  levels[0, 0, 0], levels[0, 1, 0] = 0, 255  # both edge cases of the decoder
  x0 = levels / 127.5 - 1.0
  images = np.broadcast_to(x0, (5, 4, 4, 1)).astype(np.float64)
  params = {"x0": jnp.asarray(x0), "alphas_cumprod": schedule.alphas_cumprod}
  # batch_size 2 over 5 images: three batches, the last one padded.
  result = bpd.dataset_bpd(_oracle_apply, params, schedule, images, rng=jax.random.PRNGKey(1),
                           batch_size=2, prediction="eps", variance="fixed_large")
  chex.assert_shape(result.vb, (T,))
  chex.assert_shape(result.per_example, (5,))
  assert result.num_examples == 5
  expected_vb, expected_prior = _expected_terms(np.asarray(schedule.betas), x0)
  # float64 throughout; the oracle's x0 is exact to ~1e-15, far below these tolerances.
  np.testing.assert_allclose(result.vb, expected_vb, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(result.prior_bpd, expected_prior, rtol=1e-9)
  np.testing.assert_allclose(result.bpd, result.prior_bpd + result.vb.sum(), rtol=1e-12)
  np.testing.assert_allclose(result.bpd, expected_prior + expected_vb.sum(), rtol=1e-9)
  # Noise-free terms: every image gets the same bound, so the standard error is 0.
  np.testing.assert_allclose(result.per_example, result.bpd, rtol=1e-12)
  assert result.stderr < 1e-9


def test_standard_error_of_a_noisy_model():
  schedule = schedules.Schedule.from_betas(_BETAS)
  images = np.random.default_rng(2).uniform(-1, 1, (6, 4, 4, 1)).astype(np.float32)
  result = bpd.dataset_bpd(lambda params, x_t, t: params * x_t, jnp.float32(0.5), schedule,
                           images, rng=jax.random.PRNGKey(0), batch_size=4)
  per_example = result.per_example
  assert np.ptp(per_example) > 0  # images differ, so the bounds differ
  np.testing.assert_allclose(result.stderr, per_example.std(ddof=1) / np.sqrt(6), rtol=1e-12)
  np.testing.assert_allclose(result.bpd, per_example.mean(), rtol=1e-12)
  # The bound is the sum of its terms (float32 terms summed in a different order).
  np.testing.assert_allclose(result.bpd, result.prior_bpd + result.vb.sum(), rtol=1e-5)


def test_rejects_too_few_images():
  schedule = schedules.Schedule.from_betas(_BETAS)
  with pytest.raises(ValueError, match=r"expected images \[N >= 2, H, W, C\] of floats"):
    bpd.dataset_bpd(lambda p, x, t: x, None, schedule, np.zeros((1, 4, 4, 1)),
                    rng=jax.random.PRNGKey(0), batch_size=1)


_TWO_DEVICE_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jaxdiff import parallel, schedules
from jaxdiff.evaluation import bpd
from jaxdiff.evaluation.batching import map_batches
assert jax.device_count() == 2
schedule = schedules.Schedule.from_betas(np.linspace(1e-3, 0.3, 20))
images = np.random.default_rng(3).uniform(-1, 1, (5, 4, 4, 1)).astype(np.float32)
def record(batch, index):
  seen.append(len(batch.sharding.device_set))
  return batch
seen = []
out = map_batches(record, images, batch_size=3)  # rounded up to 4, a multiple of 2 devices
assert seen == [2, 2] and out.shape == images.shape, (seen, out.shape)
np.testing.assert_array_equal(out, images)
def run(devices):
  return bpd.dataset_bpd(lambda p, x, t: p * x, jnp.float32(0.5), schedule, images,
                         rng=jax.random.PRNGKey(0), batch_size=4,
                         mesh=parallel.make_mesh(devices))
two, one = run(jax.devices()), run(jax.devices()[:1])
np.testing.assert_allclose(two.per_example, one.per_example, rtol=1e-6)
print("ok", two.bpd)
"""


def test_sharded_over_two_devices_matches_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _TWO_DEVICE_SCRIPT], env=env,
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith("ok")
