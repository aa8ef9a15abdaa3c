"""OpenAI's improved-diffusion / guided-diffusion U-Net checkpoints (Nichol & Dhariwal 2021;
Dhariwal & Nichol 2021), converted to safetensors, with their repositories' model flags.

Their U-Net is diffusers' ``UNet2DModel`` with the options diffusers' own conversion of
these checkpoints uses (``DiffusersUNet2D``: residual or convolutional resampling with
padding 1, scale-shift norm, GroupNorm(32, eps 1e-5), cosine-first timestep sinusoid);
``load_openai_unet`` maps the flags onto that module and renames every tensor, splitting
the fused ``qkv`` projections in their legacy (per-head q, k, v) or new (q, k, v, then
heads) order.
"""

import os
import shlex
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxdiff.models import pretrained

# The flags of the two repositories' create_model, with their defaults (script_util.py).
MODEL_FLAGS: dict[str, Any] = dict(
    image_size=64, num_channels=128, num_res_blocks=2, channel_mult="", learn_sigma=False,
    class_cond=False, attention_resolutions="16,8", num_heads=4, num_head_channels=-1,
    num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0, resblock_updown=False,
    use_new_attention_order=False)
# Flags of their scripts that do not change the network.
OTHER_FLAGS = frozenset({
    "use_fp16", "use_checkpoint", "diffusion_steps", "noise_schedule", "timestep_respacing",
    "use_kl", "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas", "batch_size",
    "num_samples", "use_ddim", "clip_denoised", "model_path", "classifier_scale",
    "classifier_path", "lr", "microbatch", "ema_rate", "weight_decay", "log_interval",
    "save_interval", "schedule_sampler", "lr_anneal_steps", "resume_checkpoint",
    "fp16_scale_growth", "data_dir"})
# create_model's channel multipliers by image size when --channel_mult is not given
# (guided-diffusion; 32 from improved-diffusion).
DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4),
                        128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
_RESBLOCK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2",
             "skip_connection": "conv_shortcut"}
_TOP = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
        "label_emb": "class_embedding", "input_blocks.0.0": "conv_in",
        "out.0": "conv_norm_out", "out.2": "conv_out"}


def parse_flags(flags: str | Mapping[str, Any]) -> dict[str, Any]:
  """The model flags as a dict: from a dict, or from their command-line form
  ``"--image_size 256 --class_cond True ..."`` (values typed like the defaults)."""
  if isinstance(flags, str):
    words = shlex.split(flags)
    if len(words) % 2 or any(not w.startswith("--") for w in words[::2]):
      raise pretrained.PretrainedError(f"flags must be '--name value' pairs, got {flags!r}")
    flags = {w[2:]: v for w, v in zip(words[::2], words[1::2])}
  unknown = sorted(set(flags) - set(MODEL_FLAGS) - OTHER_FLAGS)
  if unknown:
    raise pretrained.PretrainedError(f"unknown OpenAI U-Net flag(s) {unknown}; model flags: "
                                     f"{sorted(MODEL_FLAGS)}")
  values = dict(MODEL_FLAGS)
  for name, value in flags.items():
    if name in MODEL_FLAGS:
      default = MODEL_FLAGS[name]
      if isinstance(default, bool) and isinstance(value, str):
        value = {"true": True, "false": False}[value.lower()]
      values[name] = type(default)(value)
  return values


