"""Validation of a training config: every value that can be checked before compiling.

`validate_config` checks field names against the schema (`jaxdiff.config.schema`), choice
fields against the tables that define them, positive sizes and learning rates,
divisibility by the device count, the consistency of the objective, the model and the
sampler, and that the files evaluation needs exist. `check_resume` compares a run's saved
config with the one it is resumed with (`RESUME_SAFE_FIELDS` may change).
Every error is a `ConfigError` (a ValueError) of one line naming the field.
"""

import json
import math
import os
from typing import Any

import ml_collections

from jaxdiff import consistency, diffusion, ema, flow, losses, processes, schedules
from jaxdiff.config import builders, categorical, latent_checks, objectives, sampling
from jaxdiff.config.errors import ConfigError
from jaxdiff.data import tasks
from jaxdiff.config.schema import MODEL_NAMES, base_config, model_config
from jaxdiff.evaluation import METRICS

_CHOICES = {
    ("diffusion", "objective"): objectives.OBJECTIVES,
    ("diffusion", "sde"): objectives.SDES,
    ("diffusion", "curriculum"): objectives.CURRICULA,
    ("diffusion", "ct_metric"): objectives.CT_METRICS,
    ("diffusion", "cd_solver"): consistency.SOLVERS,
    ("diffusion", "schedule"): schedules.SCHEDULE_KINDS,
    ("diffusion", "prediction"): diffusion.PREDICTIONS,
    ("diffusion", "loss_type"): losses.LOSS_TYPES,
    ("diffusion", "variance"): diffusion.VARIANCES,
    ("diffusion", "weighting"): losses.WEIGHTINGS,
    ("diffusion", "interpolant"): processes.INTERPOLANTS,
    ("diffusion", "time_distribution"): flow.TIME_DISTRIBUTIONS,
    ("data", "source"): ("tfds", "idx", "photos", "words"),
    ("train", "optimizer"): ("adam", "adamw"),
    ("sample", "sampler"): sampling.GRID_SAMPLERS,
    ("model", "dtype"): ("float32", "bfloat16"),
}
_LEARNED_VARIANCES = ("learned", "learned_range")
BPD_OBJECTIVES = ("ddpm",) + categorical.OBJECTIVES  # objectives with a test-set bound
_POSITIVE_INTS = (
    ("data", "image_size"), ("data", "channels"), ("train", "batch_size"),
    ("train", "num_steps"), ("train", "log_every"), ("train", "checkpoint_every"),
    ("train", "keep_checkpoints"), ("sample", "num_samples"), ("diffusion", "num_timesteps"),
    ("diffusion", "num_scales"), ("eval", "num_samples"), ("eval", "bpd_examples"),
    ("diffusion", "curriculum_steps"), ("diffusion", "ct_s0"), ("diffusion", "ct_s1"),
)
_INCREASING = (("diffusion", "beta_min", "beta_max"), ("diffusion", "sigma_min", "sigma_max"))

# Fields that may differ from the saved config when a run resumes: they change neither
# what the checkpoint holds nor what the next steps compute, only when the run stops,
# what it logs, saves, samples and evaluates, where the data lives, and memory layout.
# A "section.*" entry covers the whole section. train.num_steps must stay >= the step
# resumed from (the trainer checks that).
RESUME_SAFE_FIELDS = (
    "train.num_steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.async_checkpointing", "train.sample_every", "train.shard_params",
    "train.shard_min_size", "data.prefetch", "data.data_dir", "data.download",
    "model.remat", "sample.*", "eval.*",
)


def _check_keys(config: Any, schema: Any, path: str) -> None:
  if not isinstance(config, (dict, ml_collections.ConfigDict)):
    raise ConfigError(f"config{path} must be a section (ConfigDict), got {config!r}.")
  unknown = sorted(set(config.keys()) - set(schema.keys()))
  if unknown:
    raise ConfigError(
        f"Unknown config field(s) {', '.join(f'config{path}.{k}' for k in unknown)}; "
        f"expected fields of config{path or ' (root)'}: {', '.join(sorted(schema.keys()))}.")
  missing = sorted(set(schema.keys()) - set(config.keys()))
  if missing:
    raise ConfigError(f"Missing config field(s): {', '.join(f'config{path}.{k}' for k in missing)}.")
  for key, value in schema.items():
    if isinstance(value, ml_collections.ConfigDict):
      _check_keys(config[key], value, f"{path}.{key}")


