"""jaxdiff vs the PyTorch + diffusers peer: training and sampling throughput, side by side.

Run from /work/main with jaxdiff's environment; the peer runs from benchmarks/.venv-peer
(made by benchmarks/setup_peer_env.sh):

  .venv/bin/python benchmarks/bench.py --preset cpu [--cpus 0] [--only "ddpm;ddim"] [--record]

Every contender (library, workload, variant) is a worker process of its own (see
worker_protocol.py), so each library runs in its own environment and the peak memory of
a process is that of one workload. Within a group (e.g. "train, batch 32") all workers
are built first (their compile time is reported apart), then timed in rounds that
interleave the contenders; a ratio is the median over rounds of the per-round ratio, so
a load that drifts during the run hits both libraries alike. --record appends the table,
with device, date, load, versions and command, to benchmarks/RESULTS.md, and writes every
round's times to benchmarks/results/.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import presets

HERE = Path(__file__).resolve().parent
JAX_PYTHON = HERE.parent / ".venv" / "bin" / "python"
PEER_PYTHON = HERE / ".venv-peer" / "bin" / "python"
PYTHONS = {"jaxdiff": JAX_PYTHON, "peer": PEER_PYTHON}


@dataclasses.dataclass(frozen=True)
class Contender:
  """One timed configuration: a library, a variant label and its worker's spec."""

  library: str
  label: str
  spec: dict[str, Any]
  calls_per_rep: int = 1


@dataclasses.dataclass(frozen=True)
class Group:
  """Contenders timed against each other, round by round."""

  title: str
  contenders: list[Contender]


class Worker:
  """A running worker process and its request / reply pipe."""

  def __init__(self, contender: Contender, *, cpus: set[int] | None, log: Path,
               pythons: dict[str, Path] | None = None):
    self.contender = contender
    self.building = False  # True once asked to build, before its reply was read.
    python = (pythons or PYTHONS)[contender.library]
    script = "jax_worker.py" if contender.library == "jaxdiff" else "torch_worker.py"
    self.log = open(log, "a")
    env = dict(os.environ)
    if contender.spec.get("pythonpath"):  # Another checkout's jaxdiff (--baseline).
      env["PYTHONPATH"] = os.pathsep.join(
          p for p in (contender.spec["pythonpath"], env.get("PYTHONPATH")) if p)
    self.process = subprocess.Popen(
        [str(python), script, json.dumps(contender.spec)], cwd=HERE, text=True, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )

  def send(self, op: str, **kw: Any) -> None:
    """Sends one request."""
    assert self.process.stdin is not None
    self.process.stdin.write(json.dumps({"op": op, **kw}) + "\n")
    self.process.stdin.flush()

  def receive(self, timeout: float | None = None) -> dict[str, Any]:
    """Waits for the reply to the last request; after `timeout` seconds the worker is
    killed and TimeoutError raised."""
    assert self.process.stdout is not None
    if timeout is not None and not select.select([self.process.stdout], [], [],
                                                 max(timeout, 0.0))[0]:
      self.process.kill()
      raise TimeoutError(f"worker {self.contender.library} {self.contender.label} took "
                         f"over its {timeout:.0f} s; killed")
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"worker {self.contender.library} {self.contender.label} died; "
                         f"see {self.log.name}")
    return json.loads(line)

  def request(self, op: str, timeout: float | None = None, **kw: Any) -> dict[str, Any]:
    """Sends one request and waits for its reply (see `receive`)."""
    self.send(op, **kw)
    return self.receive(timeout)

  def close(self) -> None:
    """Asks the worker to quit and waits for it; one still building is killed."""
    assert self.process.stdin is not None
    if self.building:
      self.process.kill()
    try:
      self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
      self.process.stdin.close()
    except (BrokenPipeError, ValueError):  # The worker died or was killed already.
      pass
    self.process.wait()
    self.log.close()


def jax_spec(preset: presets.Preset, workload: str, **kw: Any) -> dict[str, Any]:
  """A jaxdiff worker spec with the default levers (float32, donated state, no scan)."""
  spec = {"preset": preset.name, "workload": workload, "dtype": "float32", "donate": True,
          "micro_steps": 1, "remat": False}
  return {**spec, **kw}


