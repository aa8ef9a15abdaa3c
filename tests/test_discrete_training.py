"""The discrete objectives through the training job, sample.py and `python -m jaxdiff.evaluate`:
2-step runs of configs/digits_d3pm.py (absorbing kernel) and configs/words_masked.py (masked
diffusion, on a small word list) with tiny networks."""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

from jaxdiff import evaluate
from jaxdiff.config import schema
from jaxdiff.data import words
from jaxdiff.discrete import levels
from jaxdiff.job import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("sample_cli_discrete", ROOT / "sample.py")
sample = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = sample
spec.loader.exec_module(sample)

pytestmark = pytest.mark.slow


def _tiny(name, **diffusion):
  config = schema.load_config_file(ROOT / "configs" / name)
  if config.model.name == "transformer":
    config.model.update(hidden_size=32, depth=1, num_heads=2)
  else:
    config.model.update(base_channels=8, channel_mult=(1,), attention_resolutions=(),
                        num_groups=4)
  config.diffusion.update(num_timesteps=8, **diffusion)
  config.train.update(num_steps=2, batch_size=8, checkpoint_every=2, warmup_steps=1,
                      async_checkpointing=False)
  config.sample.update(num_samples=4, num_steps=3 if config.sample.sampler == "unmask" else None)
  return config


@pytest.fixture(scope="module")
def word_list(tmp_path_factory):
  """300 words of 1..4 letters in which every letter occurs."""
  rng = np.random.default_rng(0)
  vocabulary = {"".join(rng.choice(list(words.ALPHABET), size=rng.integers(1, 5)))
                for _ in range(300)} | set(words.ALPHABET)
  path = tmp_path_factory.mktemp("dict") / "words"
  path.write_text("\n".join(sorted(vocabulary)) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, word_list):
  out = {}
  for key, name, diffusion in (("d3pm", "digits_d3pm.py", dict(kernel="absorbing",
                                                               kernel_schedule="jsd")),
                               ("words", "words_masked.py", {})):
    config = _tiny(name, **diffusion)
    if key == "words":
      config.data.update(word_list=word_list, image_size=2)
    out[key] = tmp_path_factory.mktemp(key)
    trainer.train(config, workdir=out[key])
  return out


def _main(tool, argv, capsys):
  assert tool.main(argv) == 0, capsys.readouterr().err
  return capsys.readouterr().out


def test_sample_writes_images_of_the_categories_and_evaluate_scores_them(runs, capsys, tmp_path):
  _main(sample, ["--workdir", str(runs["d3pm"]), "--num_samples", "6", "--out", str(tmp_path),
                 "--name", "s"], capsys)
  with np.load(tmp_path / "s.npz") as f:
    images = f["images"]
  assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8
  assert set(np.unique(images)) <= set(levels.uint8_levels(17))
  assert (tmp_path / "s.png").exists()
  out = _main(evaluate, ["--workdir", str(runs["d3pm"]), "--metrics", "bpd", "--bpd_examples", "4",
                         "--out", str(tmp_path / "e.json")], capsys)
  result = json.loads(out.strip().splitlines()[-1])
  assert np.isfinite(result["bpd"]) and 0 < result["bpd"] < 20


def test_words_run_writes_text_and_scores_words(runs, word_list, capsys, tmp_path):
  _main(sample, ["--workdir", str(runs["words"]), "--num_samples", "5", "--out", str(tmp_path),
                 "--name", "w"], capsys)
  lines = (tmp_path / "w.txt").read_text().splitlines()
  assert len(lines) == 5 and all(len(line) in range(1, 5) for line in lines)
  assert all(set(line) <= set(words.ALPHABET + ".") for line in lines)
  out = _main(evaluate, ["--workdir", str(runs["words"]), "--metrics", "words,bpd",
                         "--num_samples", "8", "--bpd_examples", "4", "--bpd_split", "train",
                         "--out", str(tmp_path / "e.json")], capsys)
  result = json.loads(out.strip().splitlines()[-1])
  assert np.isfinite(result["bpd"]) and result["bpd_prior"] == 0.0
  for key in ("words_in_list", "words_well_formed", "words_unigram_in_list",
              "words_bigram_in_list"):
    assert 0.0 <= result[key] <= 1.0


def test_a_gaussian_sampler_on_a_discrete_run_is_a_one_line_error(runs, capsys):
  assert sample.main(["--workdir", str(runs["d3pm"]), "--sampler", "ddim"]) == 2
  assert capsys.readouterr().err.strip() == (
      "sample.py: error: --sampler ddim: the 'd3pm' objective samples with 'd3pm', not 'ddim'")


def test_categories_that_do_not_match_the_data_stop_training_before_compiling(tmp_path):
  config = _tiny("digits_d3pm.py", num_categories=16)
  config.model.out_channels = 16
  with pytest.raises(ValueError, match="num_categories=16 does not match dataset "
                                       "'sklearn_digits'"):
    trainer.train(config, workdir=tmp_path)
  assert not (tmp_path / "checkpoints").exists()
