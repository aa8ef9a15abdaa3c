"""The training config schema: every field and its default; reading saved configs.

Each `configs/NAME.py` starts from `base_config()` and changes fields; the returned
ConfigDict is locked, so assigning a misspelt field in a config file raises at once, and
`--config.SECTION.FIELD=...` overrides of unknown fields are refused by ml_collections.
This module imports nothing but ml_collections, so that importing a config file is cheap;
`jaxdiff.config.validation.validate_config` checks the values.
"""

import importlib.util
import json
import os
from typing import Any

import ml_collections
from ml_collections import config_dict


MODEL_NAMES = ("unet", "dit", "transformer", "autoencoder_kl")


def _unet_fields() -> dict:
  """jaxdiff.models.UNet: Ho et al.'s CIFAR-10 DDPM U-Net (35.7M parameters)."""
  return dict(
      name="unet",
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
      # Cross-attention (Rombach et al. 2022): SpatialTransformers at these heights,
      # attending to a context of width context_dim (the conditioner's width).
      context_dim=config_dict.placeholder(int),
      transformer_resolutions=(),
      transformer_depth=1,
      # Image-to-image models (config.data.task): the condition's channels, how the model
      # resizes a lower-resolution condition, and CDM's augmentation-level embedding.
      condition_channels=config_dict.placeholder(int),
      condition_resize="cubic",
      aug_level_embedding=False,
  )


def _dit_fields() -> dict:
  """DiT-S/2 (Peebles & Xie 2023, Table 4)."""
  return dict(
      name="dit",
      patch_size=2,
      hidden_size=384,
      depth=12,
      num_heads=6,
      mlp_ratio=4.0,
      out_channels=config_dict.placeholder(int),
      num_classes=config_dict.placeholder(int),
      learn_sigma=False,
      dtype="float32",
      remat=False,
  )


def _transformer_fields() -> dict:
  """jaxdiff.models.TokenTransformer (discrete objectives)."""
  return dict(
      name="transformer",
      num_tokens=config_dict.placeholder(int),   # K, plus 1 for a mask token.
      out_channels=config_dict.placeholder(int),  # K * channels.
      hidden_size=128,
      depth=4,
      num_heads=4,
      mlp_ratio=4.0,
      num_classes=config_dict.placeholder(int),
      dtype="float32",
  )


def _autoencoder_kl_fields() -> dict:
  """f = 4: three levels (Rombach et al. 2022, Table 8)."""
  return dict(
      name="autoencoder_kl",
      in_channels=3,
      out_channels=3,
      down_block_types=("DownEncoderBlock2D",) * 3,
      up_block_types=("UpDecoderBlock2D",) * 3,
      block_out_channels=(128, 256, 512),
      layers_per_block=2,
      act_fn="silu",
      latent_channels=3,
      norm_num_groups=32,
      scaling_factor=1.0,
      use_quant_conv=True,
      use_post_quant_conv=True,
      mid_block_add_attention=True,
  )


_MODEL_FIELDS = {"unet": _unet_fields, "dit": _dit_fields, "transformer": _transformer_fields, "autoencoder_kl": _autoencoder_kl_fields}


def model_config(name: str = "unet") -> ml_collections.ConfigDict:
  """The `config.model` section of the model called `name`, with its defaults.

  `name` is "unet" (jaxdiff.models.UNet, the default), "dit" (jaxdiff.models.DiT),
  "transformer" (jaxdiff.models.TokenTransformer, over the tokens of the discrete
  objectives) or "autoencoder_kl" (jaxdiff.models.autoencoder_kl.AutoencoderKL: a run that
  trains the KL autoencoder of latent diffusion, with `config.autoencoder`'s objective);
  the other fields are exactly that module's keyword arguments. Locked, so a config file
  swaps models with `config.model = model_config("dit")` and then only updates fields.
  `name` is also a Flax Module field (the module's name, which leaves a top-level module's
  variables unchanged), so
  `UNet(**config.model)` and `DiT(**config.model)` build the model as they stand.
  """
  if name not in _MODEL_FIELDS:
    raise ValueError(f"config.model.name={name!r} is not one of {MODEL_NAMES}.")
  section = ml_collections.ConfigDict(_MODEL_FIELDS[name]())
  section.lock()
  return section


