"""Flow matching and EDM on the unified core, against closed forms.

- The exact flow velocity of `jaxdiff.testing` is checked against the continuity equation
  d/dt log p_t = -div v - v . grad log p_t of the mixture's exact density (autodiff, float64),
  which is independent of how the velocity is computed.
- Samplers on a flow model (velocity prediction) and on an EDM-preconditioned model (the exact
  raw network F of Table 1) reproduce a three-mode mixture: weights within 5 standard errors
  sqrt(w (1 - w) / n), per-mode means and covariances within 5 standard errors plus the stated
  discretization bias (measured at n = 40000).
- EDM's preconditioning identities (Karras et al. 2022, Table 1 and eq. 8): c_in^2 (sigma^2 +
  sigma_data^2) = 1, the effective target F_target has unit variance at every sigma when the
  data has std sigma_data, and the loss of the zero network is therefore 1 on average.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

from jaxdiff import denoisers, edm, flow, likelihood, processes, samplers, testing

N = 4000
_ANGLES = np.deg2rad([0.0, 120.0, 240.0])
MEANS = 2.0 * np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)
STDS = np.array([0.3, 0.4, 0.35])
MIX = testing.GaussianMixture.diagonal([0.5, 0.3, 0.2], MEANS, STDS**2)


@pytest.mark.parametrize("interpolant", processes.INTERPOLANTS)
def test_exact_velocity_solves_the_continuity_equation(x64, interpolant):
  process = processes.FlowProcess(interpolant=interpolant)
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 2), jnp.float64) * 1.5
  t = jnp.linspace(0.05, 0.95, 16)

  def log_p(xi, ti):
    return testing.log_density(MIX, process, xi[None], ti[None])[0]

  def v(xi, ti):
    return testing.velocity(MIX, process, xi[None], ti[None])[0]

  def residual(xi, ti):
    dt = jax.grad(log_p, argnums=1)(xi, ti)
    div = jnp.trace(jax.jacfwd(v)(xi, ti))
    return dt + div + v(xi, ti) @ jax.grad(log_p)(xi, ti)

  r = jax.vmap(residual)(x, t)
  scale = jnp.abs(jax.vmap(jax.grad(log_p, argnums=1))(x, t))
  np.testing.assert_array_less(np.abs(r), 1e-8 * (1.0 + np.asarray(scale)))


def test_linear_velocity_is_eps_minus_x0_and_converts_back(x64):
  process = processes.FlowProcess()
  x0, eps = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 3))
  t = jnp.linspace(0.0, 1.0, 8)
  np.testing.assert_allclose(flow.velocity_target(process, x0, eps, t), eps - x0, atol=1e-12)
  x_t = (1 - t)[:, None] * x0 + t[:, None] * eps
  x0_hat, eps_hat = denoisers.x0_eps_from_output(process, "velocity", eps - x0, x_t, t)
  np.testing.assert_allclose(x0_hat, x0, atol=1e-12)
  np.testing.assert_allclose(eps_hat, eps, atol=1e-12)


def _assert_mixture(x, *, weight_slack, bias):
  """Mode weights within 5 SE + weight_slack; per-mode moments within 5 SE + bias."""
  x = np.asarray(x, np.float64)
  assert np.all(np.isfinite(x))
  labels = np.argmin(((x[:, None, :] - MEANS[None]) ** 2).sum(-1), axis=1)
  weights = np.bincount(labels, minlength=3) / len(x)
  np.testing.assert_array_less(np.abs(weights - MIX.weights),
                               5 * np.sqrt(MIX.weights * (1 - MIX.weights) / len(x)) + weight_slack)
  for k in range(3):
    xs, cov = x[labels == k], MIX.covs[k]
    var = np.diag(cov)
    np.testing.assert_array_less(np.abs(xs.mean(0) - MIX.means[k]),
                                 5 * np.sqrt(var / len(xs)) + bias)
    np.testing.assert_array_less(np.abs(np.cov(xs.T) - cov),
                                 5 * np.sqrt((np.outer(var, var) + cov**2) / len(xs)) + bias)


def _flow_denoiser(interpolant="linear"):
  process = processes.FlowProcess(interpolant=interpolant)
  return denoisers.make_denoiser(testing.model_fn(MIX, process, prediction="velocity"), process,
                                 prediction="velocity")


def _edm_denoiser(sigma_data=0.5):
  process = processes.EDMProcess(sigma_min=0.002, sigma_max=80.0)
  model = edm.precondition(testing.edm_network_fn(MIX, sigma_data=sigma_data),
                           sigma_data=sigma_data, process=process)
  return denoisers.make_denoiser(model, process, prediction="x0")


# (denoiser, sampler, options, bias): bias is the largest moment error measured at n = 40000
# x 1.5, at least 0.01. It is the solver's: on these sharp modes EDM's Heun at 18 levels is
# off by 0.037 in a mode's mean, 0.009 at 36 and 0.005 at 72; UniPC on the EDM axis by 0.068
# at 10 steps, 0.009 at 20 and 0.005 at 40.
MIXTURE_CASES = [
    ("flow", "euler", dict(num_steps=100), 0.02),
    ("flow", "heun", dict(num_steps=20), 0.011),
    ("flow", "midpoint", dict(num_steps=20), 0.01),
    ("flow", "unipc", dict(num_steps=10), 0.017),
    ("flow", "dpm_solver_pp_2m", dict(num_steps=20), 0.015),
    ("flow", "edm_heun", dict(num_steps=18), 0.065),
    ("flow_cosine", "ddim", dict(num_steps=50), 0.032),
    ("edm", "edm_heun", dict(num_steps=18), 0.055),
    ("edm", "edm_heun", dict(num_steps=40, s_churn=40.0, s_tmin=0.05, s_tmax=50.0,
                             s_noise=1.003), 0.019),
    ("edm", "unipc", dict(num_steps=20), 0.027),
]


@pytest.mark.parametrize("model,sampler,options,bias", MIXTURE_CASES)
def test_samplers_on_flow_and_edm_models_reproduce_the_mixture(x64, model, sampler, options,
                                                                bias):
  den = {"flow": _flow_denoiser, "flow_cosine": lambda: _flow_denoiser("cosine"),
         "edm": _edm_denoiser}[model]()
  x = samplers.sample(den, jax.random.PRNGKey(3), (N, 2), sampler=sampler, **options)
  _assert_mixture(x, weight_slack=0.01, bias=bias)


def test_edm_exact_network_gives_the_posterior_mean_on_any_process(x64):
  # precondition() reads a process's time through EDM's scaled variables (x / alpha at
  # sigma / alpha): the exact F on the sigma axis must give E[x0 | x_t] on a flow as well.
  net = testing.edm_network_fn(MIX, sigma_data=0.7)
  x = jax.random.normal(jax.random.PRNGKey(4), (32, 2), jnp.float64)
  for process, t in ((processes.EDMProcess(), jnp.geomspace(0.01, 50.0, 32)),
                     (processes.FlowProcess(interpolant="cosine"), jnp.linspace(0.02, 0.98, 32))):
    d = edm.precondition(net, sigma_data=0.7, process=process)(x, t)
    np.testing.assert_allclose(d, testing.posterior_mean(MIX, process, x, t), rtol=1e-9,
                               atol=1e-9)


def test_preconditioning_identities_of_table_1(x64):
  sigma_data = 0.6
  sigma = jnp.geomspace(0.002, 80.0, 50)
  c_skip, c_out, c_in, c_noise = edm.preconditioning(sigma, sigma_data)
  np.testing.assert_allclose(c_in**2 * (sigma**2 + sigma_data**2), 1.0, rtol=1e-12)
  np.testing.assert_allclose(c_noise, np.log(np.asarray(sigma)) / 4, rtol=1e-12)
  # F_target = ((1 - c_skip) x0 - c_skip sigma n) / c_out with Var x0 = sigma_data^2.
  var_target = ((1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * sigma**2) / c_out**2
  np.testing.assert_allclose(var_target, 1.0, rtol=1e-12)
  np.testing.assert_allclose(edm.loss_weight(sigma, sigma_data), 1.0 / c_out**2, rtol=1e-12)


def test_edm_loss_of_the_zero_network_is_one_for_data_of_std_sigma_data():
  # With F = 0, lambda ||c_skip x - x0||^2 = ||F_target||^2 per pixel: chi-square(1) when
  # x0 ~ N(0, sigma_data^2), whatever sigma is drawn. Mean over n = 512 x 64 values: SE
  # sqrt(2 / n) = 0.0078; 5 SE = 0.04. A weight of 1 instead of 1 / c_out^2 is off by O(1).
  sigma_data = 0.8
  x0 = sigma_data * jax.random.normal(jax.random.PRNGKey(5), (512, 8, 8, 1))
  loss = edm.edm_loss(lambda x, c: jnp.zeros_like(x), x0, jax.random.PRNGKey(6),
                      sigma_data=sigma_data, p_mean=-1.2, p_std=1.2)
  assert loss.shape == (512,)
  assert abs(float(jnp.mean(loss)) - 1.0) < 0.04


def test_flow_matching_loss_of_the_zero_model():
  # Linear interpolant: u = eps - x0, so E ||0 - u||^2 per pixel = 1 + E x0^2 = 1 + 0.25 for
  # x0 ~ N(0, 0.5^2); SE of the mean of 512 x 64 values of (eps - x0)^2 (variance 2 * 1.25^2):
  # 0.0098, 5 SE = 0.05.
  x0 = 0.5 * jax.random.normal(jax.random.PRNGKey(7), (512, 8, 8, 1))
  for distribution in flow.TIME_DISTRIBUTIONS:
    loss = flow.flow_matching_loss(lambda x, t: jnp.zeros_like(x), x0, jax.random.PRNGKey(8),
                                   distribution=distribution)
    assert loss.shape == (512,)
    assert abs(float(jnp.mean(loss)) - 1.25) < 0.05, distribution


def test_time_distributions_and_shift():
  n = 20000
  key = jax.random.PRNGKey(9)
  # Logit-normal: logit(t) ~ N(0.5, 0.8^2); SEs 0.8 / sqrt(n) = 0.0057 and 0.8 / sqrt(2n).
  t = np.asarray(flow.sample_time(key, (n,), distribution="logit_normal", loc=0.5, scale=0.8),
                 np.float64)
  logit = np.log(t / (1 - t))
  assert abs(logit.mean() - 0.5) < 5 * 0.8 / np.sqrt(n)
  assert abs(logit.std() - 0.8) < 5 * 0.8 / np.sqrt(2 * n)
  # Shift 3 of a uniform: P(t <= q) = q / (3 - 2 q) (the inverse of eq. 23 at q); the
  # empirical CDF has SE <= 0.5 / sqrt(n) = 0.0035.
  t = np.asarray(flow.sample_time(key, (n,), distribution="uniform", shift=3.0))
  for q in (0.2, 0.5, 0.8):
    assert abs(np.mean(t <= q) - q / (3.0 - 2.0 * q)) < 5 * 0.5 / np.sqrt(n)
  # Mode (eq. 20): f(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u) falls monotonically, so
  # P(t <= q) = 1 - f^{-1}(q), inverted by bisection.
  s_mode = 1.29
  f = lambda u: 1 - u - s_mode * (np.cos(np.pi * u / 2) ** 2 - 1 + u)
  t = np.asarray(flow.sample_time(key, (n,), distribution="mode", mode_scale=s_mode))
  for q in (0.2, 0.5, 0.8):
    assert abs(np.mean(t <= q) - (1 - optimize.brentq(lambda u: f(u) - q, 0, 1))) < (
        5 * 0.5 / np.sqrt(n))
  assert flow.resolution_shift(512 * 512) == pytest.approx(2.0)


def test_bad_flow_and_edm_options_are_one_line_errors():
  cases = [
      (lambda: flow.check_time_options("beta"), r"unknown timestep distribution 'beta'"),
      (lambda: flow.check_time_options("logit_normal", scale=0.0), r"scale must be positive"),
      (lambda: flow.check_time_options("mode", mode_scale=3.0), r"mode_scale must lie in"),
      (lambda: flow.check_time_options("uniform", shift=-1.0), r"shift must be positive"),
      (lambda: processes.FlowProcess(interpolant="quadratic"), r"unknown interpolant"),
      (lambda: edm.precondition(lambda x, c: x, sigma_data=0.0), r"sigma_data must be positive"),
  ]
  for fn, message in cases:
    with pytest.raises(ValueError, match=message) as info:
      fn()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("interpolant", processes.INTERPOLANTS)
def test_flow_ode_log_likelihood_is_the_data_density(x64, interpolant):
  # From t = 0 (the data itself) to t = 1, where the flow's prior N(0, I) is the exact
  # marginal: the ODE gives log p_data(x) with no prior mismatch; dopri5 at 1e-8 tolerances.
  mean, cov = np.array([0.5, -1.0]), np.array([[0.3, 0.1], [0.1, 0.2]])
  process = processes.FlowProcess(interpolant=interpolant)
  data = testing.GaussianMixture.gaussian(mean, cov)
  den = denoisers.make_denoiser(testing.model_fn(data, process, prediction="velocity"),
                                process, prediction="velocity")
  points = np.array([[0.5, -1.0], [1.2, -0.4], [-0.3, -1.5]])
  logp, _, _ = likelihood.ode_log_likelihood(den, process, jnp.asarray(points),
                                             jax.random.PRNGKey(0), trace="exact", rtol=1e-8,
                                             atol=1e-8, eps=0.0)
  np.testing.assert_allclose(logp, stats.multivariate_normal(mean, cov).logpdf(points),
                             rtol=1e-5)
