"""train.py and sample.py on image-to-image runs: super-resolution of the digits (4x4 ->
8x8, with noise-conditioning augmentation), a cascade after a 4x4 base run, ILVR, and the
command-line errors. The workdirs are 2-step runs of tiny U-Nets written by the training
job, as `python train.py` leaves them."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

from jaxdiff import images, resampling
from jaxdiff.config import schema
from jaxdiff.evaluation import datasets
from jaxdiff.job import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_sample_module():
  spec = importlib.util.spec_from_file_location("sample_cli_conditional", ROOT / "sample.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


sample = _load_sample_module()


def _tiny(image_size=8):
  config = schema.load_config_file(ROOT / "configs" / "digits.py")
  config.model.update(base_channels=8, channel_mult=(1,), attention_resolutions=(),
                      num_groups=4)
  config.data.image_size = image_size
  config.train.update(num_steps=2, batch_size=8, checkpoint_every=2, warmup_steps=1,
                      async_checkpointing=False)
  config.sample.update(num_samples=4, num_steps=2, sampler="ddim")
  return config


@pytest.fixture(scope="module")
def sr_workdir(tmp_path_factory):
  config = _tiny()
  config.model.update(condition_channels=1, aug_level_embedding=True)
  config.data.task.update(name="super_resolution", factor=2, augment_max=0.3,
                          condition_dropout=0.1)
  path = tmp_path_factory.mktemp("sr")
  trainer.train(config, workdir=path)
  return str(path)


@pytest.fixture(scope="module")
def base_workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("base4")
  trainer.train(_tiny(image_size=4), workdir=path)
  return str(path)


def _run(argv, capsys):
  code = sample.main(argv)
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_sample_takes_test_conditions_and_writes_inputs_outputs_references(sr_workdir, tmp_path,
                                                                         capsys):
  code, _, err = _run(["--workdir", sr_workdir, "--num_samples", "3", "--out", str(tmp_path),
                       "--name", "sr", "--aug_level", "0.1"], capsys)
  assert code == 0, err
  with np.load(tmp_path / "sr.npz") as data:
    outputs, inputs, references = data["images"], data["inputs"], data["references"]
  assert outputs.shape == (3, 8, 8, 1) and inputs.shape == (3, 4, 4, 1)
  config = schema.load_config_file(ROOT / "configs" / "digits.py")
  test, _ = datasets.load_images(config.data, split="test", max_examples=3)
  np.testing.assert_array_equal(references, images.to_uint8(test))
  np.testing.assert_array_equal(inputs, images.to_uint8(resampling.area_downsample(test, 2)))
  grid = np.asarray(images.load_png(str(tmp_path / "sr.png"), channels=1))
  assert grid.shape[1] > 2 * grid.shape[0]  # one row of input | output | reference per sample


def test_condition_files_and_their_errors(sr_workdir, tmp_path, capsys):
  good = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 1), dtype=np.uint8)
  np.savez(tmp_path / "good.npz", conditions=good)
  code, _, err = _run(["--workdir", sr_workdir, "--condition", str(tmp_path / "good.npz"),
                       "--num_samples", "4", "--out", str(tmp_path), "--name", "c"], capsys)
  assert code == 0, err
  with np.load(tmp_path / "c.npz") as data:
    np.testing.assert_array_equal(data["inputs"], np.concatenate([good, good]))  # cycled
    assert "references" not in data
  np.savez(tmp_path / "big.npz", conditions=np.zeros((2, 8, 8, 1), np.uint8))
  images.save_png(str(tmp_path / "rgb.png"), np.zeros((4, 4, 3), np.uint8))
  np.savez(tmp_path / "rgb.npz", images=np.zeros((1, 4, 4, 3), np.uint8))
  for path in ("big.npz", "rgb.npz"):
    code, _, err = _run(["--workdir", sr_workdir, "--condition", str(tmp_path / path)], capsys)
    assert code == 2 and "expects 4x4x1" in err and err.count("\n") == 1, err


def test_cascade_runs_end_to_end_and_refuses_a_broken_chain(base_workdir, sr_workdir, tmp_path,
                                                            capsys):
  code, _, err = _run(["--workdir", base_workdir, "--cascade", sr_workdir, "--num_samples",
                       "3", "--aug_level", "0.2", "--out", str(tmp_path), "--name", "cas"],
                      capsys)
  assert code == 0, err
  with np.load(tmp_path / "cas.npz") as data:
    assert data["images"].shape == (3, 8, 8, 1) and data["inputs"].shape == (3, 4, 4, 1)
  code, _, err = _run(["--workdir", sr_workdir, "--cascade", sr_workdir], capsys)
  assert code == 2 and "do not chain" in err and err.count("\n") == 1, err


def test_ilvr_from_the_command_line_inherits_the_reference(base_workdir, tmp_path, capsys):
  """With N = 1 the low-pass filter is the identity: ILVR's last replacement makes the output
  the reference itself, whatever the (untrained) model, up to uint8 rounding. (Block means at
  N > 1 are checked in floats in test_conditional.py; a 2-step tiny model's high-pass content
  saturates the uint8 output, which would hide them here.)"""
  reference = np.random.default_rng(1).integers(96, 160, (4, 4, 1), dtype=np.uint8)
  images.save_png(str(tmp_path / "ref.png"), reference)
  code, _, err = _run(["--workdir", base_workdir, "--reference", str(tmp_path / "ref.png"),
                       "--ilvr_factor", "1", "--num_samples", "3", "--out", str(tmp_path),
                       "--name", "ilvr"], capsys)
  assert code == 0, err
  with np.load(tmp_path / "ilvr.npz") as data:
    out = data["images"].astype(np.int64)
  np.testing.assert_array_less(np.abs(out - reference.astype(np.int64)), 2)


@pytest.mark.parametrize("extra,message", [
    (["--aug_level", "0.1"], "needs a model trained with noise-conditioning augmentation"),
    (["--condition", "x.png"], "needs an image-to-image run"),
    (["--reference", "x.png"], "needs both --reference"),
])
def test_conditioning_flags_on_an_unconditional_run_are_refused(base_workdir, extra, message,
                                                                capsys):
  code, _, err = _run(["--workdir", base_workdir] + extra, capsys)
  assert code == 2 and message in err and err.count("\n") == 1, err
