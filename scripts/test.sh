#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs the whole suite through CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
cd build
ctest --output-on-failure -j 2 --timeout 600
