"""Shared plumbing of the command-line tools (`sample.py`, `python -m jaxdiff.evaluate`).

User errors are raised as :class:`CliError` and printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
from typing import Any

import ml_collections

from jaxdiff import parallel
from jaxdiff.job import checkpoints


class CliError(Exception):
  """A user error, reported as one line."""


class OneLineParser(argparse.ArgumentParser):
  """An argument parser whose errors are a :class:`CliError` instead of usage + exit."""

  def error(self, message: str) -> None:  # type: ignore[override]
    raise CliError(message)


def load_run(workdir: str, *, step: int | None, mesh: Any) -> tuple[ml_collections.ConfigDict, Any]:
  """The run's config and its (newest or given) checkpoint, replicated over ``mesh``.

  Raises:
    CliError: if the workdir has no config or checkpoint, or none that can be read.
  """
  try:
    return checkpoints.load_workdir(workdir, step=step, sharding=parallel.replicated(mesh))
  except (FileNotFoundError, RuntimeError) as e:
    raise CliError(str(e)) from None