def _gaussian_fields() -> dict:
  """The Gaussian chain (Ho et al. 2020; Nichol & Dhariwal 2021) and the objective with its
  SDE / NCSN options (Song et al. 2021; Song & Ermon 2019)."""
  return dict(
    schedule="linear",
    num_timesteps=1000,
    prediction="eps",
    loss_type="mse",
    variance="fixed_large",
    weighting=config_dict.placeholder(str),
    min_snr_gamma=5.0,
    # The objective (jaxdiff.config.objectives): "ddpm" (discrete, the losses above),
    # "sde_dsm" (continuous DSM, Song et al. 2021 eq. 7), "ncsn" (Song & Ermon 2019),
    # "flow" (flow matching, Lipman et al. 2023) or "edm" (Karras et al. 2022).
    objective="ddpm",
    sde="vpsde",               # sde_dsm: "vpsde", "subvpsde" or "vesde".
    beta_min=0.1,              # VP / sub-VP beta(t) range.
    beta_max=20.0,
    sigma_min=0.01,            # VE SDE and NCSN noise ladder range; EDM sampling range.
    sigma_max=50.0,
    num_scales=1000,           # SDE discretization steps N (pc); NCSN ladder length L.
    likelihood_weighting=False,  # sde_dsm: lambda(t) = g(t)^2 (Song et al. 2021b).
    sde_eps=1e-5,              # sde_dsm: training times t ~ U(sde_eps, 1).
  )


def _discrete_fields() -> dict:
  """Discrete-state objectives (Austin et al. 2021; Shi et al. 2024; Sahoo et al. 2024)."""
  return dict(
    # Discrete-state objectives "d3pm" (Austin et al. 2021) and "masked" (MD4 / MDLM), on
    # tokens 0..K-1 (jaxdiff.discrete, jaxdiff.config.categorical); num_timesteps is T.
    num_categories=config_dict.placeholder(int),  # K; uint8 level round(k * 255 / (K-1)).
    kernel="uniform",          # d3pm: "uniform", "absorbing" (adds the mask K), "gaussian".
    kernel_schedule="cosine",  # d3pm betas: "cosine", "jsd" or "linear" (start..end).
    kernel_beta_start=0.02,
    kernel_beta_end=1.0,
    discrete_loss="hybrid",    # d3pm: "hybrid" (L_vb + hybrid_coeff * CE), "kl" or "ce".
    hybrid_coeff=0.001,
    masking="linear",          # masked: alpha(t) "linear", "cosine" or "poly" (1 - t^w).
    masking_exponent=1.0,      # masked "poly": w.
  )


def _flow_edm_fields() -> dict:
  """Flow matching (Lipman et al. 2023; Esser et al. 2024) and EDM (Karras et al. 2022)."""
  return dict(
    # objective "flow" (jaxdiff.flow): the interpolant and the training-time distribution.
    interpolant="linear",      # "linear" (rectified flow) or "cosine" (trigonometric).
    time_distribution="uniform",  # "uniform", "logit_normal" or "mode" (Esser et al. 2024).
    logit_mean=0.0,            # logit_normal: t = sigmoid(logit_mean + logit_std n).
    logit_std=1.0,
    mode_scale=1.29,           # mode: the scale s of Esser et al.'s eq. 20.
    time_shift=1.0,            # t -> shift t / (1 + (shift - 1) t) (eq. 23); 1 = none.
    # objective "edm" (jaxdiff.edm, Karras et al. 2022 Table 1); sigma_min / sigma_max above
    # bound its sampling grid.
    sigma_data=0.5,            # Standard deviation of the data (edm, consistency).
    p_mean=-1.2,               # Training noise levels ln(sigma) ~ N(p_mean, p_std^2).
    p_std=1.2,
  )


def _consistency_fields() -> dict:
  """Consistency training and distillation (Song et al. 2023; Song & Dhariwal 2024)."""
  return dict(
    # consistency_training (jaxdiff.consistency): the model lives on EDM's sigma axis
    # [sigma_min, sigma_max] (set them to 0.002, 80), with these choices of Song et al.
    # 2023 ("ct") or of improved CT (Song & Dhariwal 2024, "ict").
    rho=7.0,                   # Karras et al.'s spacing of the N(k) levels.
    curriculum="ict",          # "ict": doubling N(k), lognormal p(n), 1/gap weights;
                               # "ct": Song et al. 2023's N(k), uniform p(n), weight 1.
    curriculum_steps=1,        # K of N(k): the step at which N(k) reaches ct_s1 + 1.
    ct_s0=10,                  # N(0) = ct_s0 (+ 1 for "ict").
    ct_s1=1280,                # The final N(K) = ct_s1 + 1.
    ct_p_mean=-1.1,            # "ict": lognormal choice of the levels.
    ct_p_std=2.0,
    ct_metric="pseudo_huber",  # "pseudo_huber" (c = 0.00054 sqrt(d)) or "l2".
    cd_solver="heun",          # consistency_distillation: the teacher's ODE step.
  )


