"""The README's API example runs as written and produces what it says."""

import pathlib
import re

import chex
import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert len(blocks) == 1, "the README should hold exactly one Python example"
  namespace: dict = {}
  exec(compile(blocks[0], str(README), "exec"), namespace)  # pylint: disable=exec-used
  chex.assert_shape(namespace["x_t"], (8, 16, 16, 3))
  chex.assert_shape(namespace["loss"], (8,))
  chex.assert_shape(namespace["images"], (4, 16, 16, 3))
  chex.assert_shape(namespace["fast"], (4, 16, 16, 3))
  # A freshly initialised U-Net outputs zeros (zero-initialised last layer), so the
  # eps-MSE of the example equals the mean squared noise: about 1 per example.
  assert np.all(np.abs(np.asarray(namespace["loss"]) - 1.0) < 0.5)
  assert np.isfinite(np.asarray(namespace["images"])).all()
  assert np.isfinite(np.asarray(namespace["fast"])).all()


def test_readme_commands_match_ci():
  text = README.read_text()
  ci = (README.parent / ".ci" / "run").read_text()
  assert ".venv/bin/python -m pytest -n 2 -q" in text
  assert ".venv/bin/python -m pytest -n 2 -q" in ci
  for config in re.findall(r"configs/\w+\.py", text):
    assert (README.parent / config).exists(), config
