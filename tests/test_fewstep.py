"""Few-step generation: progressive distillation targets, consistency models, the fewstep sampler.

Exactness without training: with Gaussian data N(m, C) the exact denoiser of
`jaxdiff.testing` is affine, so the teacher's two DDIM steps, the distillation target of
Salimans & Ho (Algorithm 2) and the consistency function (the probability-flow map to
sigma_min) are affine maps, written independently in float64 NumPy in `jaxdiff.testing`
(`two_step_distillation_target_affine`, `ddim_x_step_affine`, `x0_affine`,
`gaussian_pf_map`).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import consistency, denoisers, distillation, processes, samplers, schedules, testing
from jaxdiff import sde as sde_lib
from jaxdiff.samplers import grids

MEAN = np.array([0.4, -0.3])
COV = np.array([[0.25, 0.1], [0.1, 0.15]])
DATA = testing.GaussianMixture.gaussian(MEAN, COV)
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5


def _process(name):
  return {"cosine": lambda: schedules.make_schedule("cosine", 1000, dtype=jnp.float64),
          "vp": sde_lib.VPSDE,
          "edm": lambda: processes.EDMProcess(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)}[name]()


def _exact(process, prediction="eps"):
  return denoisers.make_denoiser(testing.model_fn(DATA, process, prediction=prediction),
                                 process, prediction=prediction)


def _coeffs(pts, k):
  return float(pts.alpha[k]), float(pts.sigma[k])


def test_nested_grid_halves(x64):
  process = _process("vp")
  coarse = np.asarray(grids.default_times(process, "nested", 4))
  fine = np.asarray(grids.default_times(process, "nested", 8))
  lo, hi = float(process.t_min), float(process.t_max)
  np.testing.assert_allclose(coarse, lo + (hi - lo) * np.array([4, 3, 2, 1]) / 4, rtol=1e-12)
  np.testing.assert_allclose(fine[0::2], coarse, rtol=1e-12)


@pytest.mark.parametrize("process_name", ["cosine", "vp", "edm"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_two_step_target_is_the_closed_form(x64, process_name, prediction):
  process = _process(process_name)
  teacher = _exact(process, prediction)
  steps = 4
  pts = distillation.teacher_points(process, steps)
  chex.assert_shape(pts.t, (2 * steps + 1,))
  z = np.random.default_rng(0).normal(size=(5, 2)) * float(process.prior_std)
  for k in range(0, 2 * steps, 2):
    got = distillation.two_step_target(teacher, jnp.asarray(z), pts, jnp.full((5,), k))
    a, b = testing.two_step_distillation_target_affine(
        MEAN, COV, [_coeffs(pts, k + j) for j in range(3)])
    np.testing.assert_allclose(np.asarray(got), z @ a.T + b, rtol=1e-8, atol=1e-8)


def _student_fn(tables, x, t):
  times, mats, offsets = tables
  """The affine map of the student point t (NaN at any other time)."""
  distance = jnp.abs(times[None, :] - t[:, None])
  i = jnp.argmin(distance, axis=1)
  out = jnp.einsum("bij,bj->bi", mats[i], x) + offsets[i]
  return jnp.where(jnp.min(distance, axis=1)[:, None] < 1e-9, out, jnp.nan)


@pytest.mark.parametrize("process_name", ["cosine", "edm"])
def test_the_exact_student_has_zero_loss(x64, process_name):
  """A student whose x0 is the closed-form target at each of its N points has loss 0; the
  teacher itself (a poor 1-step-per-2 student) does not."""
  process = _process(process_name)
  teacher, steps = _exact(process), 2
  pts = distillation.teacher_points(process, steps)
  maps = [testing.two_step_distillation_target_affine(
      MEAN, COV, [_coeffs(pts, k + j) for j in range(3)]) for k in range(0, 2 * steps, 2)]
  tables = (pts.t[0:2 * steps:2], jnp.asarray(np.stack([m for m, _ in maps])),
            jnp.asarray(np.stack([o for _, o in maps])))
  student = denoisers.make_denoiser(jax.tree_util.Partial(_student_fn, tables), process,
                                    prediction="x0")
  x0 = jnp.asarray(DATA.sample(1, 256)[0])
  loss = distillation.distillation_loss(student, teacher, x0, jax.random.PRNGKey(3),
                                        student_steps=steps)
  chex.assert_shape(loss, (256,))
  baseline = distillation.distillation_loss(teacher, teacher, x0, jax.random.PRNGKey(3),
                                            student_steps=steps)
  assert float(jnp.max(loss)) < 1e-20
  assert float(jnp.mean(baseline)) > 1e-6


def test_truncated_snr_weight(x64):
  """A student off the exact target by delta in every pixel pays max(SNR_t, 1) delta^2."""
  process, steps, delta = _process("cosine"), 4, 0.01
  teacher = _exact(process)
  pts = distillation.teacher_points(process, steps)
  maps = [testing.two_step_distillation_target_affine(
      MEAN, COV, [_coeffs(pts, k + j) for j in range(3)]) for k in range(0, 2 * steps, 2)]
  tables = (pts.t[0:2 * steps:2], jnp.asarray(np.stack([m for m, _ in maps])),
            jnp.asarray(np.stack([o + delta for _, o in maps])))
  student = denoisers.make_denoiser(jax.tree_util.Partial(_student_fn, tables), process,
                                    prediction="x0")
  loss = distillation.distillation_loss(student, teacher, jnp.asarray(DATA.sample(2, 64)[0]),
                                        jax.random.PRNGKey(5), student_steps=steps)
  snr = (np.asarray(pts.alpha) / np.asarray(pts.sigma))[0:2 * steps:2] ** 2
  allowed = np.maximum(snr, 1.0) * delta**2
  nearest = np.min(np.abs(np.asarray(loss)[:, None] / allowed[None, :] - 1.0), axis=1)
  assert np.max(nearest) < 1e-8
  assert len(np.unique(np.round(np.asarray(loss), 12))) > 1  # several steps were drawn


def test_a_round_must_halve_the_steps():
  distillation.check_round(teacher_steps=8, student_steps=4)
  for student in (3, 8, 0):
    with pytest.raises(ValueError, match=f"num_steps={student} must be half the teacher's 8"):
      distillation.check_round(teacher_steps=8, student_steps=student)


def test_boundary_condition_and_coefficients(x64):
  sigma = jnp.asarray([SIGMA_MIN, 0.5, 80.0])
  c_skip, c_out = consistency.boundary_coefficients(sigma, sigma_data=SIGMA_DATA,
                                                    sigma_min=SIGMA_MIN)
  s = np.asarray(sigma)
  np.testing.assert_allclose(c_skip, 0.25 / ((s - SIGMA_MIN) ** 2 + 0.25), rtol=1e-12)
  np.testing.assert_allclose(c_out, 0.5 * (s - SIGMA_MIN) / np.sqrt(0.25 + s**2), rtol=1e-12)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2)))
  wild = lambda x, t: 1e3 * jnp.sin(x) + t[:, None]
  f = consistency.consistency_function(wild, x, jnp.full((3,), SIGMA_MIN),
                                       sigma_data=SIGMA_DATA, sigma_min=SIGMA_MIN)
  np.testing.assert_array_equal(np.asarray(f), np.asarray(x))


def _oracle_denoise(x, sigma):
  p, q = testing.x0_affine(MEAN, COV, 1.0, sigma)
  return x @ p.T + q


@pytest.mark.parametrize("process_name", ["cosine", "edm"])
def test_teacher_ode_steps_are_the_closed_form(x64, process_name):
  """Any process's teacher, read on the sigma axis: Euler (= DDIM) and Heun steps."""
  teacher = _exact(_process(process_name))
  x = np.random.default_rng(2).normal(size=(4, 2)) * 3.0
  hi, lo = 2.5, 1.7
  d_hi = _oracle_denoise(x, hi)
  euler = x + (lo - hi) * (x - d_hi) / hi
  heun = x + (lo - hi) * 0.5 * ((x - d_hi) / hi + (euler - _oracle_denoise(euler, lo)) / lo)
  for solver, want in (("euler", euler), ("heun", heun)):
    got = consistency.teacher_ode_step(teacher, jnp.asarray(x), jnp.full((4,), hi),
                                       jnp.full((4,), lo), solver=solver)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def _pf_to_sigma_min(x, sigma):
  """The exact consistency function of the Gaussian data, one sigma per row."""
  return np.stack([testing.gaussian_pf_map(MEAN, COV, (1.0, float(s)), (1.0, SIGMA_MIN), row)
                   for row, s in zip(np.asarray(x), np.asarray(sigma))])


