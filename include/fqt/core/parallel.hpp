#pragma once
/// \file
/// \brief Row-parallel loops: OpenMP when the translation unit is compiled with it, serial
/// otherwise. No fqt result depends on the number of threads: every random number is a pure
/// function of (seed, stream, element index), and every reduction is done per row or per fixed
/// block, then combined in a fixed order.

#include <algorithm>
#include <cstdint>

#include "fqt/core/matrix.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fqt {

/// \brief Number of threads fqt's parallel loops use (1 without OpenMP).
inline int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// \brief Sets the number of threads of fqt's parallel loops (ignored without OpenMP).
/// \param threads at least 1
inline void set_num_threads(int threads) {
#ifdef _OPENMP
  omp_set_num_threads(std::max(1, threads));
#else
  (void)threads;
#endif
}

/// \brief Calls body(i) for every i in [0, n), spread over threads when the work is large enough.
/// \param work_per_item rough cost of one item (e.g. the row length), to skip threading small work
template <class Body>
inline void parallel_for(Index n, Index work_per_item, Body&& body) {
#ifdef _OPENMP
  constexpr Index kMinWorkPerThread = Index{1} << 15;
  if (n > 1 && n * std::max<Index>(work_per_item, 1) >= 2 * kMinWorkPerThread &&
      omp_get_max_threads() > 1 && !omp_in_parallel()) {
    // About 16 chunks per thread, handed out dynamically: items of uneven cost (BHQ's groups,
    // sorted largest first) stay balanced, and uniform rows pay one atomic per chunk.
    const Index chunk = std::max<Index>(1, n / (16 * omp_get_max_threads()));
#pragma omp parallel for schedule(dynamic, chunk)
    for (Index i = 0; i < n; ++i) body(i);
    return;
  }
#else
  (void)work_per_item;
#endif
  for (Index i = 0; i < n; ++i) body(i);
}

}  // namespace fqt