def _diffusion_fields() -> dict:
  """The noise process and the objective: `config.diffusion`."""
  return {**_gaussian_fields(), **_discrete_fields(), **_flow_edm_fields(),
          **_consistency_fields()}


def _data_fields() -> dict:
  """The data: a TFDS dataset, local IDX files, photo patches or a word list, and an
  image-to-image task."""
  return dict(
    source="tfds",             # "tfds" (by name), "idx" (local IDX files), "photos",
                               # "words" (a word list as token grids, jaxdiff.data.words).
    name="sklearn_digits",     # TFDS name (jaxdiff registers "sklearn_digits").
    split="train",
    data_dir=config_dict.placeholder(str),  # TFDS data_dir; None = TFDS's default.
    download=True,             # Let TFDS download_and_prepare when not yet prepared.
    idx_dir=config_dict.placeholder(str),   # Folder of IDX files for source="idx".
    word_list="/usr/share/dict/words",      # source="words": one word a line.
    quantize=False,            # Discrete objectives: round the 8-bit levels to K levels
                               # (else the data must hold exactly K levels).
    image_size=16,             # Images are centre-cropped to a square and resized to this.
    channels=1,
    random_flip=False,         # Random horizontal flips.
    prefetch=2,                # Batches prepared ahead and placed on the devices.
    # An image-to-image task (jaxdiff.data.tasks): the batches carry its condition.
    task=ml_collections.ConfigDict(dict(
        name=config_dict.placeholder(str),  # None (unconditional) or a task of TASKS.
        factor=4,                # super_resolution: the downsampling factor.
        downsample="area",       # super_resolution: "area" or "bicubic".
        mask="box",              # inpainting: "box" or "free_form".
        uncrop="half",           # uncropping: "half" or "quarter".
        jpeg_quality=(5, 30),    # jpeg_restoration: quality uniform in [lo, hi].
        augment_max=0.0,         # CDM noise augmentation: level s ~ U(0, augment_max).
        condition_dropout=0.0,   # P(condition -> zeros), for classifier-free guidance.
    )),
  )


def _train_fields() -> dict:
  """Optimization (Adam, warmup, clipping), EMA and post-hoc EMA, and the intervals of
  the training loop's periodic actions."""
  return dict(
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
    # Post-hoc EMA (Karras et al. 2024; jaxdiff.ema): the power-function EMA profiles
    # tracked beside ema_decay's, by their relative std sigma_rel (EDM2: (0.05, 0.10));
    # () = off. Snapshots of them every posthoc_every steps go to WORKDIR/posthoc_ema/.
    posthoc_sigma_rels=(),
    posthoc_every=0,
    label_dropout=0.0,         # Classifier-free guidance: P(label -> null label).
    log_every=100,
    checkpoint_every=5000,
    keep_checkpoints=3,
    async_checkpointing=True,
    sample_every=0,            # Steps between sample grids; 0 = only at the end.
    shard_params=False,        # FSDP-style: shard params, EMA and optimizer state too.
    shard_min_size=2**18,      # Arrays smaller than this stay replicated when sharding.
  )


def _sample_fields() -> dict:
  """The sampler and its options for the trainer's grids, sample.py and evaluation."""
  return dict(
    sampler="ddpm",
    num_samples=64,
    num_steps=config_dict.placeholder(int),  # None = the full chain.
    eta=0.0,                   # DDIM only.
    guidance_scale=1.0,        # Class-conditional models: 0 uncond., 1 cond., >1 guided.
    clip_denoised=True,
    seed=0,
    ald_step_lr=2e-5,          # ald: Langevin step size at the smallest sigma.
    aug_level=0.0,             # Image-to-image: the condition's augmentation level s.
  )


