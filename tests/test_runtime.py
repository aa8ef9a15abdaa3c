"""The entry points' runtime settings (jaxdiff.job.runtime): the persistent compilation cache.

Each cache test runs fresh Python processes (the cache is process-wide JAX state) and
counts JAX's compilation-cache monitoring events.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from jaxdiff.job import runtime

# Compiles one small program after runtime.setup; prints the cache directory, the result
# and the numbers of persistent-cache hits and misses (entries written) of the process.
_SCRIPT = """
import sys
import jax, jax.numpy as jnp
from jaxdiff.job import runtime
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
directory = runtime.setup(compilation_cache=sys.argv[1])
x = jnp.arange(12.0).reshape(3, 4)
y = jax.jit(lambda x: jnp.sin(x) @ x.T)(x)
print(directory, float(y.sum()), events.count("/jax/compilation_cache/cache_hits"),
      events.count("/jax/compilation_cache/cache_misses"))
"""


def _expected_sum() -> float:
  """The script's result in float64 NumPy."""
  x = np.arange(12.0).reshape(3, 4)
  return float((np.sin(x) @ x.T).sum())


def _assert_result(total: str) -> None:
  """The script's float32 result equals NumPy's up to float32 rounding."""
  assert float(total) == pytest.approx(_expected_sum(), rel=1e-5)


def _run(cache: str) -> tuple[list[str], str]:
  """Runs the script with `cache` as the argument; returns its printed fields and stderr."""
  env = {k: v for k, v in os.environ.items()
         if k not in (runtime.CACHE_ENV, "JAX_COMPILATION_CACHE_DIR")}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run([sys.executable, "-c", _SCRIPT, cache], env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout.split(), out.stderr


def test_second_run_loads_the_compiled_programs(tmp_path):
  cache = str(tmp_path / "xla")
  directory, total, hits, misses = _run(cache)[0]
  assert directory == cache
  _assert_result(total)
  assert int(hits) == 0 and int(misses) >= 2  # arange/reshape and the jitted function
  assert len(os.listdir(cache)) == int(misses)
  directory, total, hits, misses = _run(cache)[0]
  _assert_result(total)
  assert int(hits) >= 2 and int(misses) == 0  # Nothing compiled the second time.


def test_off_compiles_every_time(tmp_path):
  for _ in range(2):
    directory, total, hits, misses = _run("off")[0]
    assert directory == "None" and int(hits) == 0 and int(misses) == 0
    _assert_result(total)


def test_unwritable_directory_warns_once_and_runs(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  fields, stderr = _run(str(blocker / "xla"))  # Cannot be created: its parent is a file.
  directory, total, hits, misses = fields
  assert directory == "None" and int(hits) == 0 and int(misses) == 0
  _assert_result(total)
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1, stderr
  assert "compilation cache off: cannot write to" in lines[0]
  assert str(blocker / "xla") in lines[0] and "NotADirectoryError" in lines[0]


def test_corrupt_entries_only_warn_and_recompile(tmp_path):
  cache = tmp_path / "xla"
  _run(str(cache))
  entries = sorted(cache.iterdir())
  assert entries
  for entry in entries:
    entry.write_bytes(b"\x00garbage" * 7)
  (directory, total, hits, misses), stderr = _run(str(cache))
  assert directory == str(cache) and int(hits) == 0
  _assert_result(total)
  assert "Traceback" not in stderr
  assert "Error reading persistent compilation cache entry" in stderr


def test_cache_root_precedence(monkeypatch, tmp_path):
  monkeypatch.delenv("JAXDIFF_CACHE", raising=False)
  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert runtime.cache_root() == str(tmp_path / "home" / ".cache" / "jaxdiff")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert runtime.cache_root() == str(tmp_path / "xdg" / "jaxdiff")
  monkeypatch.setenv("JAXDIFF_CACHE", str(tmp_path / "mine"))
  assert runtime.cache_root() == str(tmp_path / "mine")
  assert runtime.default_cache_dir() == os.path.join(str(tmp_path / "mine"), "xla",
                                                     runtime.host_tag())


def test_requested_cache_dir_precedence(monkeypatch):
  monkeypatch.delenv(runtime.CACHE_ENV, raising=False)
  monkeypatch.setenv("JAXDIFF_CACHE", "/root_of_caches")
  default = runtime.default_cache_dir()
  assert runtime.requested_cache_dir(None, jax_setting=None) == default
  assert runtime.requested_cache_dir(None, jax_setting="/jax") == "/jax"
  monkeypatch.setenv(runtime.CACHE_ENV, "/env")
  assert runtime.requested_cache_dir(None, jax_setting="/jax") == "/env"
  assert runtime.requested_cache_dir("/flag", jax_setting="/jax") == "/flag"
  for off in ("off", "OFF", "none", "0", "false"):
    assert runtime.requested_cache_dir(off, jax_setting="/jax") is None
  monkeypatch.setenv(runtime.CACHE_ENV, "off")
  assert runtime.requested_cache_dir(None, jax_setting="/jax") is None
  assert runtime.requested_cache_dir("/flag", jax_setting=None) == "/flag"


def test_host_tag_is_stable_and_file_name_safe():
  tag = runtime.host_tag()
  assert tag == runtime.host_tag()
  assert tag.replace("-", "").replace("_", "").isalnum()


def test_importing_changes_no_global_state():
  script = ("import os, jax, jaxdiff, jaxdiff.job.runtime, jaxdiff.models, jaxdiff.job.step\n"
            "print(jax.config.jax_compilation_cache_dir, "
            "jax.config.jax_persistent_cache_min_compile_time_secs, "
            "os.environ.get('XLA_FLAGS', '<unset>'))")
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR",
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, timeout=300, check=True)
  assert out.stdout.split() == ["None", "1.0", "<unset>"]
