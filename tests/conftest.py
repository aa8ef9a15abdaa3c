"""Shared pytest fixtures."""

import contextlib
import os

import jax
import pytest

import train_runs
from jaxdiff.job import runtime


def pytest_configure(config):
  """The persistent compilation cache for the whole suite (as train.py and sample.py use
  it): a second run of the suite loads its compiled programs instead of compiling them, and
  the xdist workers share one directory ($JAXDIFF_COMPILATION_CACHE, "off" to disable)."""
  del config
  runtime.setup()


@contextlib.contextmanager
def _x64_enabled():
  """Enables float64 for the duration of a test, restoring the old setting after."""
  if hasattr(jax, "enable_x64"):
    with jax.enable_x64(True):
      yield
  else:
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
      yield
    finally:
      jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def x64():
  """Runs the test with jax_enable_x64 on."""
  with _x64_enabled():
    yield


@pytest.fixture(scope="session")
def env(tmp_path_factory):
  """The environment of train.py subprocesses: CPU, the suite's persistent compilation
  cache (so only the first run compiles) and a TFDS data_dir."""
  data_dir = tmp_path_factory.mktemp("tfds")
  return dict(os.environ, JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(data_dir), XLA_FLAGS="",
              JAXDIFF_COMPILATION_CACHE=jax.config.jax_compilation_cache_dir or "off")


@pytest.fixture(scope="session")
def straight_run(env, tmp_path_factory):
  """`train_runs.NUM_STEPS` steps of the tiny run without interruption: (workdir, output)."""
  workdir = tmp_path_factory.mktemp("straight")
  out = train_runs.train(env, workdir)
  return workdir, out
