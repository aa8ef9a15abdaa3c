"""The FID InceptionV3 (Szegedy et al., 2016) in Flax, loading the standard FID weights.

The network is the TensorFlow "inception-2015-12-05" graph that TTUR's FID (Heusel et al.,
2017) uses, in the layout of pytorch-fid's port (`pt_inception-2015-12-05-*.pth`):
torchvision's InceptionV3 with 1008 classes and no auxiliary head, whose pooling branches
average without counting padding, and whose last block (Mixed_7c) max-pools in its pool
branch. Submodules carry the PyTorch names, so a state-dict key such as
`Mixed_6b.branch7x7_2.conv.weight` maps to `params/Mixed_6b/branch7x7_2/conv/kernel`.

Weights come from a local .npz holding each tensor of the PyTorch state dict by its name.
Where torch is available, convert the published file once with:

    python -c "import sys, numpy as np, torch; sd = torch.load(sys.argv[1], map_location='cpu'); np.savez(sys.argv[2], **{k: v.numpy() for k, v in sd.items()})" pt_inception-2015-12-05-6726825d.pth pt_inception.npz
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from jaxdiff.evaluation.batching import map_batches

INPUT_SIZE = 299
POOL_FEATURES = 2048
NUM_LOGITS = 1008

_Padding = tuple[int, int]


class ConvBN(nn.Module):
  """Convolution without bias, batch norm (eps 1e-3, running statistics), ReLU."""
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: _Padding = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad_h, pad_w = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=(self.strides, self.strides),
                padding=((pad_h, pad_h), (pad_w, pad_w)), use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average over the unpadded pixels only (TensorFlow's SAME average pool)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 max pool with one pixel of -inf padding."""
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_reduce(x: jax.Array) -> jax.Array:
  """3x3 stride-2 max pool without padding."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def _chain(x: jax.Array, layers: Sequence[tuple[str, int, tuple[int, int], int, _Padding]]
           ) -> jax.Array:
  """Applies named ConvBN layers (name, features, kernel, stride, padding) in sequence."""
  for name, features, kernel, stride, padding in layers:
    x = ConvBN(features, kernel, stride, padding, name=name)(x)
  return x


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b-d): 1x1, 5x5, double 3x3 and average-pool branches."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        _chain(x, [("branch1x1", 64, (1, 1), 1, (0, 0))]),
        _chain(x, [("branch5x5_1", 48, (1, 1), 1, (0, 0)),
                   ("branch5x5_2", 64, (5, 5), 1, (2, 2))]),
        _chain(x, [("branch3x3dbl_1", 64, (1, 1), 1, (0, 0)),
                   ("branch3x3dbl_2", 96, (3, 3), 1, (1, 1)),
                   ("branch3x3dbl_3", 96, (3, 3), 1, (1, 1))]),
        _chain(_avg_pool_same(x), [("branch_pool", self.pool_features, (1, 1), 1, (0, 0))]),
    ], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35x35 -> 17x17 (Mixed_6a)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        _chain(x, [("branch3x3", 384, (3, 3), 2, (0, 0))]),
        _chain(x, [("branch3x3dbl_1", 64, (1, 1), 1, (0, 0)),
                   ("branch3x3dbl_2", 96, (3, 3), 1, (1, 1)),
                   ("branch3x3dbl_3", 96, (3, 3), 2, (0, 0))]),
        _max_pool_reduce(x),
    ], axis=-1)


class InceptionC(nn.Module):
  """17x17 block (Mixed_6b-e) with factorized 7x7 convolutions."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    return jnp.concatenate([
        _chain(x, [("branch1x1", 192, (1, 1), 1, (0, 0))]),
        _chain(x, [("branch7x7_1", c7, (1, 1), 1, (0, 0)),
                   ("branch7x7_2", c7, (1, 7), 1, (0, 3)),
                   ("branch7x7_3", 192, (7, 1), 1, (3, 0))]),
        _chain(x, [("branch7x7dbl_1", c7, (1, 1), 1, (0, 0)),
                   ("branch7x7dbl_2", c7, (7, 1), 1, (3, 0)),
                   ("branch7x7dbl_3", c7, (1, 7), 1, (0, 3)),
                   ("branch7x7dbl_4", c7, (7, 1), 1, (3, 0)),
                   ("branch7x7dbl_5", 192, (1, 7), 1, (0, 3))]),
        _chain(_avg_pool_same(x), [("branch_pool", 192, (1, 1), 1, (0, 0))]),
    ], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17x17 -> 8x8 (Mixed_7a)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        _chain(x, [("branch3x3_1", 192, (1, 1), 1, (0, 0)),
                   ("branch3x3_2", 320, (3, 3), 2, (0, 0))]),
        _chain(x, [("branch7x7x3_1", 192, (1, 1), 1, (0, 0)),
                   ("branch7x7x3_2", 192, (1, 7), 1, (0, 3)),
                   ("branch7x7x3_3", 192, (7, 1), 1, (3, 0)),
                   ("branch7x7x3_4", 192, (3, 3), 2, (0, 0))]),
        _max_pool_reduce(x),
    ], axis=-1)


