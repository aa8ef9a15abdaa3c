"""Trains a diffusion model: `python train.py [--config configs/NAME.py] [--workdir DIR]`.

Any config field can be overridden once, e.g. `--config.train.batch_size=256`. Training
resumes from the newest good checkpoint in --workdir (default runs/<config name>) when the
config has not changed in a way that changes what the checkpoint means
(`jaxdiff.config.validation.RESUME_SAFE_FIELDS` may change; --allow_config_change accepts
other changes). For a multi-process launch without cluster auto-detection pass
--coordinator_address, --num_processes and --process_id to every process (TPU pods and
SLURM are detected with --distributed).

Exit status: 0 trained to config.train.num_steps; 1 a failed run (a non-finite step, or an
unexpected error with its traceback); 2 a usage or config error, a config that does not fit
the workdir's checkpoints or data, or a workdir in use by another job (one line on
stderr, nothing computed or written); 143 (--preemption_exit_status) saved and stopped
after SIGTERM, so that schedulers requeue the job.
"""

import difflib
import logging as pylogging
import os
import re
import sys
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from jaxdiff.config import schema, validation
from jaxdiff.job import distributed, runtime, workdir_lock

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                               "digits.py")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output directory (default: runs/<config file name>).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume the workdir's checkpoints even though the config changed beyond the safe "
    "fields (shapes must still fit).")
_PREEMPTION_EXIT_STATUS = flags.DEFINE_integer(
    "preemption_exit_status", 143, "Exit status after saving on SIGTERM (128 + 15).",
    lower_bound=0, upper_bound=255)
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (auto-detected cluster).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for a manual multi-process launch.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a manual launch.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id in a manual launch.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None,
    "Persistent compilation cache directory, or 'off' (default: $JAXDIFF_COMPILATION_CACHE, "
    "else ~/.cache/jaxdiff/xla/<host>; see jaxdiff/job/runtime.py).")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")
_CONFIG = re.compile(r"^--?config(?:=(.*))?$")


class _UsageError(Exception):
  """A command-line error, printed as one line (exit status 2)."""


def _fail(message: str, status: int) -> None:
  print(f"train.py: error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(status)


def _config_file(argv: list[str]) -> str:
  """The --config file named in argv (default configs/digits.py), which must exist."""
  path = _DEFAULT_CONFIG
  for index, arg in enumerate(argv):
    match = _CONFIG.match(arg)
    if match:
      value = match.group(1)
      path = value if value is not None else (argv[index + 1] if index + 1 < len(argv)
                                              else "")
  if not os.path.isfile(path.split(":")[0]):
    raise _UsageError(f"--config {path!r}: no such config file.")
  return path


def _unknown_field(config: Any, path: str) -> str | None:
  """Why `config` has no field `path` ("section.field"), with a close match; or None."""
  node = config
  keys = path.split(".")
  for depth, key in enumerate(keys):
    if not hasattr(node, "keys") or key not in node:
      known = list(node.keys()) if hasattr(node, "keys") else []
      prefix = ".".join(["config", *keys[:depth]])
      hint = difflib.get_close_matches(key, known, n=1)
      return f"{prefix} has no field {key!r}" + (f"; did you mean {prefix}.{hint[0]}?"
                                                  if hint else ".")
    node = node[key]
  return None


def _check_overrides(argv: list[str]) -> None:
  """Each --config.FIELD at most once, and naming a field of the schema (of any model)."""
  seen = set()
  for arg in argv:
    match = _OVERRIDE.match(arg)
    if not match:
      continue
    path = match.group(1)
    if path in seen:
      raise _UsageError(f"--config.{path} is given twice; give each override once.")
    seen.add(path)
    reasons = [_unknown_field(schema.base_config(model=name), path)
               for name in schema.MODEL_NAMES]
    if all(reasons):
      raise _UsageError(f"--config.{path}: {reasons[0]}")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with the config file, where every error is one line (exit 2)."""
  path = _DEFAULT_CONFIG
  try:
    path = _config_file(argv)
    _check_overrides(argv)
    config_flag = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                                  "ml_collections config file.",
                                                  lock_config=True)
    remaining = flags.FLAGS(argv)
    config_flag.value.get("train")  # Raises what loading the config file raised.
  except (_UsageError, flags.Error) as e:
    lines = str(e).strip().splitlines()
    if "Traceback (most recent call last)" in str(e):  # Raised inside the config file.
      _fail(f"config file {path}: {lines[-1].strip()}", 2)
    _fail(str(e), 2)
  except Exception as e:  # pylint: disable=broad-except  (a config file raises anything)
    _fail(f"config file {path}: {type(e).__name__}: {e}", 2)
  return remaining


class _DropOpenCvNotice(pylogging.Filter):
  """TFDS's advice to install OpenCV for faster image decoding, which the digits and other
  small images do not need, would be the first stderr line of every run."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return "OpenCV is not installed" not in record.getMessage()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}", 2)
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO.
  logging.get_absl_logger().addFilter(_DropOpenCvNotice())
  runtime.setup(compilation_cache=_COMPILATION_CACHE.value)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    distributed.initialize_distributed(coordinator_address=_COORDINATOR.value,
                                       num_processes=_NUM_PROCESSES.value,
                                       process_id=_PROCESS_ID.value)
  from jaxdiff.job import trainer  # pylint: disable=g-import-not-at-top  (after initialize)

  config_name = os.path.splitext(os.path.basename(config_flags.get_config_filename(
      flags.FLAGS["config"])))[0]
  workdir = _WORKDIR.value or os.path.join("runs", config_name)
  try:
    trainer.train(flags.FLAGS.config, workdir=workdir,
                  allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except (validation.ConfigError, workdir_lock.WorkdirBusy) as e:
    _fail(str(e), 2)
  except FloatingPointError as e:
    _fail(f"FloatingPointError: {e}", 1)
  except trainer.Preempted as e:
    print(e, flush=True)
    sys.exit(_PREEMPTION_EXIT_STATUS.value)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
