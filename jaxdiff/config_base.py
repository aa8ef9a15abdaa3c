"""The training config schema: every field, its default, and validation.

Each `configs/NAME.py` starts from `base_config()` and changes fields; the returned
ConfigDict is locked, so assigning a misspelt field in a config file raises at once, and
`--config.SECTION.FIELD=...` overrides of unknown fields are refused by ml_collections.
`validate_config` checks values (choices, divisibility by the device count, consistency)
before anything is compiled.
"""

import importlib.util
import json
import os
from typing import Any

import ml_collections
from ml_collections import config_dict

from jaxdiff import diffusion, losses, objectives, sampling_registry, schedules
from jaxdiff.evaluation.metrics import METRICS

_CHOICES = {
    ("diffusion", "objective"): objectives.OBJECTIVES,
    ("diffusion", "sde"): objectives.SDES,
    ("diffusion", "schedule"): schedules.SCHEDULE_KINDS,
    ("diffusion", "prediction"): diffusion.PREDICTIONS,
    ("diffusion", "loss_type"): losses.LOSS_TYPES,
    ("diffusion", "variance"): diffusion.VARIANCES,
    ("diffusion", "weighting"): losses.WEIGHTINGS,
    ("data", "source"): ("tfds", "idx"),
    ("train", "optimizer"): ("adam", "adamw"),
    ("sample", "sampler"): sampling_registry.GRID_SAMPLERS,
    ("model", "dtype"): ("float32", "bfloat16"),
}
_LEARNED_VARIANCES = ("learned", "learned_range")
_POSITIVE_INTS = (
    ("data", "image_size"), ("data", "channels"), ("train", "batch_size"),
    ("train", "num_steps"), ("train", "log_every"), ("train", "checkpoint_every"),
    ("train", "keep_checkpoints"), ("sample", "num_samples"), ("diffusion", "num_timesteps"),
    ("diffusion", "num_scales"), ("eval", "num_samples"), ("eval", "bpd_examples"),
)
_INCREASING = (("diffusion", "beta_min", "beta_max"), ("diffusion", "sigma_min", "sigma_max"))


