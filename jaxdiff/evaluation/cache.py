"""Atomic writes of evaluation cache files (reference statistics, the feature classifier).

A cache file is written to a temporary file in its folder and renamed over the target,
so a crash, a kill or a full disk leaves the old file or none, never a truncated one.
"""

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
  """Calls `write(file)` on a temporary file beside `path`, then renames it to `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, partial = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                                 suffix=".partial")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(partial, path)
  except BaseException:
    os.unlink(partial)
    raise
