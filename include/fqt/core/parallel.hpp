#pragma once
/// \file
/// \brief Row-parallel loops: OpenMP when the translation unit is compiled with it, serial
/// otherwise. No fqt result depends on the number of threads: every random number is a pure
/// function of (seed, stream, element index), and every reduction is done per row or per fixed
/// block, then combined in a fixed order.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>

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

/// \brief The index of the calling thread in the current parallel region, in [0, num_threads())
/// (0 outside a region and without OpenMP): selects a per-thread scratch buffer.
inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
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

namespace detail {

/// \brief Carries an exception out of a parallel loop. An exception cannot leave an OpenMP region
/// (the runtime calls std::terminate), so each iteration runs under `run`, which records the
/// exception of the lowest failing index and lets later iterations return at once; `rethrow`
/// throws it after the region. The lowest index is the one a serial loop would have stopped at,
/// so a parallel loop throws exactly what the serial loop throws.
class FirstException {
 public:
  explicit FirstException(Index n) : first_(n) {}

  /// Runs body(i) unless an earlier index already failed; records what body(i) throws.
  template <class Body>
  void run(Index i, Body& body) noexcept {
    if (i > first_.load(std::memory_order_relaxed)) return;
    try {
      body(i);
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (i < first_.load(std::memory_order_relaxed)) {
        first_.store(i, std::memory_order_relaxed);
        error_ = std::current_exception();
      }
    }
  }

  /// Throws the recorded exception, if any.
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::atomic<Index> first_;
  std::mutex mutex_;
  std::exception_ptr error_;
};

}  // namespace detail

/// \brief Calls body(i) for every i in [0, n), spread over threads when the work is large enough.
/// An exception thrown by body propagates to the caller as in a serial loop: the one of the lowest
/// failing index (later indices may or may not have run).
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
    detail::FirstException error(n);
#pragma omp parallel for schedule(dynamic, chunk)
    for (Index i = 0; i < n; ++i) error.run(i, body);
    error.rethrow();
    return;
  }
#else
  (void)work_per_item;
#endif
  for (Index i = 0; i < n; ++i) body(i);
}

}  // namespace fqt
