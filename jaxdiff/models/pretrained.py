"""Pretrained weights from diffusers model folders, read from safetensors only.

``load_pretrained(directory) -> (module, variables)`` reads a diffusers model folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``) of a ``UNet2DModel``,
``AutoencoderKL`` or ``DiTTransformer2DModel`` (also under its older name
``Transformer2DModel``) and returns a Flax module with its variables, such that
``module.apply(variables, x, t)`` on NHWC ``x`` equals the PyTorch model on NCHW ``x``.
The conversion is an exact layout mapping: convolution kernels OIHW -> HWIO, dense kernels
transposed, GroupNorm / LayerNorm weights as scales. Pickled checkpoints (``.bin``,
``.pt``, ...) are refused before any file is opened: convert them where torch is installed
with ``CONVERSION_COMMAND``.
"""

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from jaxdiff.models import diffusers_blocks
from jaxdiff.models.autoencoder_kl import AutoencoderKL
from jaxdiff.models.diffusers_unet import DiffusersUNet2D
from jaxdiff.models.dit import DiT

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONVERSION_COMMAND = (
    "python -c \"import sys, torch, safetensors.torch as st; st.save_file({k: v.contiguous() "
    "for k, v in torch.load(sys.argv[1], map_location='cpu', weights_only=True).items()}, "
    "sys.argv[2])\" IN.bin OUT.safetensors")

# diffusers' defaults (its __init__ signatures, diffusers 0.42) for the keys that an old
# config.json lacks; keys that do not change the forward pass are listed as ignored.
UNET2D_DEFAULTS: dict[str, Any] = dict(
    in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="positional",
    time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    mid_block_type="UNetMidBlock2D",
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1,
    downsample_padding=1, downsample_type="conv", upsample_type="conv", act_fn="silu",
    attention_head_dim=8, norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5,
    resnet_time_scale_shift="default", add_attention=True, class_embed_type=None,
    num_class_embeds=None, attention_heads=None)
AUTOENCODER_KL_DEFAULTS: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
    up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block=1,
    act_fn="silu", latent_channels=4, norm_num_groups=32, scaling_factor=0.18215,
    use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True)
DIT_DEFAULTS: dict[str, Any] = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=None,
    num_layers=28, attention_bias=True, sample_size=32, patch_size=2,
    activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
    norm_elementwise_affine=False, norm_eps=1e-5)
IGNORED_KEYS = frozenset({
    "sample_size", "dropout", "num_train_timesteps", "force_upcast", "shift_factor",
    "latents_mean", "latents_std", "norm_num_groups", "upcast_attention"})
_INACTIVE = (None, False, 0, (), [])
# Legacy attention parameter names of checkpoints written before diffusers 0.14.
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v",
                          "proj_attn": "to_out.0"}


class PretrainedError(ValueError):
  """A model folder that cannot be loaded exactly; the message names the culprit."""


def refuse_pickle(path: str | os.PathLike) -> None:
  """Raises `PretrainedError` for a pickled checkpoint path, before anything opens it."""
  if os.fspath(path).lower().endswith(PICKLE_SUFFIXES):
    raise PretrainedError(f"{os.fspath(path)!r} is a pickle, which jaxdiff never unpickles; "
                          f"convert it to safetensors where torch is installed: "
                          f"{CONVERSION_COMMAND}")


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every tensor of a safetensors file, as float32 NumPy arrays (any float dtype)."""
  refuse_pickle(path)
  with safe_open(os.fspath(path), framework="flax") as f:
    return {key: np.asarray(f.get_tensor(key), np.float32) for key in f.keys()}


def _filled(config: Mapping[str, Any], defaults: Mapping[str, Any], what: str) -> dict:
  """`defaults` updated by the config's known keys; an unknown key is an error unless its
  value switches nothing on (None, False, 0, empty), as in legacy Transformer2DModel
  configs."""
  unknown = sorted(k for k, v in config.items() if not k.startswith("_") and k not in defaults
                   and k not in IGNORED_KEYS and v not in _INACTIVE)
  if unknown:
    raise PretrainedError(f"config.json of {what} has unsupported key(s) {unknown}; "
                          f"supported: {sorted(defaults)}")
  values = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
  return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _require(value: Any, allowed: tuple, key: str, what: str) -> None:
  if value not in allowed:
    raise PretrainedError(f"config.json of {what}: {key}={value!r} is not supported; "
                          f"supported: {allowed}")


def _check_block_types(values: dict, key: str, allowed: tuple, what: str) -> None:
  """Strips diffusers' optional "UNetRes" prefix from `values[key]`; each must be allowed."""
  values[key] = tuple(block.removeprefix("UNetRes") for block in values[key])
  for i, block in enumerate(values[key]):
    if block not in allowed:
      raise PretrainedError(f"config.json of {what}: {key}[{i}]={block!r} is not a supported "
                            f"block type; supported: {allowed}")