def base_config() -> ml_collections.ConfigDict:
  """Returns the locked schema with defaults (Ho et al.'s DDPM training recipe)."""
  config = ml_collections.ConfigDict()

  # Keyword arguments of jaxdiff.models.UNet, so that UNet(**config.model) builds it.
  config.model = ml_collections.ConfigDict(dict(
      out_channels=config_dict.placeholder(int),
      base_channels=128,
      channel_mult=(1, 2, 2, 2),
      num_res_blocks=2,
      attention_resolutions=(16,),
      num_heads=1,
      num_head_channels=config_dict.placeholder(int),
      dropout=0.1,
      use_scale_shift_norm=False,
      resblock_updown=False,
      num_classes=config_dict.placeholder(int),
      learn_sigma=False,
      num_groups=32,
      dtype="float32",
      remat=False,
  ))

  config.diffusion = ml_collections.ConfigDict(dict(
      schedule="linear",
      num_timesteps=1000,
      prediction="eps",
      loss_type="mse",
      variance="fixed_large",
      weighting=config_dict.placeholder(str),
      min_snr_gamma=5.0,
      # The objective (jaxdiff.objectives): "ddpm" (discrete, the losses above), "sde_dsm"
      # (continuous DSM, Song et al. 2021 eq. 7) or "ncsn" (Song & Ermon 2019).
      objective="ddpm",
      sde="vpsde",               # sde_dsm: "vpsde", "subvpsde" or "vesde".
      beta_min=0.1,              # VP / sub-VP beta(t) range.
      beta_max=20.0,
      sigma_min=0.01,            # VE SDE and NCSN noise ladder range.
      sigma_max=50.0,
      num_scales=1000,           # SDE discretization steps N (pc); NCSN ladder length L.
      likelihood_weighting=False,  # sde_dsm: lambda(t) = g(t)^2 (Song et al. 2021b).
      sde_eps=1e-5,              # sde_dsm: training times t ~ U(sde_eps, 1).
  ))

  config.data = ml_collections.ConfigDict(dict(
      source="tfds",             # "tfds": a TFDS dataset by name; "idx": local IDX files.
      name="sklearn_digits",     # TFDS name (jaxdiff registers "sklearn_digits").
      split="train",
      data_dir=config_dict.placeholder(str),  # TFDS data_dir; None = TFDS's default.
      download=True,             # Let TFDS download_and_prepare when not yet prepared.
      idx_dir=config_dict.placeholder(str),   # Folder of IDX files for source="idx".
      image_size=16,             # Images are centre-cropped to a square and resized to this.
      channels=1,
      random_flip=False,         # Random horizontal flips.
      prefetch=2,                # Batches prepared ahead and placed on the devices.
  ))

  config.train = ml_collections.ConfigDict(dict(
      seed=0,
      batch_size=128,            # Global batch, split over every device of every process.
      num_steps=800_000,
      optimizer="adam",
      learning_rate=2e-4,
      warmup_steps=5000,
      grad_clip=1.0,             # Global-norm clipping; 0 disables it.
      weight_decay=0.0,          # Only for optimizer="adamw".
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      ema_decay=0.9999,
      label_dropout=0.0,         # Classifier-free guidance: P(label -> null label).
      log_every=100,
      checkpoint_every=5000,
      keep_checkpoints=3,
      async_checkpointing=True,
      sample_every=0,            # Steps between sample grids; 0 = only at the end.
      shard_params=False,        # FSDP-style: shard params, EMA and optimizer state too.
      shard_min_size=2**18,      # Arrays smaller than this stay replicated when sharding.
  ))

  config.sample = ml_collections.ConfigDict(dict(
      sampler="ddpm",
      num_samples=64,
      num_steps=config_dict.placeholder(int),  # None = the full chain.
      eta=0.0,                   # DDIM only.
      guidance_scale=1.0,        # Class-conditional models: 0 uncond., 1 cond., >1 guided.
      clip_denoised=True,
      seed=0,
      ald_step_lr=2e-5,          # ald: Langevin step size at the smallest sigma.
  ))

  # Periodic evaluation during training (jaxdiff.evaluation.metrics.evaluate_during_training).
  config.eval = ml_collections.ConfigDict(dict(
      every=0,                   # Steps between evaluations; 0 = off.
      metrics=("classifier_fd",),  # Subset of jaxdiff.evaluation.metrics.METRICS.
      num_samples=256,           # Samples for classifier_fd / fid.
      bpd_split="test",          # Held-out split for bits/dim.
      bpd_examples=256,
      inception_weights=config_dict.placeholder(str),  # FID Inception .npz, for "fid".
      cache_dir=config_dict.placeholder(str),  # None = $JAXDIFF_CACHE or ~/.cache/jaxdiff.
  ))
  config.lock()
  return config


def _check_keys(config: Any, schema: Any, path: str) -> None:
  if not isinstance(config, (dict, ml_collections.ConfigDict)):
    raise ValueError(f"config{path} must be a section (ConfigDict), got {config!r}.")
  unknown = sorted(set(config.keys()) - set(schema.keys()))
  if unknown:
    raise ValueError(
        f"Unknown config field(s) {', '.join(f'config{path}.{k}' for k in unknown)}; "
        f"expected fields of config{path or ' (root)'}: {', '.join(sorted(schema.keys()))}.")
  missing = sorted(set(schema.keys()) - set(config.keys()))
  if missing:
    raise ValueError(f"Missing config field(s): {', '.join(f'config{path}.{k}' for k in missing)}.")
  for key, value in schema.items():
    if isinstance(value, ml_collections.ConfigDict):
      _check_keys(config[key], value, f"{path}.{key}")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
  """Raises ValueError naming the bad field when `config` cannot be trained as given.

  Checks field names against `base_config()`, choice fields, positive sizes, the global
  batch and sample count being divisible by `num_devices`, and the consistency of learned
  variance and class conditioning. Cheap: call it before building or compiling anything.
  """
  _check_keys(config, base_config(), "")
  for (section, field), choices in _CHOICES.items():
    value = config[section][field]
    if value not in choices:
      raise ValueError(f"config.{section}.{field}={value!r} is not one of {choices}.")
  for section, field in _POSITIVE_INTS:
    value = config[section][field]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"config.{section}.{field}={value!r}; expected a positive integer.")
  for section, field in (("train", "batch_size"), ("sample", "num_samples")):
    value = config[section][field]
    if value % num_devices:
      raise ValueError(
          f"config.{section}.{field}={value} is not divisible by the {num_devices} devices; "
          f"use a multiple of {num_devices}.")
  learned = config.diffusion.variance in _LEARNED_VARIANCES
  if learned != bool(config.model.learn_sigma):
    raise ValueError(
        f"config.diffusion.variance={config.diffusion.variance!r} needs "
        f"config.model.learn_sigma={learned}, got {config.model.learn_sigma}.")
  if config.diffusion.loss_type == "hybrid" and not learned:
    raise ValueError(
        "config.diffusion.loss_type='hybrid' trains the variance; it needs "
        f"config.diffusion.variance in {_LEARNED_VARIANCES}.")
  if not 0.0 <= config.train.label_dropout < 1.0:
    raise ValueError(f"config.train.label_dropout={config.train.label_dropout}; expected [0, 1).")
  if config.train.label_dropout > 0 and config.model.num_classes is None:
    raise ValueError(
        f"config.train.label_dropout={config.train.label_dropout} needs a class-conditional "
        "model: set config.model.num_classes.")
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise ValueError(f"config.train.ema_decay={config.train.ema_decay}; expected [0, 1).")
  if config.data.source == "idx" and not config.data.idx_dir:
    raise ValueError("config.data.source='idx' needs config.data.idx_dir, the IDX folder.")
  _validate_objective(config)
  _validate_eval(config.eval, objective=config.diffusion.objective)


