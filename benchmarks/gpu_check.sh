#!/usr/bin/env bash
# The one-shot GPU check (benchmarks/gpu_check.py): jaxdiff vs the compiled PyTorch peer on
# DDPM CIFAR-10 train steps and sampling, with MFU, within about 8 minutes on an H100/H200
# that has no network.
#
#   benchmarks/gpu_check.sh --fetch-wheels   # once, where PyPI is reachable: the packages the
#                                            # GPU machine lacks, into .whl/ (git-ignored)
#   bash benchmarks/gpu_check.sh [--out FILE] [--budget SECONDS]     # on the GPU machine
#   bash benchmarks/gpu_check.sh --smoke     # dry run on this CPU with tiny sizes
#
# On the GPU machine the wheels in .whl/ (if any; the device tool carries the ignored folder
# when its `carry` names .whl) are installed into a scratch folder and put on PYTHONPATH
# with the repository itself, so nothing is fetched; python3 there must hold jax (with
# CUDA) and torch. A dry run uses .venv and benchmarks/.venv-peer where they exist and
# installs no wheels. PYTHON overrides the interpreter that runs the driver.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"
wheels="$root/.whl"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # diffusers and its one missing need, and ml_collections for jaxdiff's configs; the GPU
  # image has the rest (torch, jax, flax, optax, huggingface-hub, safetensors, ...).
  mkdir -p "$wheels"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d "$wheels" \
    diffusers==0.42.1 importlib_metadata==8.7.0 ml_collections==1.1.0
  ls "$wheels"
  exit 0
fi

if [[ " $* " != *" --smoke "* ]] && compgen -G "$wheels/*.whl" >/dev/null; then
  site="${TMPDIR:-/tmp}/jaxdiff_gpu_check_site"
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # Several jax workers share the GPU.
export PYTHONUNBUFFERED=1
exec "$python" "$here/gpu_check.py" "$@"
