"""Tests of jaxdiff.sde_samplers with exact scores of Gaussian / Gaussian-mixture data.

Deterministic samplers are tested without Monte Carlo error: with a Gaussian's affine score
they are affine maps of x_T, whose exact output law `analytic_sde.affine_pushforward` computes
from dim + 1 runs. The ideal output is the exact probability-flow map of N(0, prior) from t = 1
to eps (`analytic_sde.pf_ode_map`), which differs from the data law only by the prior mismatch
and the eps noise (KL ~ 3e-5 for VP, 3e-4 for VE here).
"""

import chex
import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import sde as sde_lib
from jaxdiff import sde_samplers as ss
from jaxdiff.schedules import make_schedule
from jaxdiff import testing
from compile_counter import count_compiles
from tests import analytic_sde

MEAN = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.8]])
EPS = 1e-3
SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.SubVPSDE, "ve": sde_lib.VESDE}


def _ideal(kind, sde):
  """Exact law of the probability-flow ODE's output for x_T ~ N(0, prior_std^2 I)."""
  x_T = np.concatenate([np.zeros((1, 2)), np.eye(2)]) * float(sde.prior_std)
  y = analytic_sde.pf_ode_map(kind, MEAN, COV, x_T, 1.0, EPS)
  m = (y[1:] - y[0]).T
  return y[0], m @ m.T


def _pushforward(kind, sampler, **kw):
  sde = SDES[kind]()
  score = analytic_sde.gaussian_score(kind, MEAN, COV)
  mean, cov, nfe = analytic_sde.affine_pushforward(sampler, score, sde, 2, eps=EPS, **kw)
  return (mean, cov), _ideal(kind, sde), nfe


# (sampler, options, largest allowed KL(sampler || ideal), expected score evaluations or None).
# ODE tolerances 1e-5 give KL ~ 1e-8; fixed-step Heun (2nd order) with 100 steps ~ 4e-5 (VE);
# DPM-Solver++(2M) with 20 evaluations <= 1.3e-3; EDM Heun with 25 levels (49 evaluations)
# <= 2.5e-3 (measured maxima over VP / sub-VP / VE, bounds set at 2x-4x of them).
DETERMINISTIC = {
    "ode_tsit5": (ss.probability_flow_sampler, dict(solver="tsit5"), 1e-6, None),
    "ode_dopri5": (ss.probability_flow_sampler, dict(solver="dopri5"), 1e-6, None),
    "ode_heun": (ss.probability_flow_sampler, dict(solver="heun", num_steps=100), 2e-4, 200),
    "dpm_solver_pp_2m": (ss.dpm_solver_pp_2m, dict(num_steps=20), 3e-3, 20),
    "edm_heun": (ss.edm_heun, dict(num_steps=25), 6e-3, 49),
}


@pytest.mark.parametrize("kind", sorted(SDES))
@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_samplers_reproduce_gaussian_data(x64, kind, name):
  sampler, options, max_kl, expected_nfe = DETERMINISTIC[name]
  (mean, cov), ideal, nfe = _pushforward(kind, sampler, **options)
  assert analytic_sde.gaussian_kl(mean, cov, *ideal) < max_kl
  # Against the data law: the ideal's own gap (prior mismatch: |mean error| <= 0.016 for VE,
  # 0.006 for VP) plus the solver's; with KL <= 6e-3, covariance entries move by <= ~0.15.
  np.testing.assert_allclose(mean, MEAN, atol=0.02)
  np.testing.assert_allclose(cov, COV, atol=0.15 if max_kl > 1e-3 else 0.01)
  if expected_nfe is not None:
    assert nfe == expected_nfe
  else:
    assert 20 < nfe < 200


