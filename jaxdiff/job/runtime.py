"""Process-wide JAX settings of the entry points: the persistent compilation cache.

`setup` is called once by train.py, sample.py, `python -m jaxdiff.evaluate`, the
benchmarks and the test suite, before they compile anything; `import jaxdiff` changes no
global state. (No XLA flags are set: none of the XLA:CPU flags measured for issue 13 made
the U-Net faster on jaxlib 0.10 or 0.12; benchmarks/RESULTS.md. XLA_FLAGS is the user's.)

With the cache on, XLA's compiled programs are written to disk and a second
run on the same machine loads them instead of compiling again (JAX's persistent
compilation cache, keyed by the program, the jax / jaxlib version, the XLA flags and the
devices).

The directory, in order of precedence: the `compilation_cache` argument (the entry points'
`--compilation_cache` flag), the JAXDIFF_COMPILATION_CACHE environment variable, JAX's own
JAX_COMPILATION_CACHE_DIR, else `<cache root>/xla/<host>`, where the cache root is
$JAXDIFF_CACHE, else $XDG_CACHE_HOME/jaxdiff, else ~/.cache/jaxdiff, and <host> names this
machine's CPU (compiled CPU code is specific to the CPU's instruction set, so hosts that
share a home directory keep separate caches). "off" (or "none", "0", "false") disables it.
A directory that cannot be created or written turns the cache off with a one-line warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import tempfile

import jax

CACHE_ENV = "JAXDIFF_COMPILATION_CACHE"
OFF_VALUES = ("off", "none", "0", "false")
# Every compiled program is cached, not only those that took over a second (JAX's default):
# the many small programs of a run (initialization, data, metrics) add up to seconds.
MIN_COMPILE_TIME_SECS = 0.0

logger = logging.getLogger(__name__)


def cache_root() -> str:
  """jaxdiff's cache folder: $JAXDIFF_CACHE, else $XDG_CACHE_HOME/jaxdiff, else ~/.cache/jaxdiff."""
  if os.environ.get("JAXDIFF_CACHE"):
    return os.environ["JAXDIFF_CACHE"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxdiff")


def host_tag() -> str:
  """A short name of this machine's CPU: its architecture and a hash of its model and
  instruction-set flags (from /proc/cpuinfo where there is one)."""
  description = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
    description = "".join(sorted(set(lines)))
  except OSError:
    pass
  digest = hashlib.sha256(description.encode()).hexdigest()[:12]
  return f"{platform.machine() or 'cpu'}-{digest}"


def default_cache_dir() -> str:
  """The compilation cache of this machine: ``<cache root>/xla/<host tag>``."""
  return os.path.join(cache_root(), "xla", host_tag())


def requested_cache_dir(compilation_cache: str | None, *, jax_setting: str | None) -> str | None:
  """The directory asked for, or None for "off": `compilation_cache` if given, else
  $JAXDIFF_COMPILATION_CACHE, else `jax_setting` (JAX's jax_compilation_cache_dir), else
  `default_cache_dir()`."""
  for value in (compilation_cache, os.environ.get(CACHE_ENV)):
    if value:
      return None if value.lower() in OFF_VALUES else os.path.expanduser(value)
  return jax_setting or default_cache_dir()


def _writable(directory: str) -> str | None:
  """None if ``directory`` exists (created if needed) and takes a new file, else why not."""
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    return f"{type(e).__name__}: {e.strerror or e}"
  return None


def setup(*, compilation_cache: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache; returns its directory (None when off).

  Call before anything is compiled. `compilation_cache` is a directory or "off"; None
  means JAXDIFF_COMPILATION_CACHE, JAX_COMPILATION_CACHE_DIR or the default (module
  docstring). A JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS in the environment is kept.
  """
  directory = requested_cache_dir(compilation_cache,
                                  jax_setting=jax.config.jax_compilation_cache_dir)
  if directory is not None:
    problem = _writable(directory)
    if problem is not None:
      logger.warning("jaxdiff: compilation cache off: cannot write to %s (%s)", directory,
                     problem)
      directory = None
  if directory is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", directory)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
  return directory