def _exact_consistency(x, sigma):
  """f*(x, sigma) = m + V diag(sqrt((e + sigma_min^2) / (e + sigma^2))) V^T (x - m), C = V e V^T:
  the flow map of the variance-exploding marginals N(m, C + sigma^2 I), in jnp."""
  e, v = (jnp.asarray(a) for a in np.linalg.eigh(COV))
  gain = jnp.sqrt((e + SIGMA_MIN**2) / (e + sigma[:, None] ** 2))
  return MEAN + ((x - MEAN) @ v * gain) @ v.T


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
def test_distillation_loss_of_the_exact_consistency_function_vanishes(x64, solver, order):
  """With f* (the exact flow map to sigma_min) as student and target, the CD loss is the
  solver's local error squared, O(h^(2 order + 2)): 4x the levels cut it by ~4^(2 order + 2)."""
  teacher = _exact(_process("cosine"))
  x0 = jnp.asarray(DATA.sample(4, 512)[0])

  def loss(num):
    bounds = jnp.asarray(consistency.karras_boundaries(num, sigma_min=SIGMA_MIN,
                                                       sigma_max=SIGMA_MAX))
    return float(jnp.mean(consistency.consistency_loss(
        _exact_consistency, _exact_consistency, x0, jax.random.PRNGKey(0), boundaries=bounds,
        teacher=teacher, solver=solver)))

  coarse, fine = loss(20), loss(80)
  assert 0 < fine < coarse * 4.0 ** (-(2 * order + 2) + 1)


