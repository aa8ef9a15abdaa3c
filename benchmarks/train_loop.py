"""Steps/s of `python train.py` (the digits main job) for two checkouts, interleaved A/B.

    python benchmarks/train_loop.py --a . --b /tmp/before --rounds 3 [-- train.py overrides]

Each round runs `train.py` of checkout A, then of checkout B (the order alternates every
round), each into a fresh temporary workdir, with the same interpreter and environment.
A checkout's `train.py` imports the `jaxdiff` package next to it. Per run it reports:

  loop steps/s  (steps between the first and last "step N |" log lines) / (the wall time
                between those lines arriving on stdout): the steady training loop with its
                checkpoints, without start-up, compilation and the final sample grid
  wall s        the whole command

and per round the ratio A/B of loop steps/s; the summary is the median of those ratios.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

_LOG_LINE = re.compile(r"^step (\d+) \|")


def run_once(checkout: str, overrides: list[str]) -> dict[str, float]:
  """One `train.py` run of `checkout`: loop steps/s and wall seconds."""
  with tempfile.TemporaryDirectory() as workdir:
    command = [sys.executable, os.path.join(checkout, "train.py"), f"--workdir={workdir}",
               *overrides]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, cwd=checkout)
    logs = []
    for line in process.stdout:
      match = _LOG_LINE.match(line)
      if match:
        logs.append((int(match.group(1)), time.perf_counter()))
    if process.wait() != 0:
      raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}")
    wall = time.perf_counter() - start
  (first_step, first_time), (last_step, last_time) = logs[0], logs[-1]
  return {"loop_steps_per_sec": (last_step - first_step) / (last_time - first_time),
          "wall_s": wall}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--a", required=True, help="checkout A (e.g. the change)")
  parser.add_argument("--b", required=True, help="checkout B (e.g. the baseline)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("overrides", nargs="*", help="train.py arguments, after --")
  args = parser.parse_args()
  ratios = []
  for index in range(args.rounds):
    order = ("a", "b") if index % 2 == 0 else ("b", "a")
    results = {name: run_once(os.path.abspath(getattr(args, name)), args.overrides)
               for name in order}
    ratio = results["a"]["loop_steps_per_sec"] / results["b"]["loop_steps_per_sec"]
    ratios.append(ratio)
    print(f"round {index + 1} ({' then '.join(order).upper()}): " + "; ".join(
        f"{name.upper()} {r['loop_steps_per_sec']:.1f} loop steps/s, {r['wall_s']:.1f} s wall"
        for name, r in results.items()) + f"; A/B {ratio:.3f}", flush=True)
  print(f"median A/B loop steps/s over {args.rounds} rounds: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
  main()
