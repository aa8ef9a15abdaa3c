#!/usr/bin/env bash
# Creates benchmarks/.venv-peer: the PyTorch + diffusers peer (and OpenAI's guided-diffusion
# U-Net, for the pretrained-weight fixtures), kept out of jaxdiff's own environment. The benchmark driver (benchmarks/bench.py, run from /work/main/.venv) starts
# the peer's worker with this venv's python, so both libraries are timed in one run.
#
# Usage: benchmarks/setup_peer_env.sh [PYTHON]      (default python3.11)
# TORCH_SPEC overrides the torch requirement, e.g. on a GPU machine a CUDA build.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${1:-python3.11}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
venv="$here/.venv-peer"

"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "$torch_spec"
torch_before="$("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
"$venv/bin/pip" install --quiet diffusers
# OpenAI's guided-diffusion U-Net, the reference of benchmarks/make_pretrained_fixtures.py.
"$venv/bin/pip" install --quiet guided-diffusion-sdk safetensors
torch_after="$("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
if [[ "$torch_before" != "$torch_after" ]]; then
  echo "diffusers replaced torch $torch_before by $torch_after" >&2
  exit 1
fi
"$venv/bin/python" -c 'import diffusers, torch; print("peer env: torch", torch.__version__, "diffusers", diffusers.__version__)'
