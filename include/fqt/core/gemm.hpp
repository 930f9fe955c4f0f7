#pragma once
/// \file
/// \brief A float GEMM whose result does not depend on the number of threads: Eigen's product
/// kernels on fixed panels of the output, the panels spread over an OpenMP team.

#include <algorithm>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fqt {
namespace detail {

/// \brief Runs body(b) for b in [0, blocks). The partition into blocks is the caller's and never
/// depends on the thread count, and every Eigen product inside body runs single-threaded: when
/// threads are available the blocks run in an OpenMP team of at least two threads (Eigen does not
/// parallelise a product inside a team). Why: Eigen's own parallel GEMM re-blocks the depth with
/// the thread count, which changes the rounding; fqt promises bit-identical results for any
/// thread count. `flops` is the total work; below Eigen's threshold for threading (1e5 multiply-
/// adds) the blocks simply run in order.
template <class Body>
void run_blocks(Index blocks, double flops, Body&& body) {
#ifdef _OPENMP
  if (flops >= 1e5 && !omp_in_parallel() && omp_get_max_threads() > 1) {
    const int team = static_cast<int>(
        std::max<Index>(2, std::min<Index>(omp_get_max_threads(), std::max<Index>(blocks, 1))));
    FirstException error(blocks);
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
    for (Index b = 0; b < blocks; ++b) error.run(b, body);
    error.rethrow();
    return;
  }
#else
  (void)flops;
#endif
  for (Index b = 0; b < blocks; ++b) body(b);
}

/// Output panel width of gemm(): large enough for Eigen's kernels to run at full speed.
inline constexpr Index kGemmPanel = 128;

/// \brief dst = lhs · rhs (or dst += lhs · rhs when accumulate), split into fixed panels of
/// kGemmPanel columns (or rows, whichever dimension of dst is larger) computed in parallel; the
/// result does not depend on the number of threads. dst must not alias lhs or rhs.
template <class Dst, class Lhs, class Rhs>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate) {
  const Index m = dst.rows(), n = dst.cols(), k = lhs.cols();
  FQT_ASSERT(lhs.rows() == m && rhs.rows() == k && rhs.cols() == n);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate) dst.setZero();
    return;
  }
  const bool split_columns = n >= m;
  const Index length = split_columns ? n : m;
  const Index panels = (length + kGemmPanel - 1) / kGemmPanel;
  run_blocks(panels, static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k),
             [&](Index p) {
               const Index start = p * kGemmPanel;
               const Index width = std::min(kGemmPanel, length - start);
               if (split_columns) {
                 auto out = dst.middleCols(start, width);
                 if (accumulate) {
                   out.noalias() += lhs * rhs.middleCols(start, width);
                 } else {
                   out.noalias() = lhs * rhs.middleCols(start, width);
                 }
               } else {
                 auto out = dst.middleRows(start, width);
                 if (accumulate) {
                   out.noalias() += lhs.middleRows(start, width) * rhs;
                 } else {
                   out.noalias() = lhs.middleRows(start, width) * rhs;
                 }
               }
             });
}

}  // namespace detail
}  // namespace fqt
