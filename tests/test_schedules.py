"""Schedules against float64 NumPy derivations written from the papers' equations."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import schedules
from jaxdiff.schedules import Schedule, make_schedule, respace, space_timesteps

FIELDS = ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next",
          "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
          "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
          "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")


def reference_betas(kind, T):
  """Betas written directly from the papers, element by element."""
  if kind == "linear":
    lo, hi = 1e-4 * 1000 / T, 0.02 * 1000 / T
    return np.array([lo + (hi - lo) * i / (T - 1) for i in range(T)])
  if kind == "cosine":
    f = lambda u: math.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])
  if kind == "quadratic":
    a, b = math.sqrt(1e-4), math.sqrt(0.02)
    return np.array([(a + (b - a) * i / (T - 1)) ** 2 for i in range(T)])
  u = [-6 + 12 * i / (T - 1) for i in range(T)]
  return np.array([1e-4 + (0.02 - 1e-4) / (1 + math.exp(-x)) for x in u])


@pytest.mark.parametrize("kind", schedules.SCHEDULE_KINDS)
@pytest.mark.parametrize("T", [100, 1000])
def test_betas_match_paper_formulas(x64, kind, T):
  s = make_schedule(kind, T, dtype=jnp.float64)
  chex.assert_shape(s.betas, (T,))
  np.testing.assert_allclose(np.asarray(s.betas), reference_betas(kind, T), rtol=1e-12)


def test_linear_endpoints_are_ho_et_al():
  s = make_schedule("linear", 1000)
  np.testing.assert_allclose([s.betas[0], s.betas[-1]], [1e-4, 0.02], rtol=1e-6)


def test_cosine_alphas_cumprod_is_the_closed_form(x64):
  """Nichol & Dhariwal eq. 17: alpha-bar_t = f(t)/f(0) where no beta was clipped."""
  T = 1000
  s = make_schedule("cosine", T, dtype=jnp.float64)
  f = lambda u: np.cos((u / T + 0.008) / 1.008 * np.pi / 2) ** 2
  t = np.arange(T)
  unclipped = np.cumsum(reference_betas("cosine", T) >= 0.999) == 0
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[unclipped],
                             (f(t + 1) / f(0))[unclipped], rtol=1e-10)
  assert np.asarray(s.betas).max() == pytest.approx(0.999)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_all_coefficients_from_recursions(x64, kind):
  """Each coefficient re-derived with explicit loops (Ho et al. eqs. 4, 6, 7)."""
  T = 50
  s = make_schedule(kind, T, dtype=jnp.float64)
  betas = reference_betas(kind, T)
  ab = []
  prod = 1.0
  for b in betas:
    prod *= 1 - b
    ab.append(prod)
  ab = np.array(ab)
  ab_prev = np.array([1.0] + list(ab[:-1]))
  ab_next = np.array(list(ab[1:]) + [0.0])
  # Posterior of x_{t-1} by Bayes: prior N(sqrt(ab_prev) x0, 1 - ab_prev), likelihood
  # N(x_t; sqrt(1 - beta) x_{t-1}, beta). Precisions add; means weight by precision.
  post_var = np.array([1.0 / (1.0 / (1 - ap) + (1 - b) / b) if ap < 1 else 0.0
                       for ap, b in zip(ab_prev, betas)])
  coef1 = np.array([v * math.sqrt(ap) / (1 - ap) if ap < 1 else 1.0
                    for v, ap in zip(post_var, ab_prev)])
  coef2 = np.array([v * math.sqrt(1 - b) / b for v, b in zip(post_var, betas)])
  expected = dict(
      betas=betas, alphas=1 - betas, alphas_cumprod=ab, alphas_cumprod_prev=ab_prev,
      alphas_cumprod_next=ab_next, sqrt_alphas_cumprod=np.sqrt(ab),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1 - ab), log_one_minus_alphas_cumprod=np.log(1 - ab),
      sqrt_recip_alphas_cumprod=1 / np.sqrt(ab), sqrt_recipm1_alphas_cumprod=np.sqrt((1 - ab) / ab),
      posterior_variance=post_var,
      posterior_log_variance_clipped=np.log(np.array([post_var[1]] + list(post_var[1:]))),
      posterior_mean_coef1=coef1, posterior_mean_coef2=coef2)
  for name in FIELDS:
    got = np.asarray(getattr(s, name))
    assert got.dtype == np.float64, name
    np.testing.assert_allclose(got, expected[name], rtol=1e-9, atol=1e-300, err_msg=name)


def test_schedule_is_a_pytree_with_static_length():
  s = make_schedule("cosine", 20)
  assert len(jax.tree_util.tree_leaves(s)) == len(FIELDS)
  total = jax.jit(lambda sch: jnp.sum(sch.betas) * sch.num_timesteps)(s)
  np.testing.assert_allclose(total, np.sum(np.asarray(s.betas)) * 20, rtol=1e-6)
  for name in FIELDS:
    chex.assert_shape(getattr(s, name), (20,))
    assert getattr(s, name).dtype == jnp.float32


def test_float64_dtype_is_kept(x64):
  s = make_schedule("cosine", 10, dtype=jnp.float64)
  assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(s))


def test_single_step_chain_has_finite_log_variance():
  s = make_schedule("quadratic", 1, beta_start=0.5, beta_end=0.5)
  assert np.isfinite(np.asarray(s.posterior_log_variance_clipped)).all()


@pytest.mark.parametrize("bad,match", [
    (dict(kind="nope", num_timesteps=10), "linear"),
    (dict(kind="linear", num_timesteps=0), ">= 1"),
    (dict(kind="linear", num_timesteps=10, gamma=3.0), "gamma"),
])
def test_make_schedule_errors(bad, match):
  with pytest.raises(ValueError, match=match):
    make_schedule(**bad)


@pytest.mark.parametrize("betas", [[0.1, 0.0], [0.1, 1.0], [-0.1], [0.2, np.nan]])
def test_betas_outside_open_unit_interval_rejected(betas):
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    Schedule.from_betas(np.array(betas))


def test_space_timesteps_ddim_and_sections():
  assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
  assert space_timesteps(100, "ddim100") == list(range(100))
  kept = space_timesteps(1000, [10, 15, 20])
  assert len(kept) == 45 and kept == sorted(kept)
  # Section 0 is [0, 334): 10 steps from 0 to 333 with stride 333/9 = 37.
  assert kept[:10] == [37 * i for i in range(10)]
  assert space_timesteps(1000, "10,15,20") == kept
  with pytest.raises(ValueError, match="cannot keep 2000"):
    space_timesteps(1000, "ddim2000")
  with pytest.raises(ValueError, match="section 0"):
    space_timesteps(10, [11])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_respace_keeps_marginals(x64, kind):
  s = make_schedule(kind, 1000, dtype=jnp.float64)
  kept = space_timesteps(1000, "ddim25")
  new, tmap = respace(s, kept)
  assert new.num_timesteps == 25
  np.testing.assert_array_equal(np.asarray(tmap), kept)
  np.testing.assert_allclose(np.asarray(new.alphas_cumprod),
                             np.asarray(s.alphas_cumprod)[kept], rtol=1e-12)
  # First new beta is 1 - alpha-bar at the first kept step (t = 0 here).
  np.testing.assert_allclose(np.asarray(new.betas)[0], np.asarray(s.betas)[0], rtol=1e-12)


def test_respace_rejects_bad_timesteps():
  s = make_schedule("cosine", 10)
  with pytest.raises(ValueError, match=r"\[0, 10\)"):
    respace(s, [0, 10])
  with pytest.raises(ValueError, match="repeated"):
    respace(s, [1, 1])


def test_linear_schedule_too_short_for_its_scaling_is_rejected():
  # Ho et al.'s endpoints scaled by 1000 / T exceed 1 for T <= 20.
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    make_schedule("linear", 10)