def _validate_objective(config: ml_collections.ConfigDict) -> None:
  """The score-SDE fields: increasing ranges, eps in (0, 1), a sampler that fits."""
  for section, low, high in _INCREASING:
    low_value, high_value = config[section][low], config[section][high]
    if not 0 < low_value < high_value:
      raise ValueError(f"config.{section}.{low}={low_value}, config.{section}.{high}="
                       f"{high_value}; expected 0 < {low} < {high}.")
  if not 0.0 < config.diffusion.sde_eps < 1.0:
    raise ValueError(f"config.diffusion.sde_eps={config.diffusion.sde_eps}; expected (0, 1).")
  try:
    sampling_registry.check_fits(config.sample.sampler, config.diffusion,
                                 num_steps=config.sample.num_steps)
  except ValueError as e:
    raise ValueError(f"config.sample.sampler={config.sample.sampler!r}: {e}.") from None


def _validate_eval(eval_config: ml_collections.ConfigDict, *, objective: str) -> None:
  """config.eval: a non-negative period and known metrics that this objective supports."""
  every = eval_config.every
  if not isinstance(every, int) or isinstance(every, bool) or every < 0:
    raise ValueError(f"config.eval.every={every!r}; expected an integer >= 0 (0 = off).")
  unknown = sorted(set(eval_config.metrics) - set(METRICS))
  if unknown or not eval_config.metrics:
    raise ValueError(f"config.eval.metrics={tuple(eval_config.metrics)!r}; expected a "
                     f"non-empty subset of {METRICS}.")
  if "bpd" in eval_config.metrics and objective != "ddpm":
    raise ValueError(f"config.eval.metrics has 'bpd', the discrete variational bound; it "
                     f"needs config.diffusion.objective='ddpm', not {objective!r}.")
  if "fid" in eval_config.metrics and not eval_config.inception_weights:
    raise ValueError("config.eval.metrics has 'fid'; it needs config.eval.inception_weights, "
                     "the FID Inception .npz.")


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """`get_config()` of the config file at `path` (so one config can build on another)."""
  if not os.path.isfile(path):
    raise ValueError(f"No config file at {os.fspath(path)!r}; expected a configs/NAME.py.")
  spec = importlib.util.spec_from_file_location(
      f"jaxdiff_config_{os.path.splitext(os.path.basename(path))[0]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _merge(target: ml_collections.ConfigDict, values: dict[str, Any], path: str) -> None:
  for key, value in values.items():
    if key not in target:
      raise ValueError(f"Saved config has unknown field config{path}.{key}.")
    if isinstance(target[key], ml_collections.ConfigDict):
      _merge(target[key], value, f"{path}.{key}")
    elif isinstance(target[key], tuple) and isinstance(value, list):
      target[key] = tuple(value)  # JSON has no tuples; the schema says which fields are.
    else:
      target[key] = value


def config_from_json(text: str) -> ml_collections.ConfigDict:
  """Rebuilds a config saved with `config.to_json()` (tuples restored from the schema)."""
  config = base_config()
  _merge(config, json.loads(text), "")
  return config
