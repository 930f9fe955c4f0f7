#!/usr/bin/env bash
# Builds fqt and runs its whole test suite twice: optimised for this machine with GCC (the
# AVX-512 paths where the CPU has them), then portable under AddressSanitizer and
# UndefinedBehaviorSanitizer with Clang; then builds the libFuzzer harnesses, replays their seed
# corpus and fuzzes each for FQT_FUZZ_SECONDS (20 s by default). Installs missing Debian
# packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
fqt_ensure_packages "${fqt_packages_build[@]}" "${fqt_packages_test[@]}"

jobs=$(nproc)
echo "== optimised build (GCC, -march=native): tests, examples, benchmarks"
# oneDNN and libtorch are required here, so that the int8 tests run its engine beside the portable
# one and the libtorch adapter's tests run.
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=g++ -DFQT_WITH_DNNL=ON \
  -DFQT_WITH_TORCH=ON -DFQT_BUILD_TESTS=ON -DFQT_BUILD_BENCHMARKS=ON -DFQT_BUILD_EXAMPLES=ON \
  >/dev/null
cmake --build build/release -j "$jobs"
(cd build/release && ctest --output-on-failure -j "$jobs")

echo "== optimised stage done at ${SECONDS} s"
echo "== portable build under AddressSanitizer + UndefinedBehaviorSanitizer (Clang)"
# Without oneDNN (it brings GCC's OpenMP runtime, Clang's is libomp): the int8 tests run the
# portable integer GEMM here. Without libtorch (a GCC-built library; its adapter is tested above).
# Line tables are all a sanitizer report needs, and each test executable is compiled as two
# translation units (a unity build; its files share most of their template instantiations), to
# shorten the stage's compile. The optimised stage above compiles each file on its own.
cmake -S . -B build/sanitize -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=clang++ \
  -DFQT_NATIVE=OFF -DFQT_SLOW_TESTS=OFF -DFQT_WITH_DNNL=OFF -DFQT_WITH_TORCH=OFF \
  -DFQT_BUILD_TESTS=ON -DFQT_BUILD_BENCHMARKS=OFF -DFQT_BUILD_EXAMPLES=OFF \
  -DCMAKE_UNITY_BUILD=ON -DCMAKE_CXX_FLAGS_DEBUG=-gline-tables-only \
  -DCMAKE_CXX_FLAGS="-O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
  >/dev/null
# The library's tests only: the trainer's tests (app) take the longest to compile under the
# sanitizers, and the code they guard against bad input — the IDX reader and the checkpoints — is
# fuzzed under the same sanitizers below.
cmake --build build/sanitize -j "$jobs" --target fqt_tests_quant fqt_tests_nn
(cd build/sanitize && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j "$jobs" -R '^(quant|nn)[.]')

echo "== sanitizer stage done at ${SECONDS} s"
echo "== fuzzing (Clang, libFuzzer + ASan + UBSan): the seed corpus, then ${FQT_FUZZ_SECONDS:-20} s per harness"
# New inputs and findings go to build/fuzz/tests/fuzz/{scratch,findings}/<harness>/.
source scripts/fuzz_config.sh
fqt_configure_fuzzers "${FQT_FUZZ_SECONDS:-20}"
cmake --build build/fuzz -j "$jobs"
(cd build/fuzz && ctest --output-on-failure -j "$jobs" -L fuzz)
echo "== all stages passed in ${SECONDS} s"
