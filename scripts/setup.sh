#!/usr/bin/env bash
# Installs the Debian packages the project needs, skipping those already present.
# Idempotent: when everything is installed it only runs dpkg-query and returns.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libyaml-cpp-dev libopenblas-dev libopenblas-openmp-dev
  libhdf5-dev hdf5-tools
  libpcre2-dev libutf8proc-dev  # tokenizer: Unicode regular expressions, normalization
  libopenmpi-dev openmpi-bin
  googletest libgtest-dev
  python3 python3-torch python3-numpy python3-h5py python3-venv python3-pip
  fortunes fortunes-min
  man-db  # scripts/make_whatis_dataset.py reads the manual pages' whatis database
  slurmctld slurmd slurm-client munge  # tests/slurm starts its own one-node cluster with these
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi

# The reference-test environment (transformers, tokenizers, PEFT) in .venv/.
bash "$(dirname "$0")/setup_python.sh"
