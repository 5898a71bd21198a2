#!/usr/bin/env bash
# Configures and builds into build/ (Release): every target, or only those named in
# LORA_BUILD_TARGETS (e.g. LORA_BUILD_TARGETS=lora). Extra arguments go to cmake's configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
targets=()
for t in ${LORA_BUILD_TARGETS:-}; do targets+=(--target "$t"); done
cmake --build build -j "$jobs" "${targets[@]}"
