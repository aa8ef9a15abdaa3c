"""Post-hoc EMA: `python -m jaxdiff.reconstruct_ema --workdir DIR --sigma_rel S --out OUT`.

Reconstructs the power-function EMA of relative length `--sigma_rel` (Karras et al. 2024,
Sec. 3) at a snapshot step (`--step`, default the last) from the snapshots that a run trained
with `config.train.posthoc_sigma_rels` wrote into DIR/posthoc_ema, by least squares over
their averaging profiles (`jaxdiff.ema`), and writes OUT: a workdir with DIR's config and one
checkpoint whose EMA parameters are the reconstruction, which sample.py and
`python -m jaxdiff.evaluate` read as any run. Prints (and writes to OUT/posthoc_ema.json) the
weights and the relative L2 error of the profile fit. Example:
    python -m jaxdiff.reconstruct_ema --workdir runs/digits_edm --sigma_rel 0.08 \\
        --out runs/digits_edm_ema008
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

from absl import logging as absl_logging

from jaxdiff.job import cli, posthoc_ema


def main(argv: Optional[list[str]] = None) -> int:
  """Entry point; a user error is one line on stderr (exit 2)."""
  p = cli.OneLineParser(prog="python -m jaxdiff.reconstruct_ema",
                        description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a run with post-hoc EMA snapshots")
  p.add_argument("--sigma_rel", type=float, required=True, help="EMA length, in (0, 0.3003)")
  p.add_argument("--step", type=int, default=None, help="snapshot step (default: the last)")
  p.add_argument("--out", required=True, help="the new workdir to write")
  try:
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if os.path.abspath(args.out) == os.path.abspath(args.workdir):
      raise cli.CliError("--out must be a new folder, not the training --workdir")
    reconstruction = posthoc_ema.solve(args.workdir, sigma_rel=args.sigma_rel, step=args.step)
    cli.check_writable_dir(args.out, flag="--out")
    absl_logging.set_verbosity(absl_logging.WARNING)
    report = posthoc_ema.write(reconstruction, args.out)
  except (cli.CliError, ValueError, FileNotFoundError) as e:
    print(f"jaxdiff.reconstruct_ema: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
