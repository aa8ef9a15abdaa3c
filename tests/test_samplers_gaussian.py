"""Samplers on Gaussian data against their exact output distributions (NumPy float64).

For data N(mu, Sigma) the exact eps-prediction (tests/testing.py) is affine in x_t, so
with clip_denoised=False every step is x <- A x + b + noise and each sampler's output is
exactly Gaussian with moments the oracle below propagates, written from the papers'
equations independently of jaxdiff. Each test checks two things:

- implementation: sample moments match the oracle's within 5 standard errors of the
  sample size (SE of a mean sqrt(C_ii / n); of a covariance entry
  sqrt((C_ii C_jj + C_ij^2) / n), exact for Gaussian samples). 5 SE puts the chance of a
  false failure below 1e-6 per entry, and a wrong coefficient anywhere in a chain shifts
  the output by many SE;
- fidelity: the oracle's distance to the data distribution (the discretization error of
  the chain, computed exactly) is below a stated bound, and the samples reproduce the
  data moments within 5 SE plus that distance.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers, schedules, testing

T = 1000
N = 4000  # samples per test; the SE of a unit-variance mean is then 0.016
AB = testing.linear_alphas_cumprod(T)
MU = np.array([0.5, -0.3, 0.2])
_L = np.array([[0.6, 0.0, 0.0], [0.3, 0.4, 0.0], [-0.2, 0.1, 0.3]])
SIGMA = _L @ _L.T  # eigenvalues 0.06, 0.17, 0.52: correlated, anisotropic
DATA = testing.GaussianMixture.gaussian(MU, SIGMA)
EYE = np.eye(3)


@pytest.fixture(scope="module")
def schedule():
  return schedules.make_schedule("linear", T)


@pytest.fixture(scope="module")
def model(schedule):
  return testing.model_fn(DATA, schedule)


def _ddpm_affine(a, a_prev, variance, last):
  return testing.ddpm_step_affine(MU, SIGMA, a, a_prev, variance=variance, last=last)


def _ddim_affine(a, a_prev, eta):
  return testing.ddim_step_affine(MU, SIGMA, a, a_prev, eta=eta)


def _reverse(kept, step):
  return testing.reverse_chain(AB[np.asarray(kept)], step)


def _moments(steps, mean=np.zeros(3), cov=EYE):
  return testing.chain_moments(steps, mean, cov)


_compose = functools.partial(testing.compose, dim=3)


def _assert_moments(x, mean, cov, *, slack_mean=0.0, slack_cov=0.0):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  n, var = len(x), np.diag(cov)
  se_mean = np.sqrt(var / n)
  se_cov = np.sqrt((np.outer(var, var) + cov ** 2) / n)
  np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * se_mean + slack_mean)
  np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), 5 * se_cov + slack_cov)


def _assert_matches(x, oracle, *, max_discretization):
  """Samples match the oracle (5 SE) and the data (5 SE + the oracle's exact gap)."""
  mean, cov = oracle
  gap_mean, gap_cov = np.abs(mean - MU), np.abs(cov - SIGMA)
  assert gap_mean.max() <= max_discretization and gap_cov.max() <= max_discretization, (
      gap_mean.max(), gap_cov.max())
  _assert_moments(x, mean, cov)
  _assert_moments(x, MU, SIGMA, slack_mean=gap_mean, slack_cov=gap_cov)


# Discretization bounds: the full T = 1000 chain is within 0.005 of the data (the last
# step adds no noise), a 100-step respaced one within 0.04, 50-step DDIM within 0.07.
@pytest.mark.parametrize("variance,num_steps,bound", [
    ("fixed_small", None, 0.005), ("fixed_large", None, 0.005),
    ("fixed_small", 100, 0.04), ("fixed_large", 100, 0.04)])
def test_ddpm_reproduces_gaussian(schedule, model, variance, num_steps, bound):
  x = samplers.ddpm(model, schedule, jax.random.PRNGKey(0), (N, 3), num_steps=num_steps,
                    variance=variance, clip_denoised=False)
  chex.assert_shape(x, (N, 3))
  kept = np.arange(T) if num_steps is None else np.arange(0, T, T // num_steps)
  oracle = _moments(_reverse(kept, lambda a, ap, last: _ddpm_affine(a, ap, variance, last)))
  _assert_matches(x, oracle, max_discretization=bound)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_reproduces_gaussian(schedule, model, eta):
  x = samplers.ddim(model, schedule, jax.random.PRNGKey(1), (N, 3), num_steps=50, eta=eta,
                    clip_denoised=False)
  oracle = _moments(_reverse(np.arange(0, T, 20), lambda a, ap, _: _ddim_affine(a, ap, eta)))
  _assert_matches(x, oracle, max_discretization=0.07)


def test_ddim_given_timesteps(schedule, model):
  kept = [0, 3, 10, 40, 100, 200, 350, 500, 700, 850, 999]  # uneven on purpose
  x = samplers.ddim(model, schedule, jax.random.PRNGKey(2), (N, 3), timesteps=kept, eta=1.0,
                    clip_denoised=False)
  _assert_moments(x, *_moments(_reverse(kept, lambda a, ap, _: _ddim_affine(a, ap, 1.0))))


def _x_T(seed, n=256):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, 3))