class InceptionE(nn.Module):
  """8x8 block (Mixed_7b, Mixed_7c) with split 1x3/3x1 branches.

  `max_pool=True` is the FID graph's Mixed_7c, which max-pools in its pool branch.
  """
  max_pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = _chain(x, [("branch3x3_1", 384, (1, 1), 1, (0, 0))])
    b3 = jnp.concatenate([_chain(b3, [("branch3x3_2a", 384, (1, 3), 1, (0, 1))]),
                          _chain(b3, [("branch3x3_2b", 384, (3, 1), 1, (1, 0))])], axis=-1)
    bd = _chain(x, [("branch3x3dbl_1", 448, (1, 1), 1, (0, 0)),
                    ("branch3x3dbl_2", 384, (3, 3), 1, (1, 1))])
    bd = jnp.concatenate([_chain(bd, [("branch3x3dbl_3a", 384, (1, 3), 1, (0, 1))]),
                          _chain(bd, [("branch3x3dbl_3b", 384, (3, 1), 1, (1, 0))])], axis=-1)
    pooled = _max_pool_same(x) if self.max_pool else _avg_pool_same(x)
    return jnp.concatenate([
        _chain(x, [("branch1x1", 320, (1, 1), 1, (0, 0))]), b3, bd,
        _chain(pooled, [("branch_pool", 192, (1, 1), 1, (0, 0))]),
    ], axis=-1)


class InceptionV3(nn.Module):
  """FID InceptionV3: images [B, H, W, 3] in [-1, 1] -> (pool features [B, 2048],
  logits [B, 1008]). H, W >= 75; FID resizes to 299 first (see `preprocess`)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = _chain(x, [("Conv2d_1a_3x3", 32, (3, 3), 2, (0, 0)),
                   ("Conv2d_2a_3x3", 32, (3, 3), 1, (0, 0)),
                   ("Conv2d_2b_3x3", 64, (3, 3), 1, (1, 1))])
    x = _max_pool_reduce(x)
    x = _chain(x, [("Conv2d_3b_1x1", 80, (1, 1), 1, (0, 0)),
                   ("Conv2d_4a_3x3", 192, (3, 3), 1, (0, 0))])
    x = _max_pool_reduce(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    return pool, nn.Dense(NUM_LOGITS, name="fc")(pool)


def preprocess(images: jax.Array) -> jax.Array:
  """[B, H, W, 1|3] in [-1, 1] -> [B, 299, 299, 3]: gray tiled to RGB, then bilinear
  resizing with half-pixel centres and no antialiasing (PyTorch's `align_corners=False`,
  as pytorch-fid)."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"inception preprocess: expected images [B, H, W, 1|3], got shape "
                     f"{images.shape}")
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  return jax.image.resize(images.astype(jnp.float32),
                          (images.shape[0], INPUT_SIZE, INPUT_SIZE, 3),
                          method="bilinear", antialias=False)


def _torch_to_flax(tensor: np.ndarray, kind: str) -> np.ndarray:
  """Converts one PyTorch tensor to the Flax layout of its leaf kind."""
  if kind == "conv_kernel":
    return tensor.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if kind == "dense_kernel":
    return tensor.T  # [out, in] -> [in, out]
  return tensor