def unet2d_module(config: Mapping[str, Any]) -> tuple[nn.Module, tuple]:
  """The `DiffusersUNet2D` of a UNet2DModel config and example inputs (x, t, y)."""
  what = "UNet2DModel"
  values = _filled(config, UNET2D_DEFAULTS, what)
  _require(values.pop("time_embedding_type"), ("positional",), "time_embedding_type", what)
  _require(values.pop("class_embed_type"), (None,), "class_embed_type", what)
  _require(values["mid_block_type"], ("UNetMidBlock2D", None), "mid_block_type", what)
  _require(values["act_fn"], tuple(diffusers_blocks.ACTIVATIONS), "act_fn", what)
  _require(values["resnet_time_scale_shift"], ("default", "scale_shift"),
           "resnet_time_scale_shift", what)
  _require(values["downsample_type"], ("conv", "resnet"), "downsample_type", what)
  _require(values["upsample_type"], ("conv", "resnet"), "upsample_type", what)
  _check_block_types(values, "down_block_types", diffusers_blocks.DOWN_BLOCKS[:3], what)
  _check_block_types(values, "up_block_types", diffusers_blocks.UP_BLOCKS[:3], what)
  in_channels = values.pop("in_channels")
  levels = len(values["block_out_channels"])
  if not len(values["down_block_types"]) == len(values["up_block_types"]) == levels:
    raise PretrainedError(f"config.json of {what}: down_block_types, up_block_types and "
                          f"block_out_channels must have the same length, got "
                          f"{len(values['down_block_types'])}, {len(values['up_block_types'])}, "
                          f"{levels}")
  module = DiffusersUNet2D(**values)
  size = 2 ** (levels - 1)
  y = None if values["num_class_embeds"] is None else jnp.zeros((1,), jnp.int32)
  return module, (jnp.zeros((1, size, size, in_channels)), jnp.zeros((1,), jnp.int32), y)


def autoencoder_kl_module(config: Mapping[str, Any]) -> tuple[nn.Module, tuple]:
  """The `AutoencoderKL` of an AutoencoderKL config and an example input (x,)."""
  what = "AutoencoderKL"
  values = _filled(config, AUTOENCODER_KL_DEFAULTS, what)
  _require(values["act_fn"], tuple(diffusers_blocks.ACTIVATIONS), "act_fn", what)
  _check_block_types(values, "down_block_types", ("DownEncoderBlock2D",), what)
  _check_block_types(values, "up_block_types", ("UpDecoderBlock2D",), what)
  size = 2 ** (len(values["block_out_channels"]) - 1)
  return AutoencoderKL(**values), (jnp.zeros((1, size, size, values["in_channels"])),)


def dit_module(config: Mapping[str, Any]) -> tuple[nn.Module, tuple]:
  """Our `DiT` for a diffusers DiTTransformer2DModel config and example inputs (x, t, y)."""
  what = "DiTTransformer2DModel"
  values = _filled(config, DIT_DEFAULTS, what)
  _require(values["norm_type"], ("ada_norm_zero",), "norm_type", what)
  _require(values["activation_fn"], ("gelu-approximate",), "activation_fn", what)
  _require(values["attention_bias"], (True,), "attention_bias", what)
  _require(values["norm_elementwise_affine"], (False,), "norm_elementwise_affine", what)
  _require(values["num_embeds_ada_norm"] is not None, (True,), "num_embeds_ada_norm", what)
  heads, head_dim = values["num_attention_heads"], values["attention_head_dim"]
  module = DiT(patch_size=values["patch_size"], hidden_size=heads * head_dim,
               depth=values["num_layers"], num_heads=heads,
               out_channels=values["out_channels"] or values["in_channels"],
               num_classes=values["num_embeds_ada_norm"], freq_shift=1.0,
               mlp_norm_eps=values["norm_eps"])
  size = values["sample_size"]
  labels = jnp.zeros((1,), jnp.int32)
  return module, (jnp.zeros((1, size, size, values["in_channels"])), labels, labels)