def test_ddim_eta0_is_the_deterministic_map(schedule, model):
  """eta = 0: the output is the oracle's affine map of x_T, whatever the rng."""
  x_T = _x_T(3)
  x_a = samplers.ddim(model, schedule, jax.random.PRNGKey(4), x_T.shape, x_T=x_T,
                      clip_denoised=False)
  x_b = samplers.ddim(model, schedule, jax.random.PRNGKey(5), x_T.shape, x_T=x_T,
                      clip_denoised=False)
  np.testing.assert_array_equal(x_a, x_b)
  mat, off = _compose(_reverse(np.arange(0, T, 20), lambda a, ap, _: _ddim_affine(a, ap, 0.0)))
  # float32 through 50 steps of O(1) maps: errors of a few 1e-6 relative; 1e-4 absolute.
  np.testing.assert_allclose(x_a, np.asarray(x_T, np.float64) @ mat.T + off, atol=1e-4)


def test_float64_schedule_stays_float64(x64):
  """Under x64 a float64 schedule gives float64 samples, matching the oracle to 1e-10."""
  schedule = schedules.make_schedule("linear", T, dtype=jnp.float64)
  x_T = jnp.asarray(np.random.default_rng(13).standard_normal((64, 3)))
  kept = np.arange(0, T, 20)
  x = samplers.ddim(testing.model_fn(DATA, schedule), schedule, None, x_T.shape, x_T=x_T,
                    clip_denoised=False)
  assert x.dtype == jnp.float64
  mat, off = _compose(_reverse(kept, lambda a, ap, _: _ddim_affine(a, ap, 0.0)))
  np.testing.assert_allclose(x, np.asarray(x_T) @ mat.T + off, atol=1e-10)
  x = samplers.ddpm(testing.model_fn(DATA, schedule), schedule, jax.random.PRNGKey(0),
                    x_T.shape, num_steps=20)
  assert x.dtype == jnp.float64


def _inversion_steps(kept, iterations):
  """Inverse DDIM steps: solve eq. 12 (sigma = 0) for its input, eps evaluated first at
  the current state and then at each new guess (fixed-point iterations)."""
  a = AB[np.asarray(kept)]
  steps = []
  for k in range(len(a)):
    a_from, a_to = (a[k - 1] if k > 0 else 1.0), a[k]
    g, h = testing.eps_affine(MU, SIGMA, a_to)
    # guess' = alpha x + gamma eps(guess), eps(guess) = G guess + h; guess_0 = x.
    alpha = np.sqrt(a_to / a_from)
    gamma = np.sqrt(1.0 - a_to) - np.sqrt(a_to) * np.sqrt(1.0 - a_from) / np.sqrt(a_from)
    mat, off = EYE, np.zeros(3)
    for _ in range(iterations + 1):
      mat, off = alpha * EYE + gamma * g @ mat, gamma * (g @ off + h)
    steps.append((mat, off, 0.0))
  return steps