def test_consistency_training_target_uses_the_same_noise(x64):
  """CT with f = identity: the loss is ||(t_(n+1) - t_n) z||^2, so its mean over z is
  d E[(t_(n+1) - t_n)^2] under p(n), computed here from the boundaries alone."""
  bounds = jnp.asarray(consistency.karras_boundaries(5, sigma_min=SIGMA_MIN, sigma_max=2.0))
  probs = consistency.interval_probs(bounds)
  x0 = jnp.zeros((20000, 2))
  ident = lambda x, t: x
  loss = consistency.consistency_loss(ident, ident, x0, jax.random.PRNGKey(1),
                                      boundaries=bounds, probs=probs)
  gaps = np.diff(np.asarray(bounds))
  want = 2 * np.sum(np.asarray(probs) * gaps**2)
  # The per-example loss gap^2 chi^2_2 has std <= 2 want; 20000 draws: 5 standard errors.
  assert abs(float(jnp.mean(loss)) - want) < 5 * 2 * want / np.sqrt(20000)


def test_curricula_and_metric():
  # Song et al. 2023 CT on CIFAR-10: s0 = 2, s1 = 150; Song & Dhariwal 2024: s0 = 10, s1 = 1280.
  assert int(consistency.ct_num_scales(0, total_steps=800_000, s0=2, s1=150)) == 2
  assert int(consistency.ct_num_scales(800_000, total_steps=800_000, s0=2, s1=150)) == 151
  ict = [int(consistency.ict_num_scales(k, total_steps=400_000, s0=10, s1=1280))
         for k in (0, 49_999, 50_000, 399_999)]
  assert ict == [11, 11, 21, 1281]
  assert consistency.ct_target_decay(2, s0=2, mu0=0.9) == pytest.approx(0.9)
  assert consistency.ct_target_decay(150, s0=2, mu0=0.9) == pytest.approx(0.9 ** (2 / 150))
  a, b = jnp.zeros((2, 4)), jnp.asarray([[1e-3, 0, 0, 0], [30.0, 40.0, 0, 0]])
  c = 0.1
  huber = np.asarray(consistency.pseudo_huber(a, b, c=c))
  np.testing.assert_allclose(huber, [np.sqrt(1e-6 + c**2) - c, 50.0 + 1e-4 - c], rtol=1e-5)