def test_second_order_convergence_of_edm_and_dpm_solver(x64):
  # Both are second-order: doubling the steps divides the covariance error by ~4 (3 to 5.5
  # allows for the higher-order remainder at these step counts).
  for sampler, n in ((ss.edm_heun, 20), (ss.dpm_solver_pp_2m, 16)):
    errors = []
    for steps in (n, 2 * n):
      (_, cov), (_, ideal_cov), _ = _pushforward("vp", sampler, num_steps=steps)
      errors.append(np.abs(cov - ideal_cov).max())
    assert 3.0 < errors[0] / errors[1] < 5.5


def test_dpm_solver_20_matches_ddim_100(x64):
  # The benchmark: DPM-Solver++(2M) with 20 score evaluations against DDIM
  # (jaxdiff.samplers.ddim, eta = 0) with 100 steps on the discrete linear chain, both exact
  # pushforwards (no Monte Carlo), as KL(sampler || data) in nats. Measured: DPM 3.7e-4,
  # DDIM-100 1.0e-3, DDIM-20 2.3e-2.
  from jaxdiff.samplers import ddim

  (dpm_mean, dpm_cov), _, nfe = _pushforward("vp", ss.dpm_solver_pp_2m, num_steps=20)
  assert nfe == 20
  schedule = make_schedule("linear", 1000, dtype=jnp.float64)
  model_fn = testing.model_fn(testing.GaussianMixture(np.ones(1), MEAN[None], COV[None]),
                               schedule)

  def ddim_law(num_steps):
    x_T = jnp.asarray(np.concatenate([np.zeros((1, 2)), np.eye(2)]))
    y = np.asarray(ddim(model_fn, schedule, None, (3, 2), num_steps=num_steps,
                        clip_denoised=False, x_T=x_T), np.float64)
    m = (y[1:] - y[0]).T
    return analytic_sde.gaussian_kl(y[0], m @ m.T, MEAN, COV)

  kl_dpm = analytic_sde.gaussian_kl(dpm_mean, dpm_cov, MEAN, COV)
  kl_ddim_100, kl_ddim_20 = ddim_law(100), ddim_law(20)
  assert kl_dpm < kl_ddim_100 < kl_ddim_20


def test_dpm_solver_on_a_discrete_eps_model_through_score_from_eps(x64):
  # The bridge: DDPM's exact eps model on the 1000-step chain, used as a VP-SDE score model.
  # The time quantization (round(t N) - 1) and the chain-vs-SDE marginal gap (<= 8e-4 in
  # variance) add to DPM-Solver's own error; measured KL 3.9e-4 to the data law (3.7e-4 with the
  # continuous score), so the bound is 1e-3.
  schedule = make_schedule("linear", 1000, dtype=jnp.float64)
  eps_model = testing.model_fn(testing.GaussianMixture(np.ones(1), MEAN[None], COV[None]),
                                schedule)
  sde = sde_lib.VPSDE(N=1000)
  score = sde_lib.score_from_eps(eps_model, sde, schedule=schedule)
  mean, cov, _ = analytic_sde.affine_pushforward(ss.dpm_solver_pp_2m, score, sde, 2, eps=EPS,
                                                 num_steps=20)
  assert analytic_sde.gaussian_kl(mean, cov, MEAN, COV) < 1e-3