def _torch_name(path: tuple[str, ...]) -> str:
  """diffusers' parameter name of a mirror module's parameter path."""
  *modules, leaf = path
  modules = [re.sub(r"_(\d+)$", r".\1", m) if re.match(
      r"(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|to_out)_\d+$", m)
      else m for m in modules]
  return ".".join(modules + ["bias" if leaf == "bias" else "weight"])


def _legacy_renamed(name: str) -> str:
  """`...attentions.0.query.weight` -> `...attentions.0.to_q.weight` (and key, value,
  proj_attn), the renaming diffusers applies to pre-0.14 checkpoints."""
  return re.sub(r"(attentions\.\d+)\.(query|key|value|proj_attn)\.",
                lambda m: f"{m.group(1)}.{LEGACY_ATTENTION_NAMES[m.group(2)]}.", name)


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of a Flax parameter: OIHW convolutions, (out, in) linear layers
  (heads flattened: a q / k / v kernel is [in, heads, head_dim], an output projection's
  [heads, head_dim, out]), flat biases."""
  layer, leaf = path[-2], path[-1]
  if leaf == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == "kernel" and len(shape) == 3 and layer in ("q", "k", "v"):
    return (math.prod(shape[1:]), shape[0])
  if leaf == "kernel":
    return (shape[-1], math.prod(shape[:-1]))
  if leaf == "bias":
    return (math.prod(shape),)
  return shape


def _to_flax(name: str, tensor: np.ndarray, path: tuple[str, ...],
             shape: tuple[int, ...]) -> np.ndarray:
  """One PyTorch tensor in the layout of its Flax parameter; one-line errors on shape."""
  expected = _torch_shape(path, shape)
  if path[-1] == "kernel" and len(shape) == 2 and tensor.shape == expected + (1, 1):
    tensor = tensor[:, :, 0, 0]  # A 1x1 convolution stored for a linear layer.
  if tensor.shape != expected:
    raise PretrainedError(f"tensor {name!r} has shape {tensor.shape}; the architecture in "
                          f"config.json expects {expected}")
  if path[-1] == "kernel":
    tensor = tensor.transpose(2, 3, 1, 0) if len(shape) == 4 else tensor.T
  return tensor.reshape(shape)


def convert_by_name(tensors: Mapping[str, np.ndarray], abstract: Any,
                    torch_name: Callable[[tuple[str, ...]], str] = _torch_name) -> Any:
  """Fills the parameter tree `abstract` (ShapeDtypeStructs) from PyTorch `tensors`.

  Each parameter takes the tensor called `torch_name(path)`; every tensor must be used.
  Raises `PretrainedError` naming the first missing, extra or mis-shaped tensor.
  """
  tensors = {_legacy_renamed(k): v for k, v in tensors.items()}
  used = set()

  def fill(path, leaf):
    keys = tuple(p.key for p in path)
    name = torch_name(keys)
    if name not in tensors:
      raise PretrainedError(f"missing tensor {name!r} (shape "
                            f"{_torch_shape(keys, leaf.shape)}) in the safetensors file")
    used.add(name)
    return jnp.asarray(_to_flax(name, tensors[name], keys, leaf.shape))

  params = jax.tree_util.tree_map_with_path(fill, abstract)
  extra = sorted(set(tensors) - used)
  if extra:
    raise PretrainedError(f"unexpected tensor {extra[0]!r} (and {len(extra) - 1} more) in the "
                          "safetensors file: not part of the architecture in config.json")
  return params


_DIT_NAMES = {
    "patch_embed": "pos_embed.proj",
    "t_embed_fc1": "transformer_blocks.0.norm1.emb.timestep_embedder.linear_1",
    "t_embed_fc2": "transformer_blocks.0.norm1.emb.timestep_embedder.linear_2",
    "y_embed": "transformer_blocks.0.norm1.emb.class_embedder.embedding_table",
    "final_adaLN": "proj_out_1",
    "final_linear": "proj_out_2",
}
_DIT_BLOCK_NAMES = {"adaLN_modulation": "norm1.linear", "q": "attn1.to_q", "k": "attn1.to_k",
                    "v": "attn1.to_v", "proj_out": "attn1.to_out.0",
                    "mlp_fc1": "ff.net.0.proj", "mlp_fc2": "ff.net.2"}


def _dit_torch_name(path: tuple[str, ...]) -> str:
  """diffusers' DiTTransformer2DModel name of a `DiT` parameter."""
  *modules, leaf = path
  suffix = "bias" if leaf == "bias" else "weight"
  if modules[0].startswith("block"):
    return f"transformer_blocks.{modules[0][5:]}.{_DIT_BLOCK_NAMES[modules[1]]}.{suffix}"
  return f"{_DIT_NAMES[modules[0]]}.{suffix}"