def unet_config(flags: Mapping[str, Any], *, num_classes: int | None) -> dict[str, Any]:
  """The UNet2DModel config (plus ``attention_heads``) of OpenAI's create_model flags."""
  mult = flags["channel_mult"]
  if mult:
    mult = tuple(float(m) for m in mult.split(","))
  elif flags["image_size"] in DEFAULT_CHANNEL_MULT:
    mult = DEFAULT_CHANNEL_MULT[flags["image_size"]]
  else:
    raise pretrained.PretrainedError(f"image_size={flags['image_size']} has no default "
                                     "channel_mult: pass --channel_mult")
  if flags["num_heads_upsample"] not in (-1, flags["num_heads"]):
    raise pretrained.PretrainedError(f"num_heads_upsample={flags['num_heads_upsample']} "
                                     "differs from num_heads: not supported")
  heights = {int(r) for r in flags["attention_resolutions"].split(",") if r}
  attention = [flags["image_size"] // 2**level in heights for level in range(len(mult))]
  updown = flags["resblock_updown"]
  plain_down = "ResnetDownsampleBlock2D" if updown else "DownBlock2D"
  plain_up = "ResnetUpsampleBlock2D" if updown else "UpBlock2D"
  head_dim = flags["num_head_channels"]
  return dict(
      in_channels=3, out_channels=6 if flags["learn_sigma"] else 3,
      block_out_channels=tuple(int(flags["num_channels"] * m) for m in mult),
      layers_per_block=flags["num_res_blocks"],
      down_block_types=tuple("AttnDownBlock2D" if a else plain_down for a in attention),
      up_block_types=tuple("AttnUpBlock2D" if a else plain_up for a in attention[::-1]),
      downsample_type="resnet" if updown else "conv",
      upsample_type="resnet" if updown else "conv", downsample_padding=1,
      resnet_time_scale_shift="scale_shift" if flags["use_scale_shift_norm"] else "default",
      flip_sin_to_cos=True, freq_shift=0, norm_num_groups=32, norm_eps=1e-5,
      attn_norm_num_groups=32, num_class_embeds=num_classes,
      attention_head_dim=None if head_dim == -1 else head_dim,
      attention_heads=flags["num_heads"] if head_dim == -1 else None)


def _split_qkv(tensor: np.ndarray, heads: int, new_order: bool) -> list[np.ndarray]:
  """A fused qkv projection (1-D convolution weight [3C, C, 1] or bias [3C]) as the three
  [C, C] / [C] tensors of q, k and v. Legacy order: per head q, k, v; new order: q, k, v,
  each split into heads."""
  flat = tensor.reshape(tensor.shape[0], -1)
  width = flat.shape[0] // 3
  shape = (3, heads, width // heads, -1) if new_order else (heads, 3, width // heads, -1)
  parts = flat.reshape(shape)
  parts = parts if new_order else parts.swapaxes(0, 1)
  return [part.reshape((width, -1) if tensor.ndim > 1 else (width,)) for part in parts]


def _block_map(config: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
  """OpenAI module prefix -> (diffusers prefix, kind: "resnet", "attention", "conv")."""
  levels = len(config["block_out_channels"])
  layers, updown = config["layers_per_block"], config["downsample_type"] == "resnet"
  resampler = "resnet" if updown else "conv"
  blocks, index = {}, 1
  for level in range(levels):
    attention = config["down_block_types"][level].startswith("Attn")
    for j in range(layers):
      blocks[f"input_blocks.{index}.0"] = (f"down_blocks.{level}.resnets.{j}", "resnet")
      if attention:
        blocks[f"input_blocks.{index}.1"] = (f"down_blocks.{level}.attentions.{j}", "attention")
      index += 1
    if level != levels - 1:
      prefix = f"input_blocks.{index}.0" + ("" if updown else ".op")
      blocks[prefix] = (f"down_blocks.{level}.downsamplers.0" + ("" if updown else ".conv"),
                        resampler)
      index += 1
  blocks.update({"middle_block.0": ("mid_block.resnets.0", "resnet"),
                 "middle_block.1": ("mid_block.attentions.0", "attention"),
                 "middle_block.2": ("mid_block.resnets.1", "resnet")})
  index = 0
  for up in range(levels):
    attention = config["up_block_types"][up].startswith("Attn")
    for j in range(layers + 1):
      blocks[f"output_blocks.{index}.0"] = (f"up_blocks.{up}.resnets.{j}", "resnet")
      if attention:
        blocks[f"output_blocks.{index}.1"] = (f"up_blocks.{up}.attentions.{j}", "attention")
      if j == layers and up != levels - 1:
        prefix = f"output_blocks.{index}.{2 if attention else 1}" + ("" if updown else ".conv")
        blocks[prefix] = (f"up_blocks.{up}.upsamplers.0" + ("" if updown else ".conv"),
                          resampler)
      index += 1
  return blocks


def _owner(module: str, blocks: Mapping[str, Any]) -> str | None:
  """The longest dotted prefix of `module` that names a block of `blocks`."""
  parts = module.split(".")
  return next((p for p in (".".join(parts[:i]) for i in range(len(parts), 0, -1))
               if p in blocks), None)


def _attention_tensors(target: str, part: str, leaf: str, tensor: np.ndarray, *, heads: int,
                       new_order: bool) -> dict[str, np.ndarray]:
  """One tensor of OpenAI's AttentionBlock under diffusers' Attention names."""
  if part == "qkv":
    return {f"{target}.to_{n}.{leaf}": t
            for n, t in zip("qkv", _split_qkv(tensor, heads, new_order))}
  if part == "proj_out":
    return {f"{target}.to_out.0.{leaf}": tensor.reshape(tensor.shape[0], -1)
            if leaf == "weight" else tensor}
  return {f"{target}.{'group_norm' if part == 'norm' else part}.{leaf}": tensor}


def diffusers_names(tensors: Mapping[str, np.ndarray], config: Mapping[str, Any], *,
                    new_attention_order: bool) -> dict[str, np.ndarray]:
  """OpenAI's state dict under diffusers' UNet2DModel names (the qkv projections split).

  A tensor outside the U-Net's layout keeps its name, so that the conversion reports it
  as unexpected."""
  blocks, out = _block_map(config), {}
  for name, tensor in tensors.items():
    module, leaf = name.rsplit(".", 1)
    owner = _owner(module, blocks)
    if module in _TOP:
      out[f"{_TOP[module]}.{leaf}"] = tensor
    elif owner is None:
      out[name] = tensor
    else:
      target, kind = blocks[owner]
      part = module[len(owner) + 1:]
      if kind == "attention":
        out.update(_attention_tensors(target, part, leaf, tensor, new_order=new_attention_order,
                                      heads=_heads(config, tensor.shape[0] // 3)))
      elif kind == "conv":
        out[f"{target}.{leaf}"] = tensor
      else:
        out[f"{target}.{_RESBLOCK.get(part, part)}.{leaf}"] = tensor
  return out


def _heads(config: Mapping[str, Any], channels: int) -> int:
  if config["attention_heads"] is not None:
    return config["attention_heads"]
  return channels // (config["attention_head_dim"] or channels)


def load_openai_unet(path: str | os.PathLike, flags: str | Mapping[str, Any]
                     ) -> tuple[nn.Module, dict[str, Any]]:
  """An improved-diffusion / guided-diffusion U-Net checkpoint: `(module, variables)`.

  Args:
    path: the checkpoint converted to safetensors (a `.pt` is refused unopened; see
      `jaxdiff.models.pretrained.CONVERSION_COMMAND`).
    flags: the model flags it was trained with, as in their READMEs
      (`"--image_size 256 --num_channels 256 --class_cond True ..."`) or a dict.

  `module.apply(variables, x, t[, y])` on NHWC `x` equals their `model(x, t[, y])`; with
  `learn_sigma` the last 3 channels are the variance interpolation ("learned_range"). The
  number of classes of a class-conditional model is read from `label_emb`.
  """
  pretrained.refuse_pickle(path)
  values = parse_flags(flags)
  tensors = pretrained.read_safetensors(path)
  num_classes = None
  if values["class_cond"]:
    if "label_emb.weight" not in tensors:
      raise pretrained.PretrainedError("class_cond=True but the checkpoint has no tensor "
                                       "'label_emb.weight'")
    num_classes = tensors["label_emb.weight"].shape[0]
  config = unet_config(values, num_classes=num_classes)
  module, example = pretrained.unet2d_module(config)
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), *example)["params"]
  renamed = diffusers_names(tensors, config,
                            new_attention_order=values["use_new_attention_order"])
  return module, {"params": pretrained.convert_by_name(renamed, abstract)}
