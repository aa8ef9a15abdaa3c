"""Writes the parity fixtures of jaxdiff.models.load_pretrained (tests/fixtures/pretrained/).

Runs in the PyTorch peer environment (benchmarks/setup_peer_env.sh: torch + diffusers +
safetensors), never in jaxdiff's:

    benchmarks/.venv-peer/bin/python benchmarks/make_pretrained_fixtures.py [OUT_DIR]
    benchmarks/.venv-peer/bin/python benchmarks/make_pretrained_fixtures.py --full DIR

`--full DIR` writes full-size models instead (the published checkpoints' configurations,
hundreds of MB, not for the repository); `JAXDIFF_PARITY_DIR=DIR pytest
tests/test_pretrained.py -k full` checks them.

(which also installs guided-diffusion-sdk, OpenAI's guided-diffusion U-Net). For each
diffusers case it builds a small model with random weights (every parameter drawn
afresh, so no layer is zero), saves it as a model folder (config.json +
diffusion_pytorch_model.safetensors, in float16; the "legacy" cases with the attention names and the
config keys of diffusers' first releases, as on the Hub), and records the model's float32
outputs on fixed inputs, in NHWC, in io.safetensors. The OpenAI U-Net cases store no
weights: spec.json names the flags, the seed and the tensors, which
benchmarks/fixture_weights.py draws the same way here and in the test.
"""

import json
import math
import os
import sys

import diffusers
import guided_diffusion.script_util
import safetensors.torch
import torch

from fixture_weights import draw_weights

FULL = sys.argv[1:2] == ["--full"]
OUT = sys.argv[-1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "tests", "fixtures", "pretrained")

