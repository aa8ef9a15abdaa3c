"""Objectives (jaxdiff.config.objectives) and the tools' sampler table (config.sampling).

The analytic models below are exact for data that is a point mass at x0 = 0: then
x_t = sigma_t z, the score is -x / sigma_t^2 and the ideal noise prediction is x / sigma_t.
A model that reads its time input with the documented convention (t * 999 for "sde_dsm",
the ladder index for "ncsn", the integer timestep for "ddpm") therefore has zero loss, and
every fitting sampler must return (nearly) zero images.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.config import objectives, sampling, schema, validation
from jaxdiff.job import generation
from jaxdiff import sde as sde_lib

SHAPE = (4, 4, 4, 1)


class _PointMassEps(nn.Module):
  """The exact noise prediction x / sigma for data at 0, reading the time as `objective`
  says (a model with no parameters)."""
  diffusion: tuple  # (name, value) pairs of config.diffusion: module fields are hashed.

  def __call__(self, x, t, y=None, *, train=False):
    del y, train
    config = schema.base_config().diffusion
    config.update(dict(self.diffusion))
    if config.objective == "flow":  # velocity sigma'(t) eps = sigma' / sigma x at t * 999
      t = t / objectives.SDE_TIME_SCALE
      dsigma = objectives.process_from_config(config).coeff_derivatives(t)[1]
      _, sigma = objectives.process_from_config(config).marginal_coeffs(t)
      ratio = jnp.where(sigma > 0, dsigma / jnp.where(sigma > 0, sigma, 1.0), 0.0)  # x = 0 at t = 0
      return x * sde_lib.broadcast_to_x(ratio, x)
    if config.objective == "edm":  # F = -c_skip x / c_out at x = x_in / c_in, D = 0
      sigma = jnp.exp(4.0 * t / objectives.SDE_TIME_SCALE)
      scale = -config.sigma_data / sigma  # -c_skip / (c_out c_in)
      return x * sde_lib.broadcast_to_x(scale, x)
    if config.objective == "sde_dsm":
      _, sigma = objectives.sde_from_config(config).marginal_coeffs(t / objectives.SDE_TIME_SCALE)
    elif config.objective == "ncsn":
      sigma = -objectives.ncsn_sigmas(config)[t]  # NCSN's output is sigma * score.
    else:
      sigma = objectives.schedule_from_config(config).sigma(t)  # int or fractional t
    return x / sde_lib.broadcast_to_x(sigma, x)


def _config(**diffusion):
  config = schema.base_config()
  config.diffusion.update({"num_timesteps": 50, "num_scales": 50, **diffusion})
  config.data.update(image_size=SHAPE[1], channels=SHAPE[3])
  config.sample.update(num_samples=SHAPE[0])
  return config


@pytest.mark.parametrize("diffusion", [
    dict(objective="sde_dsm", sde="vpsde"),
    dict(objective="sde_dsm", sde="subvpsde", likelihood_weighting=True),
    dict(objective="sde_dsm", sde="vesde", sigma_min=0.01, sigma_max=5.0),
    dict(objective="ncsn", sigma_min=0.01, sigma_max=5.0, num_scales=10),
    dict(objective="ddpm"),
    dict(objective="flow", time_distribution="logit_normal"),
    dict(objective="flow", interpolant="cosine", time_distribution="mode", time_shift=3.0),
    dict(objective="edm", sigma_data=0.7),
])
def test_exact_model_has_zero_loss_and_a_misread_time_does_not(diffusion):
  config = _config(**diffusion)
  loss_fn = objectives.make_loss_fn(config.diffusion)
  model = _PointMassEps(diffusion=tuple(config.diffusion.items()))
  x0, key = jnp.zeros(SHAPE), jax.random.PRNGKey(0)
  exact = loss_fn(lambda x, t: model.apply({}, x, t), x0, key)
  np.testing.assert_allclose(exact, 0.0, atol=1e-6)
  if diffusion["objective"] != "ddpm":
    shifted = loss_fn(lambda x, t: model.apply({}, x, jnp.flip(t)), x0, key)
    assert np.all(np.asarray(shifted) >= 0) and float(jnp.max(shifted)) > 1e-2


def test_sde_dsm_feeds_the_unet_t_times_999_and_ncsn_the_ladder_index():
  seen = {}

  def recorder(name):
    def model_fn(x, t):
      seen[name] = t
      return jnp.zeros_like(x)
    return model_fn

  x0, key = jnp.zeros((64,) + SHAPE[1:]), jax.random.PRNGKey(1)
  objectives.make_loss_fn(_config(objective="sde_dsm").diffusion)(recorder("sde"), x0, key)
  t = np.asarray(seen["sde"])
  assert t.dtype == np.float32 and 999e-5 <= t.min() and t.max() <= 999 and t.max() > 500
  ncsn = _config(objective="ncsn", sigma_min=0.1, sigma_max=10.0, num_scales=7).diffusion
  objectives.make_loss_fn(ncsn)(recorder("ncsn"), x0, key)
  assert seen["ncsn"].dtype == jnp.int32 and set(np.asarray(seen["ncsn"])) <= set(range(7))
  sigmas = objectives.ncsn_sigmas(ncsn)
  np.testing.assert_array_equal(objectives.sigma_index(sigmas, sigmas[::-1]), np.arange(7)[::-1])


@pytest.mark.parametrize("objective, sampler", [
    ("sde_dsm", "pc"), ("sde_dsm", "ode"), ("sde_dsm", "dpm_solver_pp_2m"),
    ("sde_dsm", "edm_heun"), ("ncsn", "ald"), ("ncsn", "ddim"), ("ddpm", "dpm_solver_pp_2m"),
    ("ddpm", "edm_heun"), ("ddpm", "heun"), ("ddpm", "pc"), ("flow", "euler"), ("flow", "ode"),
    ("flow", "unipc"), ("flow", "ddim"), ("edm", "edm_heun"), ("edm", "dpm_solver_pp_2m"),
    ("edm", "unipc"),
])
def test_every_sampler_recovers_the_point_mass(objective, sampler):
  extra = dict(sigma_min=0.01, sigma_max=5.0, num_scales=5) if objective == "ncsn" else {}
  config = _config(objective=objective, **extra)
  # pc: N > beta_max, and fine enough that its last step t = 1 / N is near the data; on a
  # schedule, its own T steps.
  num_steps = {"pc": 200 if objective != "ddpm" else None}.get(sampler, 10)
  config.sample.update(sampler=sampler, num_steps=num_steps, clip_denoised=False)
  validation.validate_config(config, num_devices=1)
  model = _PointMassEps(diffusion=tuple(config.diffusion.items()))
  samples = generation.sample_batches(config, model, {}, jax.random.PRNGKey(0),
                                      generation.request_from_config(config))
  assert samples.shape == SHAPE
  # From unit-scale noise to within the smallest noise level of the chain.
  assert float(np.max(np.abs(samples))) < 0.1, (objective, sampler)


def test_samplers_that_cannot_run_are_refused_before_compiling():
  mean = _config(objective="ddpm", prediction="mean")
  sampling.check_fits("ddim", mean)
  with pytest.raises(ValueError, match=r"prediction 'mean' .* sampler 'dpm_solver_pp_2m' "
                                       r"with the 'logSNR' grid needs another prediction"):
    sampling.check_fits("dpm_solver_pp_2m", mean)
  cosine = _config(objective="ddpm", schedule="cosine")
  with pytest.raises(ValueError, match=r"walks the schedule's own 50 steps; num_steps=10"):
    sampling.check_fits("pc", cosine, num_steps=10)
  sampling.check_fits("pc", cosine, num_steps=10, predictor="euler_maruyama")
  with pytest.raises(ValueError, match=r"sampler 'nope' does not exist; choose one of ddpm"):
    sampling.check_fits("nope", cosine)
  with pytest.raises(ValueError, match=r"pc with num_steps=10 on a VP SDE with beta_max=20.0: "
                                       r".* use num_steps > 20.0"):
    sampling.check_fits("pc", _config(objective="sde_dsm"), num_steps=10)
  assert set(sampling.GRID_SAMPLERS) == set(sampling.SAMPLERS) - {"inpaint", "sdedit"}


def test_config_validation_of_objectives_and_eval():
  cases = [
      (dict(diffusion=dict(objective="score")), r"config.diffusion.objective='score' is not one"),
      (dict(diffusion=dict(objective="sde_dsm", sde="ve")), r"config.diffusion.sde='ve'"),
      (dict(diffusion=dict(sigma_min=5.0, sigma_max=1.0)), r"expected 0 < sigma_min < sigma_max"),
      (dict(diffusion=dict(objective="sde_dsm"), sample=dict(sampler="pc", num_steps=10)),
       r"config.sample.sampler='pc' with config.sample.num_steps=10: pc with num_steps=10 on a VP SDE"),
      (dict(eval=dict(metrics=("fdi",))), r"config.eval.metrics=\('fdi',\)"),
      (dict(eval=dict(every=-1)), r"config.eval.every=-1"),
      (dict(eval=dict(metrics=("bpd",)), diffusion=dict(objective="sde_dsm"),
            sample=dict(sampler="pc")), r"needs config.diffusion.objective in \('ddpm'"),
      (dict(eval=dict(metrics=("fid",))), r"needs config.eval.inception_weights"),
      (dict(diffusion=dict(objective="flow", time_distribution="beta")),
       r"config.diffusion.time_distribution='beta'"),
      (dict(diffusion=dict(objective="flow", interpolant="vp")), r"config.diffusion.interpolant"),
      (dict(diffusion=dict(objective="flow", time_shift=0.0)), r"shift must be positive"),
      (dict(diffusion=dict(objective="edm", sigma_data=0.0)), r"config.diffusion.sigma_data=0.0"),
      (dict(train=dict(posthoc_sigma_rels=(0.05, 0.4), posthoc_every=10)),
       r"config.train.posthoc_sigma_rels: sigma_rel must lie in \(0, 0.3003\) .*got 0.4"),
      (dict(train=dict(posthoc_sigma_rels=(0.05,))), r"config.train.posthoc_every=0; expected"),
  ]
  for sections, message in cases:
    config = schema.base_config()
    for section, values in sections.items():
      config[section].update(values)
    with pytest.raises(ValueError, match=message):
      validation.validate_config(config, num_devices=1)