def _check_model_name(config: ml_collections.ConfigDict) -> None:
  """config.model.name is a known model and the section holds that model's fields."""
  name = config.model.get("name") if "model" in config else None
  if name not in MODEL_NAMES:
    raise ConfigError(f"config.model.name={name!r} is not one of {MODEL_NAMES}.")
  expected = set(model_config(name).keys())
  if set(config.model.keys()) != expected:
    other = [n for n in MODEL_NAMES if set(model_config(n).keys()) == set(config.model.keys())]
    hint = (f"; it holds the fields of {other[0]!r}: start from "
            f"jaxdiff.config.schema.base_config(model={name!r}) instead of setting the name"
            if other else "")
    raise ConfigError(f"config.model.name={name!r} expects the fields "
                     f"{', '.join(sorted(expected))}{hint}.")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
  """Raises ConfigError naming the bad field when `config` cannot be trained as given.

  Checks field names against `base_config()`, choice fields, positive sizes, the global
  batch and sample count being divisible by `num_devices`, and the consistency of learned
  variance and class conditioning. Cheap: call it before building or compiling anything.
  """
  _check_model_name(config)
  _check_keys(config, base_config(model=config.model.name), "")
  for (section, field), choices in _CHOICES.items():
    if field not in config[section]:  # e.g. the autoencoder has no dtype
      continue
    value = config[section][field]
    if value not in choices:
      raise ConfigError(f"config.{section}.{field}={value!r} is not one of {choices}.")
  for section, field in _POSITIVE_INTS:
    value = config[section][field]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f"config.{section}.{field}={value!r}; expected a positive integer.")
  for section, field in (("train", "batch_size"), ("sample", "num_samples")):
    value = config[section][field]
    if value % num_devices:
      raise ConfigError(
          f"config.{section}.{field}={value} is not divisible by the {num_devices} devices; "
          f"use a multiple of {num_devices}.")
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise ConfigError(f"config.train.ema_decay={config.train.ema_decay}; expected [0, 1).")
  if config.data.source == "idx" and not config.data.idx_dir:
    raise ConfigError("config.data.source='idx' needs config.data.idx_dir, the IDX folder.")
  _validate_optimizer(config.train)
  if config.model.name == "autoencoder_kl":
    latent_checks.validate_autoencoder_run(config)
    return
  latent_checks.validate_latent(config)
  latent_checks.validate_conditioner(config)
  latent_checks.validate_combination(config)
  _validate_variance_and_labels(config)
  try:
    categorical.validate(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _validate_objective(config)
  _validate_eval(config.eval, objective=config.diffusion.objective,
                 source=config.data.source)
  _validate_task(config)


def _validate_variance_and_labels(config: ml_collections.ConfigDict) -> None:
  """A learned variance exactly when the model learns sigma; label dropout only for a
  conditional model (class labels or a conditioner)."""
  learned = config.diffusion.variance in _LEARNED_VARIANCES
  learn_sigma = config.model.get("learn_sigma", False)
  if learned != bool(learn_sigma) and not categorical.is_categorical(config):
    raise ConfigError(
        f"config.diffusion.variance={config.diffusion.variance!r} needs "
        f"config.model.learn_sigma={learned}, got {learn_sigma}.")
  if config.diffusion.loss_type == "hybrid" and not learned:
    raise ConfigError(
        "config.diffusion.loss_type='hybrid' trains the variance; it needs "
        f"config.diffusion.variance in {_LEARNED_VARIANCES}.")
  if not 0.0 <= config.train.label_dropout < 1.0:
    raise ConfigError(f"config.train.label_dropout={config.train.label_dropout}; expected [0, 1).")
  conditional = config.model.get("num_classes") is not None or config.conditioner.name is not None
  if config.train.label_dropout > 0 and not conditional:
    raise ConfigError(
        f"config.train.label_dropout={config.train.label_dropout} needs a conditional "
        "model: set config.model.num_classes or config.conditioner.name.")


def _validate_task(config: ml_collections.ConfigDict) -> None:
  """config.data.task fits the data (`Task.check`) and the model conditions on it: a U-Net
  with condition_channels of the task's condition and the augmentation-level embedding
  exactly when the task augments."""
  try:  # The task's own checks (jaxdiff.data.tasks) raise ValueError.
    task = tasks.task_from_config(config.data)
    if task is not None:
      task.check(builders.image_shape(config))
  except ValueError as e:
    raise ConfigError(f"{str(e).rstrip('.')}.") from None
  model = config.model
  if task is None:
    if model.get("condition_channels") is not None:
      raise ConfigError(f"config.model.condition_channels={model.condition_channels} needs an "
                       "image-to-image task: set config.data.task.name.")
    return
  image_shape = builders.image_shape(config)
  if model.name != "unet":
    raise ConfigError(f"config.data.task.name={task.name!r} needs the U-Net "
                      f"(config.model.name='unet'), not {model.name!r}.")
  channels = task.condition_shape(image_shape)[-1]
  if model.condition_channels != channels:
    raise ConfigError(f"config.data.task.name={task.name!r} gives conditions of {channels} "
                      f"channel(s); set config.model.condition_channels={channels}, not "
                      f"{model.condition_channels}.")
  if model.aug_level_embedding != (task.augment_max > 0):
    raise ConfigError(f"config.model.aug_level_embedding={model.aug_level_embedding} must be "
                      f"{task.augment_max > 0} when config.data.task.augment_max="
                      f"{task.augment_max}.")
  if not 0.0 <= config.sample.aug_level <= 1.0:
    raise ConfigError(f"config.sample.aug_level={config.sample.aug_level}; expected [0, 1].")


def _validate_optimizer(train_config: ml_collections.ConfigDict) -> None:
  """A finite positive learning rate and Adam constants that keep its update finite."""
  for field in ("learning_rate", "eps"):
    value = train_config[field]
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
      raise ConfigError(f"config.train.{field}={value!r}; expected a finite number > 0.")
  for field in ("b1", "b2"):
    if not 0.0 <= train_config[field] < 1.0:
      raise ConfigError(f"config.train.{field}={train_config[field]!r}; expected [0, 1).")
  for field in ("grad_clip", "weight_decay"):
    value = train_config[field]
    if not math.isfinite(value) or value < 0:
      raise ConfigError(f"config.train.{field}={value!r}; expected a finite number >= 0.")
  if train_config.warmup_steps < 0:
    raise ConfigError(f"config.train.warmup_steps={train_config.warmup_steps}; expected >= 0.")


def _validate_objective(config: ml_collections.ConfigDict) -> None:
  """The score-SDE fields: increasing ranges, eps in (0, 1), a sampler that fits."""
  for section, low, high in _INCREASING:
    low_value, high_value = config[section][low], config[section][high]
    if not 0 < low_value < high_value:
      raise ConfigError(f"config.{section}.{low}={low_value}, config.{section}.{high}="
                       f"{high_value}; expected 0 < {low} < {high}.")
  if (config.diffusion.objective == "consistency_distillation") != (
      config.distill.teacher_workdir is not None) and config.diffusion.objective in (
          objectives.CONSISTENCY):
    raise ConfigError("config.diffusion.objective='consistency_distillation' needs "
                      "config.distill.teacher_workdir (a trained run), and "
                      "'consistency_training' takes none.")
  if config.diffusion.ct_s0 > config.diffusion.ct_s1:
    raise ConfigError(f"config.diffusion.ct_s0={config.diffusion.ct_s0} exceeds "
                      f"config.diffusion.ct_s1={config.diffusion.ct_s1}; expected "
                      "ct_s0 <= ct_s1 (the first and the last N(k) - 1).")
  if not 0.0 < config.diffusion.sde_eps < 1.0:
    raise ConfigError(f"config.diffusion.sde_eps={config.diffusion.sde_eps}; expected (0, 1).")
  diffusion_config = config.diffusion
  try:
    flow.check_time_options(diffusion_config.time_distribution,
                            scale=diffusion_config.logit_std,
                            mode_scale=diffusion_config.mode_scale,
                            shift=diffusion_config.time_shift)
  except ValueError as e:
    raise ConfigError(f"config.diffusion: {e}.") from None
  for field in ("sigma_data", "p_std"):
    if not diffusion_config[field] > 0:
      raise ConfigError(f"config.diffusion.{field}={diffusion_config[field]}; expected > 0.")
  _validate_posthoc(config.train)
  num_steps = config.sample.num_steps
  try:
    sampling.check_fits(config.sample.sampler, config, num_steps=num_steps)
  except ValueError as e:
    steps = "" if num_steps is None else f" with config.sample.num_steps={num_steps}"
    raise ConfigError(f"config.sample.sampler={config.sample.sampler!r}{steps}: {e}.") from None


def _validate_posthoc(train_config: ml_collections.ConfigDict) -> None:
  """Post-hoc EMA: sigma_rels in range (`jaxdiff.ema`) and a snapshot period when tracked."""
  for value in train_config.posthoc_sigma_rels:
    try:
      ema.sigma_rel_to_gamma(value)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.train.posthoc_sigma_rels: {e}.") from None
  every = train_config.posthoc_every
  tracked = bool(train_config.posthoc_sigma_rels)
  if not isinstance(every, int) or isinstance(every, bool) or every < 0 or (
      tracked and every == 0):
    raise ConfigError(f"config.train.posthoc_every={every!r}; expected a positive integer (steps "
                     "between post-hoc EMA snapshots) when config.train.posthoc_sigma_rels is "
                     "set, else 0.")


def _validate_eval(eval_config: ml_collections.ConfigDict, *, objective: str,
                   source: str) -> None:
  """config.eval: a non-negative period and known metrics that this objective supports."""
  every = eval_config.every
  if not isinstance(every, int) or isinstance(every, bool) or every < 0:
    raise ConfigError(f"config.eval.every={every!r}; expected an integer >= 0 (0 = off).")
  unknown = sorted(set(eval_config.metrics) - set(METRICS))
  if unknown or not eval_config.metrics:
    raise ConfigError(f"config.eval.metrics={tuple(eval_config.metrics)!r}; expected a "
                     f"non-empty subset of {METRICS}.")
  if "bpd" in eval_config.metrics and objective not in BPD_OBJECTIVES:
    raise ConfigError(f"config.eval.metrics has 'bpd', a variational bound; it needs "
                      f"config.diffusion.objective in {BPD_OBJECTIVES}, not {objective!r}.")
  if "words" in eval_config.metrics and source != "words":
    raise ConfigError(f"config.eval.metrics has 'words', which scores samples of a word list; "
                      f"it needs config.data.source='words', not {source!r}.")
  if "fid" in eval_config.metrics and not eval_config.inception_weights:
    raise ConfigError("config.eval.metrics has 'fid'; it needs config.eval.inception_weights, "
                     "the FID Inception .npz.")
  weights = eval_config.inception_weights
  if every and "fid" in eval_config.metrics and not os.path.isfile(weights):
    raise ConfigError(f"config.eval.inception_weights={weights!r}: no such file.")


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{"section.field": value} of a config, tuples as lists (as config.json stores them)."""
  flat = {}

  def visit(node: dict[str, Any], prefix: str) -> None:
    for key, value in node.items():
      if isinstance(value, dict):
        visit(value, f"{prefix}{key}.")
      else:
        flat[prefix + key] = value

  visit(json.loads(config.to_json()), "")
  return flat


def config_changes(saved: ml_collections.ConfigDict, new: ml_collections.ConfigDict
                   ) -> dict[str, tuple[Any, Any]]:
  """{"section.field": (saved value, new value)} of every field that differs."""
  old_flat, new_flat = _flat(saved), _flat(new)
  return {name: (old_flat.get(name), new_flat.get(name))
          for name in sorted(set(old_flat) | set(new_flat))
          if old_flat.get(name) != new_flat.get(name)}


def _resume_safe(name: str) -> bool:
  return name in RESUME_SAFE_FIELDS or f"{name.split('.')[0]}.*" in RESUME_SAFE_FIELDS


def check_resume(saved: ml_collections.ConfigDict, new: ml_collections.ConfigDict, *,
                 allow_changes: bool) -> dict[str, tuple[Any, Any]]:
  """The changes between a run's saved config and the one it resumes with.

  Raises ConfigError naming the changed fields that are not `RESUME_SAFE_FIELDS`, unless
  `allow_changes` (the user's explicit override). Returns every change.
  """
  changes = config_changes(saved, new)
  unsafe = {name: values for name, values in changes.items() if not _resume_safe(name)}
  if unsafe and not allow_changes:
    listed = ", ".join(f"config.{name}: {old!r} -> {value!r}"
                       for name, (old, value) in unsafe.items())
    raise ConfigError(
        f"The config differs from the one this workdir was trained with ({listed}); "
        "resuming would change what the checkpoint means. Use another --workdir, or pass "
        "--allow_config_change to resume anyway.")
  return changes