# A small google/ddpm-cifar10-32 (same keys as its config.json, diffusers 0.0.4).
DDPM_LEGACY = dict(
    act_fn="silu", attention_head_dim=None, block_out_channels=[8, 16, 16],
    center_input_sample=False, down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, in_channels=3, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-6, norm_num_groups=4, out_channels=3, sample_size=16,
    time_embedding_type="positional", up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"])
# ADM-style (Dhariwal & Nichol 2021; the layout of openai/diffusers-cd_imagenet64_*):
# residual resampling, scale-shift norm, multi-head attention, class labels.
ADM = dict(
    sample_size=16, in_channels=3, out_channels=6, layers_per_block=1,
    block_out_channels=[8, 16, 24], attention_head_dim=4, norm_num_groups=4,
    down_block_types=["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
    downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="scale_shift",
    attn_norm_num_groups=4, flip_sin_to_cos=True, freq_shift=0, num_class_embeds=5,
    downsample_padding=1)
# The remaining options: conv resampling with padding 1 beside resnet upsampling, no mid
# attention, input centring, a wider embedding, mish, a mid-block output scale.
VARIANTS = dict(
    sample_size=8, in_channels=2, out_channels=3, layers_per_block=1,
    block_out_channels=[8, 16], attention_head_dim=4, norm_num_groups=4,
    down_block_types=["AttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "AttnUpBlock2D"], upsample_type="resnet",
    add_attention=False, center_input_sample=True, time_embedding_dim=40, act_fn="mish",
    mid_block_scale_factor=1.5, norm_eps=1e-5)
# A small KL autoencoder with the config keys of the first releases and legacy attention.
VAE_LEGACY = dict(
    act_fn="silu", block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
    in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4, out_channels=3,
    sample_size=16, up_block_types=["UpDecoderBlock2D"] * 2)
DIT = dict(
    num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
    sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=32)

# OpenAI U-Nets (create_model flags): guided-diffusion's ImageNet layout (residual
# resampling, scale-shift norm, 16-channel heads, new attention order, labels, learned
# sigma) and improved-diffusion's (convolutional resampling, 2 heads, legacy order).
OPENAI_GUIDED = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,1",
                     attention_resolutions="8", num_head_channels=16, use_scale_shift_norm=True,
                     resblock_updown=True, class_cond=True, learn_sigma=True,
                     use_new_attention_order=True)
OPENAI_IMPROVED = dict(image_size=16, num_channels=32, num_res_blocks=2, channel_mult="1,2",
                       attention_resolutions="16,8", num_heads=2, use_scale_shift_norm=False,
                       resblock_updown=False, class_cond=False, learn_sigma=False)
OPENAI_CLASSES = 10  # instead of ImageNet's 1000, to keep the label table small

LEGACY_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def randomize(model: torch.nn.Module, seed: int) -> None:
  """Unit-gain weights, norm scales 1 + 0.1 N, biases and tables 0.1 N, rounded to float16
  (the files store float16 to stay small; the model computes in float32 on exactly those
  values)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if name.endswith("bias") or "embed" in name and p.ndim == 2 and "linear" not in name:
        p.copy_(0.1 * noise)
      elif p.ndim == 1:
        p.copy_(1.0 + 0.1 * noise)
      else:
        p.copy_(noise / math.sqrt(p[0].numel()))
      p.copy_(p.half().float())


def tie_dit_embedders(model: torch.nn.Module) -> None:
  """Copies block 0's timestep / label embedders into every block, as diffusers' DiT
  conversion does (DiT shares them)."""
  first = model.transformer_blocks[0].norm1.emb.state_dict()
  for block in model.transformer_blocks[1:]:
    block.norm1.emb.load_state_dict(first)


def save(name: str, model: torch.nn.Module, config: dict, io: dict, *, legacy: bool) -> None:
  folder = os.path.join(OUT, name)
  os.makedirs(folder, exist_ok=True)
  state = {k: v.half().contiguous() for k, v in model.state_dict().items()}
  if legacy:
    renamed = {}
    for key, value in state.items():
      for new, old in LEGACY_NAMES.items():
        if ".attentions." in key or key.startswith("mid_block.attentions"):
          key = key.replace(f".{new}.", f".{old}.")
      renamed[key] = value
    state = renamed
  config = {"_class_name": type(model).__name__,
            "_diffusers_version": "0.0.4" if legacy else diffusers.__version__, **config}
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  safetensors.torch.save_file(state, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
  nhwc = {k: v.permute(0, 2, 3, 1).contiguous() if v.ndim == 4 else v.contiguous()
          for k, v in io.items()}
  safetensors.torch.save_file(nhwc, os.path.join(folder, "io.safetensors"))
  print(name, sum(p.numel() for p in model.parameters()), "parameters")


def unet_case(name: str, config: dict, seed: int, *, legacy: bool = False) -> None:
  model = diffusers.UNet2DModel(**config).eval()
  randomize(model, seed)
  generator = torch.Generator().manual_seed(seed + 1)
  size, channels = config["sample_size"], config["in_channels"]
  x = torch.randn(2, channels, size, size, generator=generator)
  t = torch.tensor([3, 817])
  io = {"x": x, "t": t.float()}
  labels = None
  if config.get("num_class_embeds"):
    labels = torch.tensor([1, 4])
    io["y"] = labels.float()
  with torch.no_grad():
    io["out"] = model(x, t, class_labels=labels).sample
  save(name, model, config, io, legacy=legacy)


def vae_case(name: str, config: dict, seed: int) -> None:
  model = diffusers.AutoencoderKL(**config).eval()
  randomize(model, seed)
  generator = torch.Generator().manual_seed(seed + 1)
  x = torch.randn(2, config["in_channels"], 16, 16, generator=generator)
  z = torch.randn(2, config["latent_channels"], 8, 8, generator=generator)
  with torch.no_grad():
    posterior = model.encode(x).latent_dist
    io = {"x": x, "z": z, "mean": posterior.mean, "logvar": posterior.logvar,
          "decoded": model.decode(z).sample, "out": model(x).sample}
  save(name, model, config, io, legacy=True)


def dit_case(name: str, config: dict, seed: int) -> None:
  model = diffusers.DiTTransformer2DModel(**config).eval()
  randomize(model, seed)
  tie_dit_embedders(model)
  generator = torch.Generator().manual_seed(seed + 1)
  size = config["sample_size"]
  x = torch.randn(2, config["in_channels"], size, size, generator=generator)
  t, labels = torch.tensor([3, 817]), torch.tensor([1, 10])  # 10: the null label.
  with torch.no_grad():
    out = model(x, timestep=t, class_labels=labels).sample
  save(name, model, config, {"x": x, "t": t.float(), "y": labels.float(), "out": out},
       legacy=False)


def openai_case(name: str, flags: dict, seed: int) -> None:
  guided_diffusion.script_util.NUM_CLASSES = OPENAI_CLASSES
  model = guided_diffusion.script_util.create_model(**flags).eval()
  shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
  model.load_state_dict({k: torch.from_numpy(v) for k, v in draw_weights(seed, shapes).items()})
  generator = torch.Generator().manual_seed(seed + 1)
  size = flags["image_size"]
  x = torch.randn(2, 3, size, size, generator=generator)
  t = torch.tensor([3, 817])
  io = {"x": x, "t": t.float()}
  labels = None
  if flags["class_cond"]:
    labels = torch.tensor([1, 7])
    io["y"] = labels.float()
  with torch.no_grad():
    io["out"] = model(x, t, y=labels)
  folder = os.path.join(OUT, name)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "spec.json"), "w") as f:
    json.dump({"flags": flags, "seed": seed, "tensors": shapes}, f)
  safetensors.torch.save_file({k: v.permute(0, 2, 3, 1).contiguous() if v.ndim == 4 else v
                               for k, v in io.items()}, os.path.join(folder, "io.safetensors"))
  print(name, sum(p.numel() for p in model.parameters()), "parameters (drawn, not stored)")


# Full-size configurations: google/ddpm-cifar10-32 (its config.json), the
# google/ddpm-celebahq-256 layout (at 64x64), the consistency-model ImageNet-64 U-Net
# (ADM), the Stable Diffusion VAE, and a DiT-S/2-wide transformer of 4 blocks.
FULL_CIFAR = dict(DDPM_LEGACY, block_out_channels=[128, 256, 256, 256],
                  down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
                  norm_num_groups=32, sample_size=32)
FULL_CELEBA = dict(FULL_CIFAR, block_out_channels=[128, 128, 256, 256, 512, 512],
                   down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
                   up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
                   sample_size=64)
FULL_CD64 = dict(
    sample_size=64, in_channels=3, out_channels=6, layers_per_block=3, num_class_embeds=1000,
    block_out_channels=[192, 384, 576, 768], attention_head_dim=64,
    down_block_types=["ResnetDownsampleBlock2D"] + ["AttnDownBlock2D"] * 3,
    up_block_types=["AttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
    resnet_time_scale_shift="scale_shift", upsample_type="resnet", downsample_type="resnet")
FULL_SD_VAE = dict(VAE_LEGACY, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                   norm_num_groups=32, sample_size=512,
                   down_block_types=["DownEncoderBlock2D"] * 4,
                   up_block_types=["UpDecoderBlock2D"] * 4)
FULL_DIT = dict(num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8,
                num_layers=4, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)

SCHEDULERS = {
    "linear": dict(beta_schedule="linear", num_train_timesteps=1000),
    "linear_500": dict(beta_schedule="linear", num_train_timesteps=500, beta_start=2e-4,
                       beta_end=0.03),
    "scaled_linear": dict(beta_schedule="scaled_linear", num_train_timesteps=1000,
                          beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000),
    "sigmoid": dict(beta_schedule="sigmoid", num_train_timesteps=200),
}


def scheduler_cases() -> None:
  """diffusers' DDPMScheduler betas for each beta_schedule (schedulers.json: the configs)."""
  betas, configs = {}, {}
  for name, kw in SCHEDULERS.items():
    scheduler = diffusers.DDPMScheduler(**kw)
    configs[name] = {"_class_name": "DDPMScheduler", **kw}
    betas[name] = scheduler.betas.float().contiguous()
  with open(os.path.join(OUT, "schedulers.json"), "w") as f:
    json.dump(configs, f, indent=2)
  safetensors.torch.save_file(betas, os.path.join(OUT, "schedulers.safetensors"))


if __name__ == "__main__":
  torch.set_grad_enabled(False)
  if FULL:
    unet_case("ddpm_cifar10", FULL_CIFAR, 10, legacy=True)
    unet_case("ddpm_celebahq_layout", FULL_CELEBA, 11, legacy=True)
    unet_case("cd_imagenet64", FULL_CD64, 12)
    vae_case("sd_vae", FULL_SD_VAE, 13)
    dit_case("dit_s2_4blocks", FULL_DIT, 14)
    sys.exit(0)
  unet_case("unet_ddpm_legacy", DDPM_LEGACY, 0, legacy=True)
  unet_case("unet_adm", ADM, 1)
  unet_case("unet_variants", VARIANTS, 2)
  vae_case("vae_legacy", VAE_LEGACY, 3)
  dit_case("dit", DIT, 4)
  openai_case("openai_guided", OPENAI_GUIDED, 5)
  openai_case("openai_improved", OPENAI_IMPROVED, 6)
  scheduler_cases()
