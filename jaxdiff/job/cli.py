"""Shared plumbing of the command-line tools (`sample.py`, `python -m jaxdiff.evaluate`).

User errors are raised as :class:`CliError` and printed as one line, without a traceback.
Output destinations are checked before any compute (`check_output_dir`,
`check_output_file`), so that an unwritable place fails at once, not after the work.
"""

from __future__ import annotations

import argparse
import os
import tempfile
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
  except (FileNotFoundError, RuntimeError, checkpoints.CheckpointMismatch) as e:
    raise CliError(str(e)) from None


def unwritable_reason(directory: str | os.PathLike) -> str | None:
  """Why files cannot be written into `directory` (created when missing), or None.

  Creates and removes a temporary file there: the one test that file modes, read-only
  mounts, full quotas and running as root all answer truthfully.
  """
  directory = os.fspath(directory)
  if "://" in directory:
    return None  # An object store: nothing to probe without writing an object.
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test_"):
      pass
  except OSError as e:
    return f"{type(e).__name__}: {e.strerror or e}"
  return None


def check_output_dir(directory: str | os.PathLike, *, flag: str) -> None:
  """Raises CliError naming `flag` when files cannot be written into `directory`."""
  reason = unwritable_reason(directory)
  if reason:
    raise CliError(f"{flag} {os.fspath(directory)!r} is not writable ({reason})")


def check_output_file(path: str | os.PathLike, *, flag: str) -> None:
  """Raises CliError naming `flag` when the file `path` cannot be written (its folder is
  not writable, or it is a folder)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise CliError(f"{flag} {path!r} is a directory; expected a file path")
  if os.path.exists(path) and not os.access(path, os.W_OK):
    raise CliError(f"{flag} {path!r} is not writable (a read-only file)")
  check_output_dir(os.path.dirname(os.path.abspath(path)), flag=flag)