# Round-trip errors of the exact (oracle) maps on these 256 points, 50 steps: 0.11 for
# the plain inversion (first order in the step), 2e-3 after 2 fixed-point iterations.
@pytest.mark.parametrize("iterations,round_trip_bound", [(0, 0.12), (2, 3e-3)])
def test_ddim_inversion_reconstructs(schedule, model, iterations, round_trip_bound):
  x0 = jnp.asarray(DATA.sample(6, 256)[0], jnp.float32)
  x_T = samplers.ddim_invert(model, schedule, x0, num_steps=50,
                             fixed_point_iterations=iterations)
  inv_mat, inv_off = _compose(_inversion_steps(np.arange(0, T, 20), iterations))
  np.testing.assert_allclose(x_T, np.asarray(x0, np.float64) @ inv_mat.T + inv_off, atol=1e-4)
  # Inverting maps data to (approximately) N(0, I): 5 SE on 256 samples, plus 0.1 for
  # the inversion and discretization error.
  _assert_moments(x_T, np.zeros(3), EYE, slack_mean=0.1, slack_cov=0.1)
  x0_back = samplers.ddim(model, schedule, None, x0.shape, x_T=x_T, num_steps=50,
                          clip_denoised=False)
  mat, off = _compose(_reverse(np.arange(0, T, 20), lambda a, ap, _: _ddim_affine(a, ap, 0.0)))
  oracle_back = (np.asarray(x0, np.float64) @ inv_mat.T + inv_off) @ mat.T + off
  np.testing.assert_allclose(x0_back, oracle_back, atol=1e-4)
  assert np.abs(oracle_back - np.asarray(x0)).max() < round_trip_bound
  np.testing.assert_allclose(x0_back, x0, atol=round_trip_bound + 1e-4)


def _inpaint_oracle(kept, transitions, known, mask):
  """Moments of RePaint (Lugmayr et al. Alg. 1) over levels, known region replaced."""
  a = np.append(1.0, AB[np.asarray(kept)])  # a[level]: alpha-bar of the state at a level
  mk, mu = np.diag(mask), np.diag(1.0 - mask)
  level = len(kept)
  mean = mk @ (np.sqrt(a[level]) * known)
  cov = mk * (1.0 - a[level]) + mu
  for up in transitions:
    if up:
      beta = 1.0 - a[level + 1] / a[level]
      mean, cov = np.sqrt(1.0 - beta) * mean, (1.0 - beta) * cov + beta * EYE
      level += 1
    else:
      a_mat, b, noise = _ddpm_affine(a[level], a[level - 1], "fixed_small", level == 1)
      level -= 1
      mean = mk @ (np.sqrt(a[level]) * known) + mu @ (a_mat @ mean + b)
      cov = mk * (1.0 - a[level]) + mu @ (a_mat @ cov @ a_mat.T + noise * EYE) @ mu
  assert level == 0
  return mean, cov


def _repaint_directions(num_steps, jump, resample):
  """RePaint's time schedule as a state machine: after each reverse step that lands on a
  level divisible by ``jump`` (with room above), jump back up until used ``resample - 1``
  times there."""
  used, level, ups = {}, num_steps, []
  while level > 0:
    ups.append(False)
    level -= 1
    if level % jump == 0 and level + jump <= num_steps and used.get(level, 0) < resample - 1:
      used[level] = used.get(level, 0) + 1
      ups.extend([True] * jump)
      level += jump
  return ups


def _conditional(mask, known):
  """The true conditional of the unknown dims given the known ones."""
  k, u = mask > 0, mask == 0
  gain = SIGMA[np.ix_(u, k)] @ np.linalg.inv(SIGMA[np.ix_(k, k)])
  return (MU[u] + gain @ (known[k] - MU[k]),
          SIGMA[np.ix_(u, u)] - gain @ SIGMA[np.ix_(k, u)])


# 100-step chains show RePaint's effect on the conditional; a 10-step chain has big
# alpha-bar jumps between levels and a far-out known value, so that a known region noised
# to a level one step off moves the unknown mean by 10 SE.
@pytest.mark.parametrize("num_steps,jump,resample,value,bound", [
    (100, 1, 1, 1.2, 0.15), (100, 5, 4, 1.2, 0.05), (10, 2, 3, 3.0, None)])
