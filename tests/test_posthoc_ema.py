"""Post-hoc EMA (Karras et al. 2024, Sec. 3 and App. C): the power-function profiles, the
tracked EMAs, and the least-squares reconstruction, against the formulas.

The reconstruction bound: a tracked EMA after T steps is exactly int_0^T p(tau) theta(tau)
dtau for the piecewise-constant trajectory theta(tau) = theta_k on (k - 1, k], so a
combination with profile q differs from the EMA of profile p_r by int (q - p_r) theta, at
most ||q - p_r|| ||theta|| per coordinate (Cauchy-Schwarz; L2 norms on [0, T]), where
||q - p_r|| = relative_error * ||p_r|| is what `solve_weights` reports.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from jaxdiff import ema
from jaxdiff.job import posthoc_ema


def test_sigma_rel_gamma_pairs_of_the_paper():
  # EDM2, Sec. 3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94.
  assert ema.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
  assert ema.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
  for sigma_rel in (0.01, 0.05, 0.2, 0.29):
    assert ema.gamma_to_sigma_rel(ema.sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel)


@pytest.mark.parametrize("gamma", [0.5, 6.94, 16.97])
def test_sigma_rel_is_the_relative_std_of_the_profile(gamma):
  # p(tau) = (gamma + 1) tau^gamma on [0, 1]: its std by quadrature.
  density = lambda tau: (gamma + 1) * tau**gamma
  mean = integrate.quad(lambda tau: tau * density(tau), 0, 1)[0]
  var = integrate.quad(lambda tau: (tau - mean) ** 2 * density(tau), 0, 1)[0]
  assert ema.gamma_to_sigma_rel(gamma) == pytest.approx(np.sqrt(var), rel=1e-8)


def test_inner_products_match_quadrature():
  for (s, a), (u, b) in (((100.0, 6.94), (70.0, 16.97)), ((30.0, 2.0), (90.0, 0.5))):
    expected = integrate.quad(lambda tau: (a + 1) * tau**a / s ** (a + 1) * (b + 1) * tau**b
                              / u ** (b + 1), 0, min(s, u))[0]
    assert ema.profile_inner_products(s, a, u, b) == pytest.approx(expected, rel=1e-8)


def _trajectory(steps, dim=40):
  """A random-walk parameter trajectory theta_1..theta_steps [steps, dim], float64."""
  rng = np.random.default_rng(0)
  return np.cumsum(rng.normal(size=(steps, dim)), axis=0) / np.sqrt(steps) + 1.0


def _track(thetas, sigma_rels, every):
  """The power EMAs of `jaxdiff.ema.power_ema_update` along the trajectory, and their
  snapshots (step, [profiles, dim]) every `every` steps."""
  gammas = [ema.sigma_rel_to_gamma(s) for s in sigma_rels]
  emas = tuple(jnp.zeros(thetas.shape[1]) for _ in gammas)  # beta_1 = 0: the start is unused
  snapshots = []
  for k, theta in enumerate(thetas, start=1):
    emas = ema.power_ema_update(emas, jnp.asarray(theta), step=k, gammas=gammas)
    if k % every == 0:
      snapshots.append((k, np.stack([np.asarray(e) for e in emas])))
  return snapshots


def test_tracked_ema_is_the_profile_average(x64):
  thetas = _trajectory(150)
  for sigma_rel in (0.05, 0.2):
    gamma = ema.sigma_rel_to_gamma(sigma_rel)
    tracked = _track(thetas, (sigma_rel,), 150)[-1][1][0]
    # Weights: the profile integrated over (k - 1, k], by quadrature.
    weights = np.array([integrate.quad(lambda tau: (gamma + 1) * tau**gamma / 150 ** (gamma + 1),
                                       k - 1, k)[0] for k in range(1, 151)])
    np.testing.assert_allclose(tracked, weights @ thetas, rtol=1e-9)
    np.testing.assert_allclose(ema.profile_weights(150, gamma), weights, rtol=1e-9, atol=1e-15)


def _reconstruct(snapshots, sigma_rels, target_sigma_rel):
  steps = [s for s, _ in snapshots for _ in sigma_rels]
  gammas = [ema.sigma_rel_to_gamma(r) for _ in snapshots for r in sigma_rels]
  basis = np.concatenate([values for _, values in snapshots])
  weights, error = ema.solve_weights(steps, gammas, snapshots[-1][0],
                                     ema.sigma_rel_to_gamma(target_sigma_rel))
  return weights @ basis, error


def test_reconstruction_matches_directly_tracked_profiles_within_the_bound(x64):
  thetas = _trajectory(400)
  # Tracked: 0.05 and 0.10 (the EDM2 pair) plus three profiles kept only as references.
  references = (0.03, 0.08, 0.15)
  snapshots = _track(thetas, (0.05, 0.10) + references, 20)
  basis = [(s, values[:2]) for s, values in snapshots]
  errors = {}
  for i, target in enumerate((0.05, 0.10) + references):
    recon, error = _reconstruct(basis, (0.05, 0.10), target)
    direct = snapshots[-1][1][i]
    gamma = ema.sigma_rel_to_gamma(target)
    norm = np.sqrt(ema.profile_inner_products(400, gamma, 400, gamma))
    bound = error * norm * np.sqrt(np.sum(thetas**2, axis=0))
    np.testing.assert_array_less(np.abs(recon - direct), bound + 1e-9)
    errors[target] = error
  # A profile that was tracked is reproduced (its own last snapshot is in the basis).
  assert errors[0.05] < 1e-6 and errors[0.10] < 1e-6
  # Between the tracked lengths the fit is close; measured relative errors: 0.0019 (0.08),
  # 0.0058 (0.15), 0.026 (0.03, shorter than both).
  assert errors[0.08] < 0.02


def test_snapshots_round_trip_and_reconstruct(tmp_path, x64):
  thetas = _trajectory(60, dim=6)
  snapshots = _track(thetas, (0.05, 0.10), 20)
  for step, values in snapshots:
    state = types.SimpleNamespace(posthoc_emas=tuple({"dense": {"kernel": v}} for v in values))
    posthoc_ema.save_snapshot(tmp_path, state, step, (0.05, 0.10))
  listed = posthoc_ema.list_snapshots(tmp_path)
  assert [s for s, _, _ in listed] == [20, 40, 60] and listed[0][1] == (0.05, 0.10)
  solved = posthoc_ema.solve(tmp_path, sigma_rel=0.08)
  recon = posthoc_ema._weighted_sum(solved.snapshots, solved.weights)["dense/kernel"]
  expected, error = _reconstruct(snapshots, (0.05, 0.10), 0.08)
  np.testing.assert_allclose(recon, expected, rtol=1e-10)
  assert solved.report["relative_error"] == pytest.approx(error)
  earlier = posthoc_ema.solve(tmp_path, sigma_rel=0.08, step=40)
  assert earlier.report["step"] == 40 and len(earlier.snapshots) == 2


def test_bad_input_is_one_line(tmp_path):
  cases = [
      (lambda: ema.sigma_rel_to_gamma(0.31), r"sigma_rel must lie in \(0, 0.3003\)"),
      (lambda: ema.sigma_rel_to_gamma(0.0), r"sigma_rel must lie in"),
      (lambda: posthoc_ema.solve(tmp_path, sigma_rel=0.1), r"no post-hoc EMA snapshots in"),
  ]
  for fn, message in cases:
    with pytest.raises(ValueError, match=message) as info:
      fn()
    assert "\n" not in str(info.value)
  state = types.SimpleNamespace(posthoc_emas=({"w": np.ones(2)},))
  posthoc_ema.save_snapshot(tmp_path, state, 10, (0.05,))
  with pytest.raises(ValueError, match=r"no snapshot at step 5; the snapshots are at steps \[10\]"):
    posthoc_ema.solve(tmp_path, sigma_rel=0.1, step=5)
