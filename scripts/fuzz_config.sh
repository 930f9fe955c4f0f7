# Sourced by test.sh and fuzz.sh: configures the libFuzzer harnesses of tests/fuzz in build/fuzz.
# Debug keeps fqt's FQT_ASSERT and Eigen's asserts on; -O2 keeps the fuzzers fast; line tables
# are enough for the sanitizers' reports.

# fqt_configure_fuzzers SECONDS [SEED]: SECONDS is how long each ctest fuzz.<harness> test fuzzes;
# SEED is libFuzzer's -seed (default 1, repeatable; 0 picks a random one).
fqt_configure_fuzzers() {
  cmake -S . -B build/fuzz -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_CXX_FLAGS_DEBUG="-gline-tables-only -O2" -DFQT_BUILD_FUZZERS=ON -DFQT_BUILD_TESTS=OFF \
    -DFQT_BUILD_BENCHMARKS=OFF -DFQT_BUILD_EXAMPLES=OFF -DFQT_WITH_DNNL=OFF -DFQT_WITH_TORCH=OFF -DFQT_FUZZ_SECONDS="$1" -DFQT_FUZZ_SEED="${2:-1}" >/dev/null
}
