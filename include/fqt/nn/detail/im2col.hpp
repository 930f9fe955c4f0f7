#pragma once
/// \file
/// \brief im2col and col2im of one sample of a 2-D convolution, for values and for codes.

#include <algorithm>
#include <cstring>
#include <utility>

#include "fqt/core/matrix.hpp"
#include "fqt/nn/geometry.hpp"

namespace fqt {
namespace nn {
namespace detail {

/// Samples per work chunk of the conv kernels: a fixed partition, so the grad-weight sum has a
/// fixed order whatever the number of threads.
inline constexpr Index kConvChunk = 4;

/// \brief The output columns [lo, hi) at which kernel column j reads inside the input row
/// (ix = ox·sw − pw + j in [0, W)); the others read padding.
inline std::pair<Index, Index> inside_columns(const Conv2dGeometry& g, Index j) {
  const Index wo = g.out_width(), sw = g.stride_width, shift = g.padding_width - j;
  // ox·sw ≥ shift and ox·sw ≤ W − 1 + shift.
  const Index lo = shift <= 0 ? 0 : (shift + sw - 1) / sw;
  const Index last = g.in_width - 1 + shift;
  const Index hi = last < 0 ? 0 : std::min(wo, last / sw + 1);
  return {std::min(lo, hi), hi};
}

/// \brief im2col of one sample: columns (C·kh·kw) × (Ho·Wo), row (c, i, j), column (oy, ox),
/// rows `ld` apart (0: Ho·Wo, packed). Positions in the padding get `pad` (0 for values; the zero
/// point's code for codes).
template <class T>
void im2col(const T* x, const Conv2dGeometry& g, T* columns, T pad = T(0), Index ld = 0) {
  const Index ho = g.out_height(), wo = g.out_width(), sw = g.stride_width;
  const Index plane = ld != 0 ? ld : ho * wo;
  for (Index c = 0; c < g.in_channels; ++c) {
    const T* channel = x + c * g.in_height * g.in_width;
    for (Index i = 0; i < g.kernel_height; ++i) {
      for (Index j = 0; j < g.kernel_width; ++j) {
        T* dst = columns + ((c * g.kernel_height + i) * g.kernel_width + j) * plane;
        const auto [lo, hi] = inside_columns(g, j);
        for (Index oy = 0; oy < ho; ++oy) {
          T* row = dst + oy * wo;
          const Index iy = oy * g.stride_height - g.padding_height + i;
          if (iy < 0 || iy >= g.in_height) {
            std::fill(row, row + wo, pad);
            continue;
          }
          // Input column of output column ox: base + ox·sw, inside the row for ox in [lo, hi).
          const T* src = channel + iy * g.in_width;
          const Index base = j - g.padding_width;
          // Rows are short (a feature map's width): plain loops, not calls to memset/memmove.
          for (Index ox = 0; ox < lo; ++ox) row[ox] = pad;
          if (sw == 1) {
            std::memcpy(row + lo, src + base + lo, static_cast<std::size_t>(hi - lo) * sizeof(T));
          } else {
            for (Index ox = lo; ox < hi; ++ox) row[ox] = src[base + ox * sw];
          }
          for (Index ox = hi; ox < wo; ++ox) row[ox] = pad;
        }
      }
    }
  }
}

/// \brief col2im of one sample: adds each column entry back to its input position (x += ...).
template <class Scalar>
void col2im_add(const Scalar* columns, const Conv2dGeometry& g, Scalar* x) {
  const Index ho = g.out_height(), wo = g.out_width(), plane = ho * wo, sw = g.stride_width;
  for (Index c = 0; c < g.in_channels; ++c) {
    Scalar* channel = x + c * g.in_height * g.in_width;
    for (Index i = 0; i < g.kernel_height; ++i) {
      for (Index j = 0; j < g.kernel_width; ++j) {
        const Scalar* src = columns + ((c * g.kernel_height + i) * g.kernel_width + j) * plane;
        const auto [lo, hi] = inside_columns(g, j);
        for (Index oy = 0; oy < ho; ++oy) {
          const Index iy = oy * g.stride_height - g.padding_height + i;
          if (iy < 0 || iy >= g.in_height) continue;
          const Scalar* row = src + oy * wo;
          Scalar* dst = channel + iy * g.in_width;
          const Index base = j - g.padding_width;
          if (sw == 1) {
            for (Index ox = lo; ox < hi; ++ox) dst[base + ox] += row[ox];
          } else {
            for (Index ox = lo; ox < hi; ++ox) dst[base + ox * sw] += row[ox];
          }
        }
      }
    }
  }
}

template <class Scalar>
using RowMap = Eigen::Map<Matrix<Scalar>>;
template <class Scalar>
using ConstRowMap = Eigen::Map<const Matrix<Scalar>>;

}  // namespace detail
}  // namespace nn
}  // namespace fqt