def _distill_fields() -> dict:
  """Progressive distillation (jaxdiff.distillation, jaxdiff.job.distill): a round
  trains a student initialised from the teacher's EMA parameters, with the teacher's
  diffusion, model and data sections, to take student_steps steps of the "nested" grid
  where the teacher took twice as many. Consistency distillation reads its teacher (a
  run of any other objective with the same image shape) from teacher_workdir too."""
  return dict(
    teacher_workdir=config_dict.placeholder(str),  # None = not a distillation run.
    student_steps=config_dict.placeholder(int),    # N; half the teacher's (if distilled).
  )


def _autoencoder_fields() -> dict:
  """Latent diffusion and the KL autoencoder (jaxdiff.job.latents, jaxdiff.autoencoder)."""
  return dict(
    # A diffusion run in latent space: the frozen autoencoder of a train.py run with
    # config.model.name="autoencoder_kl". Setting workdir (or latent_channels) makes the
    # run latent; the other fields are recorded in the run's config.json at its start.
    workdir=config_dict.placeholder(str),
    step=config_dict.placeholder(int),             # Its checkpoint; None = the newest.
    latent_channels=config_dict.placeholder(int),  # Expected; None = the autoencoder's.
    downsampling_factor=config_dict.placeholder(int),  # f, read from the autoencoder.
    scale_factor=config_dict.placeholder(float),   # 1 / std of latents; None = measured.
    scale_examples=2048,       # Training images encoded to measure scale_factor.
    sample_posterior=True,     # Encode (and, training the autoencoder, decode) z ~ q(z|x).
    # Training the autoencoder itself (config.model.name="autoencoder_kl").
    reconstruction="l1",       # "l1" or "l2", summed over pixels.
    kl_weight=1e-6,
    disc_weight=0.0,           # Patch discriminator with adaptive weight; 0 = none.
    disc_start=0,              # Step from which the adversarial terms count.
    disc_channels=64,
    disc_layers=3,
    num_reconstructions=16,    # Test images in each reconstructions/step_N.png grid.
  )


def _conditioner_fields() -> dict:
  """Conditioning on a token sequence through cross-attention
  (jaxdiff.models.text_encoder)."""
  return dict(
    name=config_dict.placeholder(str),  # None, or "text": captions, a trained TextEncoder.
    captions="fashion_mnist",  # Caption builder of jaxdiff.data.captions.CAPTION_SETS.
    max_length=8,              # Tokens per caption, BOS included.
    width=64,                  # Context width D (= config.model.context_dim).
    depth=2,
    num_heads=4,
  )


def _eval_fields() -> dict:
  """Periodic evaluation during training (jaxdiff.job.evaluation.evaluate_during_training)
  and the defaults of `python -m jaxdiff.evaluate`."""
  return dict(
    every=0,                   # Steps between evaluations; 0 = off.
    metrics=("classifier_fd",),  # Subset of jaxdiff.evaluation.METRICS.
    num_samples=256,           # Samples for classifier_fd / fid.
    bpd_split="test",          # Held-out split for bits/dim.
    bpd_examples=256,
    inception_weights=config_dict.placeholder(str),  # FID Inception .npz, for "fid".
    cache_dir=config_dict.placeholder(str),  # None = $JAXDIFF_CACHE or ~/.cache/jaxdiff.
  )


def base_config(model: str = "unet") -> ml_collections.ConfigDict:
  """Returns the locked schema with defaults (Ho et al.'s DDPM training recipe).

  `model` picks the `config.model` section (`model_config`): one of MODEL_NAMES.
  """
  config = ml_collections.ConfigDict()
  config.model = model_config(model)
  for name, fields in (("diffusion", _diffusion_fields), ("data", _data_fields),
                       ("train", _train_fields), ("sample", _sample_fields),
                       ("distill", _distill_fields), ("autoencoder", _autoencoder_fields),
                       ("conditioner", _conditioner_fields), ("eval", _eval_fields)):
    config[name] = ml_collections.ConfigDict(fields())
  config.lock()
  return config


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
  """Rebuilds a config saved with `config.to_json()` (tuples restored from the schema).

  The model section follows its saved `name` ("unet" when absent, as in configs saved
  before DiT existed).
  """
  values = json.loads(text)
  config = base_config(model=values.get("model", {}).get("name", "unet"))
  _merge(config, values, "")
  return config