def _shared_dit_embedders(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops the per-block copies of the timestep / label embedders (diffusers stores one
  per block; DiT shares one), after checking that they equal block 0's."""
  kept = {}
  for name, tensor in tensors.items():
    match = re.fullmatch(r"transformer_blocks\.(\d+)\.norm1\.emb\.(.+)", name)
    if match and match.group(1) != "0":
      first = f"transformer_blocks.0.norm1.emb.{match.group(2)}"
      if first in tensors and not np.array_equal(tensors[first], tensor):
        raise PretrainedError(f"tensor {name!r} differs from {first!r}: DiT shares one "
                              "timestep / label embedder across blocks")
      continue
    kept[name] = tensor
  return kept


_ARCHITECTURES: dict[str, tuple[Callable, Callable]] = {
    "UNet2DModel": (unet2d_module, convert_by_name),
    "AutoencoderKL": (autoencoder_kl_module, convert_by_name),
    "DiTTransformer2DModel": (dit_module, lambda tensors, abstract: convert_by_name(
        _shared_dit_embedders(tensors), abstract, _dit_torch_name)),
}
_ARCHITECTURES["Transformer2DModel"] = _ARCHITECTURES["DiTTransformer2DModel"]


def load_pretrained(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
  """Loads a diffusers model folder: `(module, variables)` with `module.apply(variables,
  x, t)` (NHWC) equal to the PyTorch model's output.

  The folder holds `config.json` and `diffusion_pytorch_model.safetensors` of a
  `UNet2DModel` (block types DownBlock2D, AttnDownBlock2D, ResnetDownsampleBlock2D and
  their Up twins, UNetMidBlock2D), an `AutoencoderKL` (module.encode / module.decode via
  `apply(..., method=...)`) or a `DiTTransformer2DModel` (as jaxdiff's `DiT`; call it with
  labels, `num_embeds_ada_norm` being the null label). Config keys missing from an old
  config.json take diffusers' defaults; legacy attention names (query, key, value,
  proj_attn) load. Pickles are refused before they are opened (see `CONVERSION_COMMAND`).
  Raises `PretrainedError` (a ValueError) naming the unsupported key, block type or
  tensor.
  """
  refuse_pickle(directory)
  directory = os.fspath(directory)
  config_path = os.path.join(directory, "config.json")
  if not os.path.isfile(config_path):
    raise PretrainedError(f"no config.json in {directory!r}: expected a diffusers model folder "
                          f"(config.json + {WEIGHTS_FILE}); for a pipeline, pass its unet/, "
                          "vae/ or transformer/ folder")
  weights = os.path.join(directory, WEIGHTS_FILE)
  if not os.path.isfile(weights):
    pickles = sorted(f for f in os.listdir(directory) if f.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
      refuse_pickle(os.path.join(directory, pickles[0]))
    raise PretrainedError(f"no {WEIGHTS_FILE} in {directory!r}")
  with open(config_path) as f:
    config = json.load(f)
  class_name = config.get("_class_name")
  if class_name not in _ARCHITECTURES:
    raise PretrainedError(f"config.json has _class_name={class_name!r}; supported: "
                          f"{sorted(_ARCHITECTURES)}")
  build, convert = _ARCHITECTURES[class_name]
  module, example = build(config)
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), *example)["params"]
  return module, {"params": convert(read_safetensors(weights), abstract)}
