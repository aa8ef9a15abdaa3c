"""The one timing harness: a worker process that times one workload for the driver.

Each contender (library, workload, variant) runs in its own worker process, started by
`bench.py` with its library's python, so jaxdiff runs in /work/main/.venv and the peer in
benchmarks/.venv-peer, and the peak RSS of a process is the peak of that one workload.
The driver sends one JSON request per line on stdin and reads one JSON reply per line:

  {"op": "setup"}          build the workload and run its first call (compilation)
  {"op": "run", "n": N}    run N more calls, timed together (wall and process CPU seconds)
  {"op": "stats"}          peak and baseline resident memory
  {"op": "quit"}

Pure Python: imported by both workers, which share nothing else.
"""

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol


class Workload(Protocol):
  """What a worker times: `call()` runs one unit of work and waits until it is done."""

  info: dict[str, Any]

  def call(self) -> None:
    """Runs one unit (a train step, a sampling chain) to completion."""

  def device_peak_mb(self) -> float | None:
    """Peak accelerator memory in MiB, or None on CPU (where peak RSS is the figure)."""


def current_rss_mb() -> float:
  """This process's resident memory now, in MiB (VmRSS of /proc/self/status)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  raise RuntimeError("VmRSS not found in /proc/self/status")


def peak_rss_mb() -> float:
  """This process's peak resident memory so far, in MiB (ru_maxrss, KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], None], n: int) -> tuple[float, float]:
  """Wall seconds and this process's CPU seconds (all its threads) of `n` back-to-back
  calls of `fn`. On a CPU shared with other work, a single-threaded worker's CPU seconds
  are its compute alone, without the time it waited for the core."""
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(n):
    fn()
  return time.perf_counter() - start, time.process_time() - start_cpu


def serve(build: Callable[[dict[str, Any]], Workload]) -> None:
  """Answers the driver's requests for the workload that `build(spec)` makes.

  The spec is the JSON in argv[1]. Replies go to the original stdout; anything the
  libraries print is sent to stderr so it cannot corrupt the protocol.
  """
  spec = json.loads(sys.argv[1])
  replies = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)
  base_rss = current_rss_mb()
  workload: Workload | None = None
  for line in sys.stdin:
    request = json.loads(line)
    op = request["op"]
    if op == "setup":
      start = time.perf_counter()
      workload = build(spec)
      build_s = time.perf_counter() - start
      reply = {"build_s": build_s, "first_call_s": timed(workload.call, 1)[0],
               "info": workload.info}
    elif op == "run":
      if workload is None:
        raise RuntimeError("'run' before 'setup'")
      seconds, cpu_seconds = timed(workload.call, request["n"])
      reply = {"seconds": seconds, "cpu_seconds": cpu_seconds}
    elif op == "stats":
      reply = {"peak_rss_mb": peak_rss_mb(), "base_rss_mb": base_rss,
               "device_peak_mb": workload.device_peak_mb() if workload else None}
    elif op == "quit":
      return
    else:
      raise ValueError(f"unknown op {op!r}")
    replies.write(json.dumps(reply) + "\n")
