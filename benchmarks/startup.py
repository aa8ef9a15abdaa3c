"""Startup of `python train.py` with and without the persistent compilation cache.

  .venv/bin/python benchmarks/startup.py [--rounds 3] [--record] [-- TRAIN.PY FLAGS...]

Each round runs train.py (default config, one training step) three ways, the order
rotating from round to round: with the cache off, with a fresh (empty) cache directory, and
again with the directory the fresh run filled (warm). Reported per variant: the median
seconds from launch to the end of the first training step (the "step 1 |" log line, which
includes tracing and compiling the step) and to the end of the process (which includes
the final sample grid), and the ratios to the cache-off run of the same round. --record
appends the table to benchmarks/RESULTS.md.
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import cpu_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANTS = ("off", "cold", "warm")


def timed_run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
  """Seconds from launch to the first "step 1 |" stdout line, and to the process's end."""
  start = time.perf_counter()
  first_step = float("nan")
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  errors: list[str] = []
  drain = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)
  drain.start()
  for line in process.stdout:
    if line.startswith("step 1 |") and first_step != first_step:
      first_step = time.perf_counter() - start
  process.wait()
  drain.join()
  if process.returncode:
    raise RuntimeError(f"{' '.join(command)} failed:\n{''.join(errors)[-3000:]}")
  return first_step, time.perf_counter() - start


def run_round(index: int, train_flags: list[str], scratch: Path) -> dict[str, tuple[float, float]]:
  """One off / cold / warm triple; the rotation keeps cold before warm."""
  cache = scratch / f"cache{index}"
  order = list(VARIANTS)
  if index % 2:
    order = ["cold", "warm", "off"]
  times = {}
  for variant in order:
    workdir = scratch / f"run{index}_{variant}"
    command = [sys.executable, "train.py", f"--workdir={workdir}",
               "--config.train.num_steps=1",
               f"--compilation_cache={'off' if variant == 'off' else cache}", *train_flags]
    times[variant] = timed_run(command, dict(os.environ))
    print(f"round {index} {variant}: first step {times[variant][0]:.1f} s, "
          f"total {times[variant][1]:.1f} s", file=sys.stderr, flush=True)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--record", action="store_true", help="append to RESULTS.md")
  parser.add_argument("train_flags", nargs="*", help="extra train.py flags (after --)")
  args = parser.parse_args()
  load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
  start = datetime.datetime.now(datetime.timezone.utc)
  scratch = Path(tempfile.mkdtemp(prefix="jaxdiff_startup_"))
  try:
    rounds = [run_round(i, args.train_flags, scratch) for i in range(args.rounds)]
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  lines = [
      f"### {start:%Y-%m-%d %H:%M} UTC, train.py startup",
      "",
      f"- command: `.venv/bin/python benchmarks/startup.py {' '.join(sys.argv[1:])}`",
      f"- device: {cpu_name()}, {os.cpu_count()} CPUs; "
      f"python {platform.python_version()}",
      f"- load average before: {load_before}; after: "
      + " ".join(f"{x:.2f}" for x in os.getloadavg()),
      f"- rounds: {args.rounds}; medians; ratio = median over rounds of the variant's time "
      "over the cache-off run's time in the same round",
      "",
      "| cache | to the first step, s | ratio | whole run, s | ratio |",
      "|---|---|---|---|---|",
  ]
  for variant in VARIANTS:
    cells = []
    for column in (0, 1):
      cells.append(f"{statistics.median(r[variant][column] for r in rounds):.1f}")
      cells.append(f"{statistics.median(r[variant][column] / r['off'][column] for r in rounds):.2f}x")
    lines.append(f"| {variant} | {' | '.join(cells)} |")
  report = "\n".join(lines + [""])
  print(report)
  if args.record:
    with open(HERE / "RESULTS.md", "a") as f:
      f.write(report + "\n")


if __name__ == "__main__":
  main()