def peer_spec(preset: presets.Preset, workload: str, **kw: Any) -> dict[str, Any]:
  """A peer worker spec (float32, eager by default)."""
  return {"preset": preset.name, "workload": workload, "dtype": "float32", "compile": False,
          **kw}


def train_group(preset: presets.Preset, batch: int, levers: list[Contender]) -> Group:
  """Training at `batch`: both libraries in float32 and bf16, plus jaxdiff's `levers`."""
  steps = preset.train_steps_per_rep
  contenders = []
  for dtype, short in (("float32", "f32"), ("bfloat16", "bf16")):
    contenders.append(Contender("jaxdiff", short, jax_spec(preset, "train", batch=batch,
                                                           dtype=dtype), steps))
    for compiled in (False, True):
      label = f"{'compile' if compiled else 'eager'} {short}"
      contenders.append(Contender("peer", label, peer_spec(
          preset, "train", batch=batch, dtype=dtype, compile=compiled), steps))
  return Group(f"train, batch {batch}", contenders + levers)


def flag_variants(preset: presets.Preset, workload: str, variants: dict[str, str],
                  baseline: Path | None, **kw: Any) -> list[Contender]:
  """jaxdiff float32 with the XLA flags of each variant added to XLA_FLAGS, and the
  baseline checkout's jaxdiff (same environment and worker) if given."""
  steps = preset.train_steps_per_rep if workload == "train" else 1
  contenders = [Contender("jaxdiff", f"f32 {label}",
                          jax_spec(preset, workload, xla_flags=flags, **kw), steps)
                for label, flags in variants.items()]
  if baseline is not None:
    contenders.append(Contender("jaxdiff", "f32 baseline", jax_spec(
        preset, workload, pythonpath=str(baseline.resolve()), **kw), steps))
  return contenders


