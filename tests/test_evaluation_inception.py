"""The Flax FID InceptionV3: layout of pytorch-fid's state dict, weight loading, outputs.

The reference numbers below were produced once with pytorch-fid 0.3.0 / torchvision 0.29
(torch 2.14, CPU): its `fid_inception_v3` network (FIDInceptionA/C/E_1/E_2 patched into
torchvision's InceptionV3, 1008 classes, no aux head) loaded with `_random_state_dict()`
below, fed `_test_images()` the way pytorch-fid does (bilinear resize to 299 with
align_corners=False, then 2x - 1 on [0, 1] input), reading the final average pool and fc.
"""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.evaluation import inception

# pytorch-fid's FID Inception state dict: 566 entries, 94 of them BN num_batches_tracked.
_NUM_TENSORS = 472
_NUM_VALUES = 23_885_392
_TORCH_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_2.conv.weight": (192, 192, 7, 1),
    "Mixed_7c.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.running_var": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
# pytorch-fid outputs at pool[:, ::256] and logits[:, ::144], and the rows' L2 norms.
_REF_POOL = np.array([
    [1.0376778, 0.5008602, 7.7827044, 5.2983794, 16.185884, 2.4526284, 0.10445053, 4.2443347],
    [1.2966127, 0.57813334, 7.6086397, 5.007618, 16.41104, 2.4110024, 0.12282696, 4.2311354]])
_REF_LOGITS = np.array([
    [1.7777936, -1.97826, -2.875553, 5.616185, 6.2900286, -3.458314, -2.0293655],
    [1.5721514, -2.068784, -2.4467804, 5.795553, 6.1265993, -3.4544034, -2.204267]])
_REF_POOL_NORM = np.array([290.04333, 293.03473])
_REF_LOGITS_NORM = np.array([202.07396, 204.3477])


def _torch_name_and_shape(path: tuple[str, ...], shape: tuple[int, ...]
                          ) -> tuple[str, tuple[int, ...]]:
  """Inverse of the loader's mapping, written independently: Flax path -> PyTorch entry."""
  collection, *modules, leaf = path
  torch_leaf = {("params", "kernel"): "weight", ("params", "scale"): "weight",
                ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
                ("batch_stats", "var"): "running_var"}[(collection, leaf)]
  if leaf == "kernel":
    shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
  return ".".join(modules + [torch_leaf]), shape


def _torch_shapes() -> dict[str, tuple[int, ...]]:
  return dict(_torch_name_and_shape(p, s) for p, s in inception.expected_variable_shapes().items())


def _random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
  """He-scaled convs, BN statistics near identity: activations stay O(1) through the net."""
  rng = np.random.default_rng(seed)
  out = {}
  for name in sorted(shapes):
    shape = tuple(shapes[name])
    if name.endswith("conv.weight"):
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif name.endswith("fc.weight"):
      value = rng.standard_normal(shape) * np.sqrt(1.0 / shape[1])
    elif name.endswith(("bn.weight", "running_var")):
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.normal(0.0, 0.1, shape)
    out[name] = value.astype(np.float32)
  return out


def _test_images() -> np.ndarray:
  return np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)


def test_parameter_layout_matches_pytorch_fid():
  shapes = _torch_shapes()
  assert len(shapes) == _NUM_TENSORS
  assert sum(int(np.prod(s)) for s in shapes.values()) == _NUM_VALUES
  for name, shape in _TORCH_SHAPES.items():
    assert shapes[name] == shape, name


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  state = _random_state_dict(_torch_shapes())
  # A real pytorch-fid state dict also holds BN counters, which the loader skips.
  state["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0, np.int64)
  path = tmp_path_factory.mktemp("inception") / "pt_inception.npz"
  np.savez(path, **state)
  return str(path), state


def test_weights_round_trip_into_flax_layout(weights_file):
  path, state = weights_file
  variables = inception.load_inception_variables(path)
  conv = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  chex.assert_shape(conv, (1, 7, 128, 128))  # HWIO of torch's OIHW (128, 128, 1, 7)
  np.testing.assert_array_equal(
      conv, state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].T)
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                state["Mixed_7c.branch_pool.bn.running_var"])
  np.testing.assert_array_equal(variables["params"]["Conv2d_2a_3x3"]["bn"]["scale"],
                                state["Conv2d_2a_3x3.bn.weight"])


def test_outputs_match_pytorch_fid(weights_file):
  variables = inception.load_inception_variables(weights_file[0])
  pool, logits = inception.inception_outputs(variables, _test_images(), batch_size=2)
  chex.assert_shape(pool, (2, inception.POOL_FEATURES))
  chex.assert_shape(logits, (2, inception.NUM_LOGITS))
  # float32 through ~100 layers with O(300) activations: agreement was 2.5e-5 absolute.
  np.testing.assert_allclose(pool[:, ::256], _REF_POOL, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits[:, ::144], _REF_LOGITS, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(pool, axis=1), _REF_POOL_NORM, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(logits, axis=1), _REF_LOGITS_NORM, rtol=1e-5)


def test_preprocess_tiles_gray_and_resizes():
  gray = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (3, 16, 16, 1)), jnp.float32)
  out = inception.preprocess(gray)
  chex.assert_shape(out, (3, 299, 299, 3))
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  # Half-pixel-centre bilinear: output corner pixels equal the input corners.
  np.testing.assert_allclose(out[:, 0, 0, 0], gray[:, 0, 0, 0], rtol=1e-6)
  with pytest.raises(ValueError, match=r"expected images \[B, H, W, 1\|3\]"):
    inception.preprocess(jnp.zeros((1, 8, 8, 2)))


def test_loader_names_bad_weights():
  state = _random_state_dict({"fc.bias": (1008,)})
  with pytest.raises(ValueError, match="variables missing"):
    inception.state_dict_to_variables(state)
  full = {name: np.zeros(shape, np.float32) for name, shape in _torch_shapes().items()}
  with pytest.raises(ValueError, match=r"'fc.weight' has shape \(1000, 2048\)"):
    inception.state_dict_to_variables({**full, "fc.weight": np.zeros((1000, 2048), np.float32)})
  with pytest.raises(ValueError, match="'AuxLogits.fc.weight' has no place"):
    inception.state_dict_to_variables({**full, "AuxLogits.fc.weight": np.zeros((1, 1))})
  with pytest.raises(FileNotFoundError, match="no file at"):
    inception.load_inception_variables("/nonexistent/pt_inception.npz")