def test_lognormal_probs_are_the_lognormal_masses():
  from math import erf, log, sqrt
  bounds = consistency.karras_boundaries(6, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
  cdf = np.array([0.5 * (1 + erf((log(b) + 1.1) / (sqrt(2) * 2.0))) for b in bounds])
  want = np.diff(cdf) / (cdf[-1] - cdf[0])
  np.testing.assert_allclose(consistency.interval_probs(jnp.asarray(bounds)), want,
                             rtol=1e-5)


def test_padded_boundaries_and_probs_cover_the_first_n_levels():
  bounds = consistency.karras_boundaries(5, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
  padded = consistency.padded_boundaries(jnp.asarray(5), size=9, sigma_min=SIGMA_MIN,
                                         sigma_max=SIGMA_MAX)
  np.testing.assert_allclose(padded[:5], bounds, rtol=1e-5)
  np.testing.assert_allclose(padded[5:], SIGMA_MAX, rtol=1e-6)
  for lognormal in (True, False):
    probs = consistency.interval_probs(padded, lognormal=lognormal)
    np.testing.assert_allclose(probs[:4], consistency.interval_probs(jnp.asarray(bounds),
                                                                     lognormal=lognormal),
                               rtol=1e-5)
    np.testing.assert_array_equal(probs[4:], 0.0)
  np.testing.assert_array_equal(consistency.ict_weights(padded)[4:], 0.0)


def _exact_consistency_denoiser():
  process = _process("edm")
  return denoisers.make_denoiser(_exact_consistency, process, prediction="x0")


def test_one_step_consistency_sampling_is_the_flow_map(x64):
  den = _exact_consistency_denoiser()
  x_T = jnp.asarray(np.random.default_rng(5).normal(size=(6, 2)) * SIGMA_MAX)
  out = samplers.sample(den, jax.random.PRNGKey(0), sampler="fewstep", num_steps=1, x_T=x_T)
  np.testing.assert_allclose(np.asarray(out), _pf_to_sigma_min(x_T, np.full(6, SIGMA_MAX)),
                             rtol=1e-10, atol=1e-10)


def test_two_step_consistency_sampling_has_the_chain_law(x64):
  """Step 1: x = f*(x_T, 80); noise to 40: x + 40 z; step 2: f*(., 40). Each f* is affine
  (x -> m + K_s (x - m)), so the output law is Gaussian with moments propagated exactly."""
  den = _exact_consistency_denoiser()
  n = 20000
  out = samplers.sample(den, jax.random.PRNGKey(7), (n, 2), sampler="fewstep", num_steps=2)
  gains = [_pf_to_sigma_min(np.eye(2), [s, s]) - _pf_to_sigma_min(np.zeros((2, 2)), [s, s])
           for s in (SIGMA_MAX, SIGMA_MAX / 2)]
  mean, cov = np.zeros(2), SIGMA_MAX**2 * np.eye(2)
  for k, gain in enumerate(gains):
    a = gain.T
    mean, cov = testing.propagate(mean, cov, a, (np.eye(2) - a) @ MEAN)
    if k == 0:
      mean, cov = testing.propagate(mean, cov, np.eye(2), np.zeros(2), (SIGMA_MAX / 2) ** 2)
  got = np.asarray(out, np.float64)
  se = np.sqrt(np.diag(cov) / n)
  np.testing.assert_array_less(np.abs(got.mean(0) - mean), 5 * se)
  # Sample variance of a Gaussian: relative standard error sqrt(2 / n) ~ 1%; 5 of them.
  np.testing.assert_allclose(np.diag(np.cov(got.T)), np.diag(cov), rtol=5 * np.sqrt(2 / n))


def test_fewstep_without_renoise_is_ddim_on_the_nested_grid(x64):
  den = _exact(_process("cosine"), "v")
  x_T = jnp.asarray(np.random.default_rng(6).normal(size=(4, 2)))
  few = samplers.sample(den, None, sampler="fewstep", num_steps=4, renoise=0.0, x_T=x_T)
  times = grids.default_times(den.process, "nested", 4)
  ddim = samplers.sample(den, None, sampler="ddim", times=times, x_T=x_T)
  np.testing.assert_allclose(np.asarray(few), np.asarray(ddim), rtol=1e-12, atol=1e-12)


def test_renoise_out_of_range_is_refused():
  den = _exact(_process("vp"))
  with pytest.raises(ValueError, match=r"renoise must lie in \[0, 1\].*got 1.5"):
    samplers.sample(den, jax.random.PRNGKey(0), (2, 2), sampler="fewstep", renoise=1.5)