def groups_for(preset: presets.Preset, variants: dict[str, str],
               baseline: Path | None = None) -> list[Group]:
  """Every group of the run, levers and flag variants included."""
  small, large = preset.train_batches[0], preset.train_batches[-1]
  steps, micro = preset.train_steps_per_rep, preset.micro_steps
  train_levers = {
      small: [
          Contender("jaxdiff", "f32 no donation",
                    jax_spec(preset, "train", batch=small, donate=False), steps),
          Contender("jaxdiff", f"f32 scan {micro} steps/call",
                    jax_spec(preset, "train", batch=small, micro_steps=micro),
                    max(1, steps // micro)),
      ],
      large: [Contender("jaxdiff", "f32 remat",
                        jax_spec(preset, "train", batch=large, remat=True), steps)],
  }
  sample_levers = {"ddpm": [Contender("jaxdiff", "f32 per-step jit loop",
                                      jax_spec(preset, "ddpm", loop=True))]}
  groups = [train_group(preset, b, train_levers.get(b, [])
                        + flag_variants(preset, "train", variants, baseline, batch=b))
            for b in preset.train_batches]
  for sampler, n in (("ddpm", preset.ddpm_steps), ("ddim", preset.ddim_steps)):
    groups.append(Group(f"{sampler} {n} steps, batch {preset.sample_batch}", [
        Contender("jaxdiff", "f32 scan", jax_spec(preset, sampler)),
        Contender("peer", "eager f32", peer_spec(preset, sampler)),
        Contender("peer", "compile f32", peer_spec(preset, sampler, compile=True)),
    ] + sample_levers.get(sampler, [])
        + flag_variants(preset, sampler, variants, baseline)))
  return groups


def matmul_group(preset: presets.Preset) -> Group:
  """The measured matmul peak in float32 and bf16, the denominator of FLOPs utilisation."""
  return Group(f"matmul {preset.matmul_size}^3", [
      Contender("jaxdiff", short, jax_spec(preset, "matmul", dtype=dtype), 10)
      for dtype, short in (("float32", "f32"), ("bfloat16", "bf16"))
  ])


def start_workers(group: Group, *, cpus: set[int] | None, log: Path,
                  pythons: dict[str, Path] | None = None,
                  concurrent: bool = False) -> list[Worker]:
  """Starts a worker per contender. With `concurrent` each is asked to build its workload
  at once (they build at the same time, so their startup times overlap); otherwise
  `collect_builds` builds them one after another."""
  workers = [Worker(c, cpus=cpus, log=log, pythons=pythons) for c in group.contenders]
  for worker in workers if concurrent else []:
    worker.send("setup")
    worker.building = True
  return workers


def collect_builds(group: Group, workers: list[Worker], *, setup_end: float | None
                   ) -> list[tuple[Worker, dict[str, Any]]]:
  """The built workers of `start_workers` with their rows; one that fails to build or is
  not built by `setup_end` (a time.monotonic()) is reported, not timed."""
  print(f"== {group.title}", file=sys.stderr, flush=True)
  built = []
  for worker in workers:
    timeout = None if setup_end is None else setup_end - time.monotonic()
    if not worker.building:
      worker.send("setup")
      worker.building = True
    try:
      setup = worker.receive(timeout)
    except (RuntimeError, TimeoutError) as e:
      print(f"   {e}", file=sys.stderr, flush=True)
      continue
    finally:
      worker.building = False
    built.append((worker, {"contender": worker.contender, "setup": setup, "seconds": [],
                           "cpu_seconds": []}))
    print(f"   built {worker.contender.library} {worker.contender.label}: "
          f"{setup['build_s'] + setup['first_call_s']:.1f} s", file=sys.stderr, flush=True)
  return built


def time_rounds(group: Group, workers: list[Worker],
                built: list[tuple[Worker, dict[str, Any]]], *, rounds: int,
                deadline: float | None = None) -> list[dict[str, Any]]:
  """Times the built workers in up to `rounds` interleaved rounds, fewer when the
  deadline (a time.monotonic()) comes first; a contender cut off keeps the rounds it
  finished. Closes every worker."""
  def left() -> float | None:
    return None if deadline is None else deadline - time.monotonic()

  try:
    for r in range(rounds if built else 0):
      if left() is not None and left() <= 0:
        print(f"   deadline: {r} of {rounds} rounds", file=sys.stderr, flush=True)
        break
      for worker, row in built[r % len(built):] + built[:r % len(built)]:
        if row.get("cut_off"):
          continue
        n = worker.contender.calls_per_rep
        try:
          reply = worker.request("run", timeout=left(), n=n)
        except (RuntimeError, TimeoutError) as e:
          print(f"   {e}", file=sys.stderr, flush=True)
          row["cut_off"] = True
          continue
        row["seconds"].append(reply["seconds"] / n)
        row["cpu_seconds"].append(reply["cpu_seconds"] / n)
    for worker, row in built:
      row["stats"] = {} if row.get("cut_off") else worker.request("stats")
  finally:
    for worker in workers:
      worker.close()
  rows = [row for _, row in built if row["seconds"]]
  return rows + [{"contender": c, "failed": True} for c in group.contenders
                 if all(c is not row["contender"] for row in rows)]


def run_group(group: Group, *, rounds: int, cpus: set[int] | None,
              log: Path) -> list[dict[str, Any]]:
  """Builds every contender, then times them in `rounds` interleaved rounds."""
  workers = start_workers(group, cpus=cpus, log=log)
  return time_rounds(group, workers, collect_builds(group, workers, setup_end=None),
                     rounds=rounds)


def throughputs(row: dict[str, Any], clock: str = "seconds") -> list[float]:
  """Images per second in each round, by wall clock or ("cpu_seconds") process CPU time."""
  return [row["setup"]["info"]["images_per_call"] / s for s in row[clock]]


def ratios(a: dict[str, Any], b: dict[str, Any]) -> str:
  """a's throughput over b's: the median over rounds of the ratio within a round (side by
  side), in parentheses the ratio of the two best rounds, and in brackets the median
  ratio by CPU time."""
  median = statistics.median(x / y for x, y in zip(throughputs(a), throughputs(b)))
  by_cpu = statistics.median(x / y for x, y in zip(throughputs(a, "cpu_seconds"),
                                                   throughputs(b, "cpu_seconds")))
  return (f"{median:.2f}x ({max(throughputs(a)) / max(throughputs(b)):.2f}x) "
          f"[{by_cpu:.2f}x]")


def peak_flops(matmul_rows: list[dict[str, Any]]) -> dict[str, float]:
  """Measured matmul FLOP/s by dtype label ("f32", "bf16"): the best round's."""
  return {row["contender"].label: max(throughputs(row))
          * row["setup"]["info"]["flops_per_image"] for row in matmul_rows}


def dtype_of(label: str) -> str:
  """The dtype part ("f32" / "bf16") of a variant label."""
  return "bf16" if "bf16" in label else "f32"


def format_group(group: Group, rows: list[dict[str, Any]],
                 peaks: dict[str, float]) -> list[str]:
  """Markdown table rows of one group; ratios are jaxdiff over the same-dtype peer."""
  timed = [row for row in rows if not row.get("failed")]
  peers = {row["contender"].label: row for row in timed if row["contender"].library == "peer"}
  flops = next((row["setup"]["info"]["flops_per_image"] for row in timed
                if row["contender"].library == "jaxdiff"), float("nan"))
  lines = [f"| {group.title} | | | | | | | | | |"]
  for row in rows:
    if row.get("failed"):
      lines.append(f"| {row['contender'].library} | {row['contender'].label} | failed to "
                   "build or run: see the workers' log | | | | | | | |")
      continue
    c, info, stats = row["contender"], row["setup"]["info"], row["stats"]
    rate = statistics.median(throughputs(row))
    dt = dtype_of(c.label)
    versus = "-"
    modes = [mode for mode in ("eager", "compile") if f"{mode} {dt}" in peers]
    if c.library == "jaxdiff" and modes:
      versus = " / ".join(ratios(row, peers[f"{mode} {dt}"]) for mode in modes)
      if len(modes) == 1:  # Name the one peer there is.
        versus = f"{modes[0]}: {versus}"
    memory = f"{stats['peak_rss_mb']:.0f}" if stats else "- (cut off)"
    if stats.get("device_peak_mb") is not None:
      memory = f"{stats['device_peak_mb']:.0f} dev"
    elif "xla_total_mb" in info:
      memory += f" (XLA {info['xla_total_mb']:.0f})"
    startup = (row["setup"]["build_s"] + row["setup"]["first_call_s"]
               - info.get("analysis_s", 0.0))
    best = max(throughputs(row))
    mfu = 100 * flops * best / peaks[dt] if dt in peaks else float("nan")
    spread = (best - min(throughputs(row))) / rate * 100
    lines.append(
        f"| {c.library} | {c.label} | {info['params']:,} | {startup:.1f} | "
        f"{1000 * statistics.median(row['seconds']):.1f} "
        f"[{1000 * statistics.median(row['cpu_seconds']):.1f}] | {rate:.1f} ({best:.1f}) | "
        f"{spread:.0f}% | {versus} | {mfu:.1f}% | {memory} |")
  return lines


TABLE_HEADER = [
    "| library | variant | params | startup s | ms/call [CPU] | img/s (best) | spread | "
    "jaxdiff/peer eager / compile | MFU | peak RSS MiB |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def versions(pythons: dict[str, Path] | None = None) -> str:
  """Library versions of both environments."""
  pythons = pythons or PYTHONS
  jax_v = subprocess.run(
      [str(pythons["jaxdiff"]), "-c", "import jax, flax, optax; print('jax', jax.__version__, "
       "'flax', flax.__version__, 'optax', optax.__version__)"],
      capture_output=True, text=True, check=True).stdout.strip()
  peer_v = subprocess.run(
      [str(pythons["peer"]), "-c", "import torch, diffusers; print('torch', torch.__version__, "
       "'diffusers', diffusers.__version__)"],
      capture_output=True, text=True, check=True).stdout.strip()
  return f"{jax_v}; peer: {peer_v}"


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo."""
  for line in Path("/proc/cpuinfo").read_text().splitlines():
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return platform.processor()


def load_average() -> str:
  """The 1, 5 and 15 minute load averages."""
  return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args() -> argparse.Namespace:
  """The command line of bench.py."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(presets.PRESETS), default="cpu")
  parser.add_argument("--rounds", type=int, help="timed rounds (default: the preset's)")
  parser.add_argument("--cpus", help="pin every worker to these CPUs, e.g. '0' or '0,1'")
  parser.add_argument("--only", help="group title prefixes to run, separated by ';'")
  parser.add_argument("--skip", help="leave out contenders whose variant label contains one "
                                     "of these ';'-separated strings, e.g. 'scan;bf16'")
  parser.add_argument("--variant", action="append", default=[], metavar="LABEL=FLAGS",
                      help="also time jaxdiff float32 with these XLA_FLAGS (repeatable)")
  parser.add_argument("--baseline", type=Path,
                      help="a checkout of another jaxdiff version: also time its float32 "
                           "('f32 baseline'), with this worker and environment")
  parser.add_argument("--record", action="store_true", help="append to RESULTS.md")
  return parser.parse_args()


def selected_groups(preset: presets.Preset, args: argparse.Namespace) -> list:
  """The preset's groups, with --variant contenders added and --only / --skip applied."""
  variants = dict(v.split("=", 1) for v in args.variant)
  groups = groups_for(preset, variants, args.baseline)
  if args.only:
    groups = [g for g in groups if g.title.startswith(tuple(args.only.split(";")))]
  if args.skip:
    skipped = tuple(args.skip.split(";"))
    groups = [dataclasses.replace(g, contenders=[
        c for c in g.contenders if not any(k in c.label for k in skipped)]) for g in groups]
  return groups


def main() -> None:
  args = parse_args()
  preset = presets.PRESETS[args.preset]
  cpus = {int(c) for c in args.cpus.split(",")} if args.cpus else None
  rounds = args.rounds or preset.rounds
  log = Path(tempfile.gettempdir()) / "jaxdiff_bench_workers.log"
  log.write_text("")
  load_before = load_average()
  start = datetime.datetime.now(datetime.timezone.utc)

  matmul = matmul_group(preset)
  peaks = peak_flops(run_group(matmul, rounds=rounds, cpus=cpus, log=log))
  groups = selected_groups(preset, args)
  lines, raw = list(TABLE_HEADER), {}
  for group in groups:
    raw[group.title] = run_group(group, rounds=rounds, cpus=cpus, log=log)
    lines += format_group(group, raw[group.title], peaks)

  end = datetime.datetime.now(datetime.timezone.utc)
  command = " ".join(["benchmarks/bench.py"] + sys.argv[1:])
  report = [
      f"### {start:%Y-%m-%d %H:%M} UTC, preset `{args.preset}`",
      "",
      f"- command: `.venv/bin/python {command}`",
      f"- device: {cpu_name()}, {os.cpu_count()} CPUs; workers pinned to: "
      f"{args.cpus or 'all'}",
      f"- load average (1/5/15 min) before: {load_before}; after: {load_average()}; "
      f"run took {(end - start).total_seconds() / 60:.1f} min",
      f"- versions: python {platform.python_version()} (jaxdiff), {versions()}",
      f"- rounds: {rounds}; measured matmul peak: "
      + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()),
      "",
  ] + lines + [""]
  print("\n".join(report))
  if args.record:
    with open(HERE / "RESULTS.md", "a") as f:
      f.write("\n".join(report) + "\n")
    raw_path = HERE / "results" / f"{start:%Y%m%dT%H%M%S}_{args.preset}_{os.getpid()}.json"
    raw_path.parent.mkdir(exist_ok=True)
    raw_path.write_text(json.dumps(
        {"report": report, "peaks": peaks, "groups": raw},
        default=lambda c: dataclasses.asdict(c), indent=1))


if __name__ == "__main__":
  main()
