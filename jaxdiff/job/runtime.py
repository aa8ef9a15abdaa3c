"""Process-wide JAX settings of the entry points: the persistent compilation cache and
XLA:CPU flags.

`setup` is called once by train.py, sample.py, `python -m jaxdiff.evaluate`, the
benchmarks and the test suite, before they compile anything; `import jaxdiff` changes no
global state.

XLA:CPU flags: `CPU_FLAGS` (measured in benchmarks/RESULTS.md) are added to XLA_FLAGS,
except those whose flag a user's XLA_FLAGS already sets, which win. XLA reads XLA_FLAGS
when jax first initializes its backend, so `setup` must run before that. A flag that the
installed jaxlib does not know aborts the process, so only the jaxlib versions the flags
were checked on get them.

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
import importlib.metadata
import logging
import os
import platform
import re
import tempfile
from collections.abc import Sequence

import jax

CACHE_ENV = "JAXDIFF_COMPILATION_CACHE"
OFF_VALUES = ("off", "none", "0", "false")
# Every compiled program is cached, not only those that took over a second (JAX's default):
# the many small programs of a run (initialization, data, metrics) add up to seconds.
MIN_COMPILE_TIME_SECS = 0.0

# XLA:CPU flags by jaxlib (major, minor) version; see benchmarks/RESULTS.md for the numbers.
CPU_FLAGS: dict[tuple[int, int], tuple[str, ...]] = {}

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


def default_cpu_flags(jaxlib_version: str | None = None) -> tuple[str, ...]:
  """`CPU_FLAGS` for a jaxlib version ("0.12.0.1"; default: the installed one): those of
  its (major, minor), else none."""
  if jaxlib_version is None:
    jaxlib_version = _installed_jaxlib_version()
  match = re.match(r"(\d+)\.(\d+)", jaxlib_version)
  if match is None:
    return ()
  return CPU_FLAGS.get((int(match.group(1)), int(match.group(2))), ())


def merge_xla_flags(user_flags: str, defaults: Sequence[str]) -> str:
  """`user_flags` (an XLA_FLAGS value) plus each of `defaults` ("--name=value") whose name
  `user_flags` does not set."""
  given = {flag.split("=", 1)[0] for flag in user_flags.split()}
  added = [flag for flag in defaults if flag.split("=", 1)[0] not in given]
  return " ".join([*user_flags.split(), *added])


def _installed_jaxlib_version() -> str:
  """The installed jaxlib's version, without importing it."""
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""


def setup(*, compilation_cache: str | None = None, cpu_defaults: bool = True) -> str | None:
  """Adds the default XLA:CPU flags and turns on JAX's persistent compilation cache;
  returns the cache's directory (None when off).

  Call before jax initializes its backend (the first array or compilation).
  `compilation_cache` is a directory or "off"; None means JAXDIFF_COMPILATION_CACHE,
  JAX_COMPILATION_CACHE_DIR or the default (module docstring). A
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS in the environment is kept. `cpu_defaults`
  False leaves XLA_FLAGS as it is.
  """
  if cpu_defaults:
    flags = merge_xla_flags(os.environ.get("XLA_FLAGS", ""), default_cpu_flags())
    if flags:
      os.environ["XLA_FLAGS"] = flags
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
