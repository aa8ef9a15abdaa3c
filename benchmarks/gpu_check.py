"""The one-shot GPU check: jaxdiff vs the compiled PyTorch peer on DDPM CIFAR-10, time-boxed.

Run it through gpu_check.sh (which installs carried wheels and sets the environment):

  bash benchmarks/gpu_check.sh [--budget 450] [--rounds 3] [--out FILE]
  bash benchmarks/gpu_check.sh --smoke        # dry run on a CPU: tiny sizes, every code path

Workloads (preset "full"): jaxdiff's train step (jaxdiff.job.step.train_step: Adam,
clipping, EMA) of the 35.7M-parameter DDPM CIFAR-10 U-Net in float32 and bf16 at batches
128 and 512, and DDPM-1000 / DDIM-50 sampling of 256 images; the peer's same workloads
with torch.compile (diffusers' UNet2DModel, benchmarks/torch_worker.py); a measured
matmul peak (8192^3, float32 and bf16) for MFU. Every contender is a worker process of
benchmarks/bench.py's protocol. All of them build (compile) at the same time, each under
one time box, then each group is timed in interleaved rounds within its share of the time
left, so the whole run ends within `--budget` seconds (plus the last call in flight and
process exits). A contender that fails, or runs over its box, is reported as such; every
group's table is printed as soon as it is done, so a run that is cut short still shows
what it measured.

float32 on an NVIDIA GPU: XLA's default precision computes float32 convolutions and
matmuls with TF32 tensor cores; PyTorch does so for convolutions (cuDNN's default) but
not for matmuls. The startup column is the build with everything compiling at once.
"""

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import bench
import presets

HERE = Path(__file__).resolve().parent


def groups_for(preset: presets.Preset) -> list[bench.Group]:
  """The matmul peak, the train groups (f32 and bf16 of both libraries) and sampling."""
  steps = preset.train_steps_per_rep
  groups = [bench.matmul_group(preset)]
  for batch in preset.train_batches:
    contenders = []
    for dtype, short in (("float32", "f32"), ("bfloat16", "bf16")):
      contenders.append(bench.Contender(
          "jaxdiff", short, bench.jax_spec(preset, "train", batch=batch, dtype=dtype), steps))
      contenders.append(bench.Contender("peer", f"compile {short}", bench.peer_spec(
          preset, "train", batch=batch, dtype=dtype, compile=True), steps))
    groups.append(bench.Group(f"train, batch {batch}", contenders))
  for sampler, n in (("ddpm", preset.ddpm_steps), ("ddim", preset.ddim_steps)):
    groups.append(bench.Group(f"{sampler} {n} steps, batch {preset.sample_batch}", [
        bench.Contender("jaxdiff", "f32 scan", bench.jax_spec(preset, sampler)),
        bench.Contender("peer", "compile f32", bench.peer_spec(preset, sampler, compile=True)),
    ]))
  return groups


def run(groups: list[bench.Group], *, rounds: int, budget: float, setup_share: float,
        pythons: dict[str, Path], log: Path) -> tuple[dict[str, float], set[str], list[str]]:
  """Builds every group's contenders at once, then times group after group; returns the
  matmul peaks, the devices the workers ran on and the table's lines (each group's lines
  are also printed when it is done)."""
  end = time.monotonic() + budget
  started = [bench.start_workers(g, cpus=None, log=log, pythons=pythons, concurrent=True)
             for g in groups]
  setup_end = time.monotonic() + setup_share * budget
  peaks: dict[str, float] = {}
  devices: set[str] = set()
  lines = list(bench.TABLE_HEADER)
  try:
    for index, (group, workers) in enumerate(zip(groups, started)):
      built = bench.collect_builds(group, workers, setup_end=setup_end)
      deadline = time.monotonic() + (end - time.monotonic()) / (len(groups) - index)
      rows = bench.time_rounds(group, workers, built, rounds=rounds, deadline=deadline)
      devices |= {f"{row['contender'].library}: {row['setup']['info']['device']}"
                  for row in rows if not row.get("failed")}
      if index == 0:
        peaks = bench.peak_flops([row for row in rows if not row.get("failed")])
        continue
      group_lines = bench.format_group(group, rows, peaks)
      print("\n".join(group_lines), flush=True)
      lines += group_lines
  finally:  # Whatever went wrong, no worker outlives the check.
    for worker in (w for workers in started for w in workers if w.process.poll() is None):
      worker.process.kill()
  return peaks, devices, lines


def default_pythons(smoke: bool) -> dict[str, Path]:
  """sys.executable for both libraries (a GPU machine's python holds torch and jax); in a
  dry run the benchmark's own environments where they exist."""
  pythons = {"jaxdiff": Path(sys.executable), "peer": Path(sys.executable)}
  if smoke:
    pythons.update({k: v for k, v in bench.PYTHONS.items() if v.exists()})
  return pythons


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true",
                      help="dry run: the tiny 'smoke' preset, on whatever device is there")
  parser.add_argument("--budget", type=float,
                      help="seconds for the whole run (default 450, 7.5 minutes; with --smoke "
                           "2400, for a shared CPU compiling every contender at once)")
  parser.add_argument("--setup_share", type=float, default=0.6,
                      help="fraction of the budget that building may take (default 0.6)")
  parser.add_argument("--rounds", type=int, help="timed rounds (default: the preset's)")
  parser.add_argument("--jax_python", type=Path, help="python for jaxdiff's workers")
  parser.add_argument("--peer_python", type=Path, help="python for the peer's workers")
  parser.add_argument("--out", type=Path, help="also write the report to this file")
  args = parser.parse_args()
  preset = presets.PRESETS["smoke" if args.smoke else "full"]
  budget = args.budget or (2400.0 if args.smoke else 450.0)
  pythons = default_pythons(args.smoke)
  pythons.update({k: v for k, v in (("jaxdiff", args.jax_python),
                                    ("peer", args.peer_python)) if v is not None})
  log = Path(os.environ.get("TMPDIR", "/tmp")) / "jaxdiff_gpu_check_workers.log"
  log.write_text("")
  start = datetime.datetime.now(datetime.timezone.utc)
  began = time.monotonic()
  peaks, devices, lines = run(groups_for(preset), rounds=args.rounds or min(preset.rounds, 3),
                     budget=budget, setup_share=args.setup_share, pythons=pythons,
                     log=log)
  report = [
      f"### {start:%Y-%m-%d %H:%M} UTC, GPU check, preset `{preset.name}`",
      "",
      f"- command: `bash benchmarks/gpu_check.sh {' '.join(sys.argv[1:])}`",
      f"- devices: {'; '.join(sorted(devices)) or 'none answered'}; host: {bench.cpu_name()}, "
      f"{os.cpu_count()} CPUs; python {platform.python_version()}",
      f"- versions: {bench.versions(pythons)}",
      f"- run took {time.monotonic() - began:.0f} s of a {budget:.0f} s budget; "
      "measured matmul peak: "
      + (", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in peaks.items()) or "none"),
      f"- workers' log: {log}",
      "",
  ] + lines + [""]
  print("\n".join(report), flush=True)
  if args.out:
    args.out.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
  main()
