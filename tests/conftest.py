"""Shared pytest fixtures."""

import contextlib

import jax
import pytest

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