def test_probability_flow_reports_the_true_number_of_evaluations():
  calls = []

  def score(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return analytic_sde.gaussian_score("vp", MEAN, COV)(x, t)

  for solver, options in (("tsit5", {}), ("dopri5", dict(rtol=1e-3, atol=1e-3)),
                          ("heun", dict(num_steps=7))):
    calls.clear()
    x, nfe = ss.probability_flow_sampler(score, sde_lib.VPSDE(), jax.random.PRNGKey(0), (4, 2),
                                         solver=solver, **options)
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(nfe) == len(calls), solver


def test_predictor_and_corrector_steps_match_their_formulas(x64):
  # One step of each from Song et al. 2021, App. G (Algorithms 2-5), in NumPy, with the noise
  # z = normal(key) the step draws. VP with N = 100 at t = 0.5 = (i + 1) / N: i = 49.
  n_steps, snr, key = 100, 0.2, jax.random.PRNGKey(3)
  sde = sde_lib.VPSDE(N=n_steps)
  x = np.random.default_rng(0).normal(size=(5, 2))
  t = np.full(5, 0.5)

  def score(y, tt):
    return -y * (1.0 + tt[:, None])

  rsde = sde.reverse(score)
  z = np.asarray(jax.random.normal(key, x.shape, jnp.float64))
  s = -x * 1.5
  beta_t = 0.1 + 0.5 * 19.9
  beta_i = (0.1 + 49 / 99 * 19.9) / n_steps
  dt = -1.0 / n_steps
  expected = {
      "euler_maruyama": (x + (-0.5 * beta_t * x - beta_t * s) * dt, np.sqrt(beta_t * -dt)),
      "reverse_diffusion": (x - (np.sqrt(1 - beta_i) - 1) * x + beta_i * s, np.sqrt(beta_i)),
  }
  for name, (mean, noise_scale) in expected.items():
    x_new, x_mean = ss.PREDICTORS[name](key, jnp.asarray(x), jnp.asarray(t), dt, rsde, snr)
    np.testing.assert_allclose(x_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(x_new, mean + noise_scale * z, rtol=1e-12)
  norm_ratio = np.linalg.norm(z, axis=1).mean() / np.linalg.norm(s, axis=1).mean()
  sigma_t = float(analytic_sde.coeffs("vp", np.float64(0.5))[1])
  steps = {"langevin": 2 * (1 - beta_i) * (snr * norm_ratio) ** 2,
           "ald": 2 * (1 - beta_i) * (snr * sigma_t) ** 2}
  for name, step in steps.items():
    x_new, x_mean = ss.CORRECTORS[name](key, jnp.asarray(x), jnp.asarray(t), dt, rsde, snr)
    np.testing.assert_allclose(x_mean, x + step * s, rtol=1e-12)
    np.testing.assert_allclose(x_new, x + step * s + np.sqrt(2 * step) * z, rtol=1e-12)


def _moment_tolerances(n):
  """4.5 standard errors of the sample mean and covariance entries of N(MEAN, COV) draws."""
  var = np.diag(COV)
  mean_tol = 4.5 * np.sqrt(var / n)
  cov_tol = 4.5 * np.sqrt((np.outer(var, var) + COV**2) / n)
  return mean_tol, cov_tol


# Stochastic samplers, 4000 draws, N = 500 steps. Discretization biases measured with 40000
# draws are below 1.2 standard errors of n = 4000 (covariance) and 0.012 (mean) for the PC
# samplers; the corrector-only ALD lags behind the annealing (covariance +3% at 1000 steps),
# so its allowance adds 5% of |COV|.
STOCHASTIC = [
    ("vp", dict(predictor="reverse_diffusion", corrector="langevin"), 0.0),
    ("vp", dict(predictor="euler_maruyama", corrector="none"), 0.0),
    ("subvp", dict(predictor="euler_maruyama", corrector="langevin"), 0.0),
    ("ve", dict(predictor="reverse_diffusion", corrector="langevin"), 0.0),
    ("ve", dict(predictor="none", corrector="ald", n_steps=5, snr=0.316), 0.05),
]


@pytest.mark.parametrize("kind,options,bias", STOCHASTIC)
def test_pc_samplers_reproduce_gaussian_moments(kind, options, bias):
  n = 4000
  num_levels = 200 if options["corrector"] == "ald" else 500
  sde = SDES[kind](N=num_levels)
  score = analytic_sde.gaussian_score(kind, MEAN, COV)
  x, nfe = ss.pc_sampler(score, sde, jax.random.PRNGKey(1), (n, 2), eps=1.0 / num_levels,
                         **options)
  chex.assert_shape(x, (n, 2))
  per_level = (options["predictor"] != "none") + options.get("n_steps", 1) * (
      options["corrector"] != "none")
  assert nfe == num_levels * per_level
  x = np.asarray(x, np.float64)
  mean_tol, cov_tol = _moment_tolerances(n)
  np.testing.assert_array_less(np.abs(x.mean(0) - MEAN), mean_tol + 0.012)
  np.testing.assert_array_less(np.abs(np.cov(x.T) - COV), cov_tol + bias * np.abs(COV))


_MIXTURE = testing.GaussianMixture.diagonal([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0])


def _mixture_score(x, sigma):
  """Exact score of 0.2 N((-5, -5), I) + 0.8 N((5, 5), I) convolved with N(0, sigma^2 I)."""
  return testing.model_fn(_MIXTURE, lambda t: (jnp.ones_like(t), t), prediction="score")(
      x, sigma)


def test_annealed_langevin_recovers_mixture_weights_and_plain_langevin_does_not():
  # Song & Ermon 2019, Sec. 3.2 / Fig. 3: from a uniform start on [-8, 8]^2, Langevin with the
  # exact data score keeps each basin's initial mass (~1/2), annealing over 20 sigmas from 20 to
  # 0.1 restores the weight 0.2 of the left mode. 2000 draws: the fraction's standard error is
  # sqrt(0.16 / 2000) = 0.009; tolerance 4.5 se plus the annealing lag (0.006 at n = 20000).
  n = 2000
  x_init = jax.random.uniform(jax.random.PRNGKey(0), (n, 2), minval=-8.0, maxval=8.0)
  annealed, nfe = ss.annealed_langevin_dynamics(
      _mixture_score, sde_lib.geometric_sigmas(0.1, 20.0, 20), jax.random.PRNGKey(1), (n, 2),
      n_steps_each=100, step_lr=0.005, x_init=x_init)
  plain, _ = ss.annealed_langevin_dynamics(
      _mixture_score, jnp.array([0.1]), jax.random.PRNGKey(1), (n, 2), n_steps_each=2000,
      step_lr=0.005, x_init=x_init)
  assert nfe == 2000
  left_annealed = float(jnp.mean(annealed[:, 0] < 0))
  left_plain = float(jnp.mean(plain[:, 0] < 0))
  assert abs(left_annealed - 0.2) < 4.5 * 0.009 + 0.01
  assert abs(left_plain - 0.5) < 4.5 * np.sqrt(0.25 / n) + 0.01
  # Both converge within each mode (~1600 draws in the right one: the variance's standard error
  # is sqrt(2 / 1600) = 0.035, the mean's 0.025; tolerances ~4.5 of them); plain Langevin fails
  # on the weights only.
  for samples in (annealed, plain):
    right = np.asarray(samples, np.float64)[np.asarray(samples[:, 0]) > 0]
    np.testing.assert_allclose(np.cov(right.T), np.eye(2), atol=0.16)
    np.testing.assert_allclose(right.mean(0), [5.0, 5.0], atol=0.12)


def test_annealed_langevin_step_sizes():
  # With a zero score the chain is a random walk whose variance is sum_i 2 delta_i =
  # step_lr * n_steps_each * sum_i sigma_i^2 / sigma_L^2 (Song & Ermon 2019, Algorithm 1:
  # epsilon_i = step_lr sigma_i^2 / sigma_L^2, delta = epsilon / 2). 20000 x 2 draws: the
  # sample variance's relative standard error is 0.7%; tolerance 4.5 of them.
  n = 20000
  x, nfe = ss.annealed_langevin_dynamics(lambda y, sig: jnp.zeros_like(y),
                                         jnp.array([1.0, 4.0, 2.0]), jax.random.PRNGKey(5),
                                         (n, 2), n_steps_each=3, step_lr=0.1,
                                         x_init=jnp.zeros((n, 2)), denoise=True)
  assert nfe == 10
  expected = 0.1 * 3 * (16.0 + 4.0 + 1.0)
  assert abs(float(jnp.var(x)) / expected - 1.0) < 4.5 * np.sqrt(2.0 / (2 * n))


def test_sampler_dispatch_and_errors():
  sde = sde_lib.VPSDE(N=10)
  score = analytic_sde.gaussian_score("vp", MEAN, COV)
  rng = jax.random.PRNGKey(0)
  assert ss.get_sampler("dpm_solver_pp_2m") is ss.dpm_solver_pp_2m
  assert isinstance(ss.get_solver("tsit5"), diffrax.Tsit5)
  with pytest.raises(ValueError, match="unknown ODE solver 'rk4'.*dopri5"):
    ss.get_solver("rk4")
  with pytest.raises(ValueError, match="unknown SDE sampler 'ddim'.*edm_heun"):
    ss.get_sampler("ddim")
  with pytest.raises(ValueError, match="unknown ODE solver 'rk4'.*tsit5"):
    ss.probability_flow_sampler(score, sde, rng, (2, 2), solver="rk4")
  with pytest.raises(ValueError, match="needs num_steps"):
    ss.probability_flow_sampler(score, sde, rng, (2, 2), solver="heun")
  with pytest.raises(ValueError, match="unknown predictor 'ancestral'"):
    ss.pc_sampler(score, sde, rng, (2, 2), predictor="ancestral")
  with pytest.raises(ValueError, match="unknown corrector 'hmc'"):
    ss.pc_sampler(score, sde, rng, (2, 2), corrector="hmc")
  with pytest.raises(ValueError, match="unknown time grid 'cosine'"):
    ss.dpm_solver_pp_2m(score, sde, rng, (2, 2), time_grid="cosine")
  with pytest.raises(ValueError, match=r"eps must lie in \(0, 1\), got 0.0"):
    ss.edm_heun(score, sde, rng, (2, 2), eps=0.0)
  with pytest.raises(ValueError, match=r"shaped like x \(2, 2\), got \(2, 1\)"):
    ss.dpm_solver_pp_2m(lambda x, t: x[:, :1], sde, rng, (2, 2))
  with pytest.raises(ValueError, match=r"x_T has shape \(3, 2\)"):
    ss.edm_heun(score, sde, rng, (2, 2), x_T=jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match="shaped like x"):
    ss.annealed_langevin_dynamics(lambda x, s: x[:, :1], jnp.array([1.0]), rng, (2, 2))


def _linear_score(params, x, t):
  """A "network" score -(x - m) / (1 + t) whose parameters m are traced arguments."""
  return -(x - params["m"]) / (1.0 + t[:, None])


def test_new_score_parameters_compile_nothing():
  # Before the unified runner each SDE sampler took score_fn as a static jit argument: three
  # parameter sets compiled dpm_solver_pp_2m three times. Now a jax.tree_util.Partial's
  # arrays are traced, for the adaptive ODE solve too.
  sde = sde_lib.VPSDE(N=50)
  runs = {
      "pc": lambda f: ss.pc_sampler(f, sde, jax.random.PRNGKey(0), (4, 2)),
      "dpm": lambda f: ss.dpm_solver_pp_2m(f, sde, jax.random.PRNGKey(0), (4, 2)),
      "edm": lambda f: ss.edm_heun(f, sde, jax.random.PRNGKey(0), (4, 2)),
      "ode": lambda f: ss.probability_flow_sampler(f, sde, jax.random.PRNGKey(0), (4, 2),
                                                   rtol=1e-3, atol=1e-3),
  }
  for name, run in runs.items():
    score = lambda m: jax.tree_util.Partial(_linear_score, {"m": jnp.full((2,), m)})
    jax.block_until_ready(run(score(0.0)))
    assert count_compiles(lambda: run(score(1.0)))[0] == 0, name
