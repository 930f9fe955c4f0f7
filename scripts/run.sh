#!/usr/bin/env bash
# The main job: builds the examples and runs the Fashion-MNIST comparison (Exact, QAT, and FQT
# with PTQ, PSQ and BHQ at falling gradient bit widths) on its built-in default budget.
# Installs missing Debian packages first. Extra arguments go to fqt_train (e.g. --full).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
fqt_ensure_packages "${fqt_packages_build[@]}" "${fqt_packages_run[@]}"

cmake -S . -B build/run -DCMAKE_BUILD_TYPE=Release -DFQT_BUILD_TESTS=OFF \
  -DFQT_BUILD_BENCHMARKS=OFF -DFQT_BUILD_EXAMPLES=ON -DFQT_WITH_TORCH=OFF >/dev/null
cmake --build build/run -j "$(nproc)" --target fqt_train
mkdir -p out
cd out
exec ../build/run/examples/fqt_train "$@"
