"""Trains a diffusion model: `python train.py [--config configs/NAME.py] [--workdir DIR]`.

Any config field can be overridden, e.g. `--config.train.batch_size=256`. Training resumes
from the newest checkpoint in --workdir (default runs/<config name>). For a multi-process
launch without cluster auto-detection pass --coordinator_address, --num_processes and
--process_id to every process (TPU pods and SLURM are detected with --distributed).
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from jaxdiff.job import distributed, runtime

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                               "digits.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                          "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output directory (default: runs/<config file name>).")
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO.
  runtime.setup(compilation_cache=_COMPILATION_CACHE.value)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    distributed.initialize_distributed(coordinator_address=_COORDINATOR.value,
                                    num_processes=_NUM_PROCESSES.value,
                                    process_id=_PROCESS_ID.value)
  from jaxdiff.job import trainer  # pylint: disable=g-import-not-at-top  (after initialize)

  config_name = os.path.splitext(os.path.basename(config_flags.get_config_filename(
      flags.FLAGS["config"])))[0]
  workdir = _WORKDIR.value or os.path.join("runs", config_name)
  trainer.train(_CONFIG.value, workdir=workdir)


if __name__ == "__main__":
  app.run(main)