# (module kind, tensor name) -> (Flax collection, leaf name, layout conversion)
_LEAVES = {
    ("conv", "weight"): ("params", "kernel", "conv_kernel"),
    ("bn", "weight"): ("params", "scale", "same"),
    ("bn", "bias"): ("params", "bias", "same"),
    ("bn", "running_mean"): ("batch_stats", "mean", "same"),
    ("bn", "running_var"): ("batch_stats", "var", "same"),
    ("fc", "weight"): ("params", "kernel", "dense_kernel"),
    ("fc", "bias"): ("params", "bias", "same"),
}
# State-dict entries the FID network does not use.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def _flax_path(key: str) -> tuple[tuple[str, ...], str]:
  """Maps a PyTorch state-dict key to (Flax variable path, layout conversion)."""
  parts = key.split(".")
  if len(parts) < 2 or (parts[-2], parts[-1]) not in _LEAVES:
    raise ValueError(f"inception weights: unexpected tensor name {key!r}; expected names of "
                     f"pytorch-fid's FID InceptionV3 state dict (e.g. "
                     f"'Mixed_5b.branch1x1.conv.weight')")
  collection, leaf, conversion = _LEAVES[(parts[-2], parts[-1])]
  return (collection, *parts[:-1], leaf), conversion


def expected_variable_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """Shapes of every variable of `InceptionV3`, keyed by flattened path."""
  return dict(_variable_shapes())


@functools.lru_cache(maxsize=1)
def _variable_shapes() -> tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]:
  """`expected_variable_shapes` as a tuple of items, traced once per process."""
  abstract = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0),
                            jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return tuple((path, tuple(leaf.shape))
               for path, leaf in traverse_util.flatten_dict(abstract).items())


def state_dict_to_variables(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
  """Maps a pytorch-fid FID-Inception state dict (name -> array) to Flax variables.

  Raises ValueError naming any missing or unknown tensor or any shape mismatch.
  """
  expected = expected_variable_shapes()
  flat = {}
  for key, tensor in state_dict.items():
    if key.endswith(_IGNORED_SUFFIXES):
      continue
    path, conversion = _flax_path(key)
    if path not in expected:
      raise ValueError(f"inception weights: tensor {key!r} has no place in the FID "
                       f"InceptionV3 (no variable {'/'.join(path)})")
    value = _torch_to_flax(np.asarray(tensor, dtype=np.float32), conversion)
    if value.shape != expected[path]:
      raise ValueError(f"inception weights: tensor {key!r} has shape "
                       f"{np.shape(tensor)}, which gives {value.shape} in Flax layout; "
                       f"expected {expected[path]} for {'/'.join(path)}")
    flat[path] = jnp.asarray(value)
  missing = sorted("/".join(p) for p in expected.keys() - flat.keys())
  if missing:
    raise ValueError(f"inception weights: {len(missing)} variables missing from the state "
                     f"dict, e.g. {missing[:3]}")
  return traverse_util.unflatten_dict(flat)


def load_inception_variables(path: str) -> dict[str, Any]:
  """Loads FID Inception weights from an .npz of the PyTorch state dict (see module doc)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"inception weights: no file at {path!r}; convert pt_inception-2015-12-05-*.pth "
        f"to .npz as described in jaxdiff.evaluation.inception")
  with np.load(path) as data:
    return state_dict_to_variables({key: data[key] for key in data.files})


@jax.jit
def inception_apply(variables: dict[str, Any], images: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
  """`images [B, H, W, 1|3] in [-1, 1] -> (pool [B, 2048], logits [B, 1008])`, jitted."""
  return InceptionV3().apply(variables, preprocess(images))


def inception_outputs(variables: dict[str, Any], images: np.ndarray, *, batch_size: int = 100,
                      mesh: Optional[Mesh] = None) -> tuple[np.ndarray, np.ndarray]:
  """(pool features [N, 2048], logits [N, 1008]) of images [N, H, W, 1|3] in [-1, 1],
  evaluated in batches sharded over `mesh` (default: all devices)."""
  return map_batches(lambda batch, _: inception_apply(variables, batch), images,
                     batch_size=batch_size, mesh=mesh)
