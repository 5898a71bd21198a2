#!/usr/bin/env bash
# Creates the project-local Python environment the reference tests use: .venv/, on top of
# Debian's python3-torch (--system-site-packages), with the Hugging Face libraries from PyPI at
# versions known to work with Debian's torch 1.13. peft goes in with --no-deps: Debian's torch
# reports 1.13.0a0, a pre-release that fails peft's torch>=1.13 pin, and pip would otherwise pull
# several GB of CUDA wheels. Idempotent: an environment that already imports the pinned versions
# is left alone. Exit 0 even when PyPI cannot be reached (the tests that need it then skip and
# say why); the reason is printed.
set -uo pipefail
cd "$(dirname "$0")/.."
venv=.venv
py=/usr/bin/python3
pins=(transformers==4.46.3 tokenizers==0.20.3 safetensors==0.4.5 accelerate==0.34.2
      huggingface-hub==0.26.5 jinja2==3.1.4)  # jinja2: transformers' chat templates
peft_pin=peft==0.13.2
check='import torch, transformers, tokenizers, safetensors, peft, jinja2
assert transformers.__version__ == "4.46.3", transformers.__version__
assert tokenizers.__version__ == "0.20.3", tokenizers.__version__
assert peft.__version__ == "0.13.2", peft.__version__
assert jinja2.__version__ == "3.1.4", jinja2.__version__'

if [[ -x $venv/bin/python ]] && $venv/bin/python -c "$check" >/dev/null 2>&1; then
  echo "setup-python: $venv ready"
  exit 0
fi
if ! $py -c 'import torch' >/dev/null 2>&1; then
  echo "setup-python: $py has no torch (python3-torch missing); reference tests will skip"
  exit 0
fi
rm -rf "$venv"
$py -m venv --system-site-packages "$venv" || { echo "setup-python: venv creation failed"; exit 0; }
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! $venv/bin/pip install -q "${pins[@]}" || ! $venv/bin/pip install -q --no-deps "$peft_pin"; then
  echo "setup-python: pip install failed (no package registry?); reference tests will skip"
  rm -rf "$venv"
  exit 0
fi
if $venv/bin/python -c "$check"; then
  echo "setup-python: $venv ready"
else
  echo "setup-python: $venv does not import the pinned packages; reference tests will skip"
fi
exit 0