def test_inpaint_matches_repaint_oracle(schedule, model, num_steps, jump, resample, value,
                                        bound):
  mask = np.array([1.0, 0.0, 0.0])
  known = np.array([value, 0.0, 0.0])  # only the first coordinate is used
  x = samplers.inpaint(model, schedule, jax.random.PRNGKey(7),
                       jnp.broadcast_to(jnp.asarray(known, jnp.float32), (N, 3)),
                       mask[None], num_steps=num_steps, jump_length=jump,
                       resample_count=resample, clip_denoised=False)
  np.testing.assert_array_equal(np.asarray(x)[:, 0], np.float32(known[0]))
  kept = np.arange(0, T, T // num_steps)
  mean, cov = _inpaint_oracle(kept, _repaint_directions(num_steps, jump, resample), known, mask)
  _assert_moments(np.asarray(x)[:, 1:], mean[1:], cov[1:, 1:])
  if bound is not None:
    # Replacement alone misses the true conditional mean by 0.13 (the known pixel reaches
    # the unknown ones only through the noisy iterates); RePaint's resampling cuts that
    # to 0.04 (exact oracle values).
    cond_mean, _ = _conditional(mask, known)
    gap = np.abs(mean[1:] - cond_mean).max()
    assert gap < bound, gap


def test_sdedit_matches_oracle(schedule, model):
  """SDEdit from a fixed guide: noise to level n, then ancestral steps (exact moments)."""
  guide = np.array([1.0, -1.0, 0.5])
  num_steps, strength = 100, 0.3
  x = samplers.sdedit(model, schedule, jax.random.PRNGKey(8),
                      jnp.broadcast_to(jnp.asarray(guide, jnp.float32), (N, 3)),
                      strength=strength, num_steps=num_steps, clip_denoised=False)
  kept = np.arange(0, T, T // num_steps)[:30]  # ceil(0.3 * 100) = 30 steps are run
  a_start = AB[kept[-1]]
  oracle = _moments(_reverse(kept, lambda a, ap, last: _ddpm_affine(a, ap, "fixed_small", last)),
                    np.sqrt(a_start) * guide, (1.0 - a_start) * EYE)
  _assert_moments(x, *oracle)


def test_sdedit_of_data_is_data(schedule, model):
  """Noising data samples gives the true marginal, so denoising them gives the data back."""
  x0 = jnp.asarray(DATA.sample(9, N)[0], jnp.float32)
  x = samplers.sdedit(model, schedule, jax.random.PRNGKey(10), x0, strength=0.5,
                      clip_denoised=False)
  kept = np.arange(500)
  a_start = AB[kept[-1]]
  oracle = _moments(_reverse(kept, lambda a, ap, last: _ddpm_affine(a, ap, "fixed_small", last)),
                    np.sqrt(a_start) * MU, a_start * SIGMA + (1.0 - a_start) * EYE)
  _assert_matches(x, oracle, max_discretization=0.005)


def test_trajectory_frames(schedule, model):
  """Frames are x_T, the state after every stride-th step, and the final sample."""
  kept = np.arange(0, T, 100)
  x_T = _x_T(11, 64)
  x0, frames = samplers.ddim(model, schedule, None, x_T.shape, x_T=x_T, num_steps=10,
                             clip_denoised=False, return_trajectory=True, trajectory_stride=3)
  chex.assert_shape(frames, (1 + 4, 64, 3))
  steps = _reverse(kept, lambda a, ap, _: _ddim_affine(a, ap, 0.0))
  for frame, num_done in zip(frames, [0, 3, 6, 9, 10]):
    mat, off = _compose(steps[:num_done])
    np.testing.assert_allclose(frame, np.asarray(x_T, np.float64) @ mat.T + off, atol=1e-4)
  np.testing.assert_array_equal(frames[-1], x0)
  x0_ddpm, frames = samplers.ddpm(model, schedule, jax.random.PRNGKey(12), (64, 3),
                                  num_steps=10, return_trajectory=True, trajectory_stride=5)
  chex.assert_shape(frames, (1 + 2, 64, 3))
  np.testing.assert_array_equal(frames[-1], x0_ddpm)
  np.testing.assert_array_equal(
      x0_ddpm, samplers.ddpm(model, schedule, jax.random.PRNGKey(12), (64, 3), num_steps=10))
