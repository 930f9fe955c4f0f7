#pragma once
/// \file
/// \brief Vector kernels shared by the quantizers: one-pass min/max with a finiteness check, and
/// the fused multiply-adds of BHQ's reflections. Each has an AVX-512 path and a portable path
/// that perform the same IEEE operations (explicit fma), so results are bit-identical.

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "fqt/core/matrix.hpp"
#include "fqt/core/simd.hpp"

namespace fqt {
namespace detail {

FQT_SIMD_DIAGNOSTICS_PUSH
/// \brief Minimum and maximum of x[0, n) in one pass; false if any element is NaN or ±Inf.
template <class Scalar>
inline bool min_max(const Scalar* x, Index n, Scalar& lo, Scalar& hi) {
  Index j = 0;
  Scalar l = std::numeric_limits<Scalar>::infinity(), h = -l;
#if FQT_HAVE_AVX512
  if constexpr (std::is_same_v<Scalar, float>) {
    if (n >= 64) {
      __m512 l0 = _mm512_set1_ps(l), l1 = l0, h0 = _mm512_set1_ps(h), h1 = h0;
      __mmask16 nan = 0;
      for (; j + 32 <= n; j += 32) {
        const __m512 a = _mm512_loadu_ps(x + j), b = _mm512_loadu_ps(x + j + 16);
        l0 = _mm512_min_ps(l0, a), h0 = _mm512_max_ps(h0, a);
        l1 = _mm512_min_ps(l1, b), h1 = _mm512_max_ps(h1, b);
        nan |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q);
      }
      if (nan) return false;
      l = _mm512_reduce_min_ps(_mm512_min_ps(l0, l1));
      h = _mm512_reduce_max_ps(_mm512_max_ps(h0, h1));
    }
  }
#endif
  for (; j < n; ++j) {
    if (std::isnan(x[j])) return false;
    l = std::min(l, x[j]);
    h = std::max(h, x[j]);
  }
  lo = l;
  hi = h;
  return std::isfinite(lo) && std::isfinite(hi) && std::isfinite(hi - lo);
}
FQT_SIMD_DIAGNOSTICS_POP

/// \brief Adds Σ_j f(1 − f) over x[0, n) to sum_a and to sum_b, f the fractional part of
/// y = x·inv + z under two affine maps (inv_a, z_a) and (inv_b, z_b): the rounding variance of
/// the elements in units of Δ², for comparing two grids (Grid::Auto). No random numbers; Eigen's
/// packets vectorize it, with float partial sums over blocks of 1024 added in double.
template <class Scalar>
inline void add_fraction_variances(const Scalar* x, Index n, Scalar inv_a, Scalar z_a, Scalar inv_b,
                                   Scalar z_b, double& sum_a, double& sum_b) {
  using Array = Eigen::Array<Scalar, Eigen::Dynamic, 1>;
  constexpr Index kBlock = 1024;
  Index start = 0;
#if FQT_HAVE_AVX512
  if constexpr (std::is_same_v<Scalar, float>) {
    FQT_SIMD_DIAGNOSTICS_PUSH
    const __m512 ia = _mm512_set1_ps(inv_a), za = _mm512_set1_ps(z_a);
    const __m512 ib = _mm512_set1_ps(inv_b), zb = _mm512_set1_ps(z_b);
    constexpr int kFloor = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
    const Index whole = n - n % 16;
    while (start < whole) {
      __m512 acc_a = _mm512_setzero_ps(), acc_b = _mm512_setzero_ps();
      const Index stop = std::min(whole, start + kBlock);
      for (; start < stop; start += 16) {
        const __m512 v = _mm512_loadu_ps(x + start);
        const __m512 ya = _mm512_fmadd_ps(v, ia, za), yb = _mm512_fmadd_ps(v, ib, zb);
        const __m512 fa = _mm512_sub_ps(ya, _mm512_roundscale_ps(ya, kFloor));
        const __m512 fb = _mm512_sub_ps(yb, _mm512_roundscale_ps(yb, kFloor));
        acc_a = _mm512_add_ps(acc_a, _mm512_fnmadd_ps(fa, fa, fa));
        acc_b = _mm512_add_ps(acc_b, _mm512_fnmadd_ps(fb, fb, fb));
      }
      sum_a += static_cast<double>(_mm512_reduce_add_ps(acc_a));
      sum_b += static_cast<double>(_mm512_reduce_add_ps(acc_b));
    }
    FQT_SIMD_DIAGNOSTICS_POP
  }
#endif
  for (Index j = start; j < n; j += kBlock) {
    const Eigen::Map<const Array> v(x + j, std::min(kBlock, n - j));
    const auto ya = v * inv_a + z_a;
    const auto yb = v * inv_b + z_b;
    const auto fa = ya - ya.floor();
    const auto fb = yb - yb.floor();
    sum_a += static_cast<double>((fa - fa.square()).sum());
    sum_b += static_cast<double>((fb - fb.square()).sum());
  }
}

FQT_SIMD_DIAGNOSTICS_PUSH
/// \brief y[j] = fma(a, x[j], y[j]) for j in [0, n).
template <class Scalar>
inline void fma_into(Scalar a, const Scalar* x, Scalar* y, Index n) {
  Index j = 0;
#if FQT_HAVE_AVX512
  if constexpr (std::is_same_v<Scalar, float>) {
    const __m512 va = _mm512_set1_ps(a);
    for (; j + 16 <= n; j += 16)
      _mm512_storeu_ps(y + j, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + j), _mm512_loadu_ps(y + j)));
  }
#endif
  for (; j < n; ++j) y[j] = std::fma(a, x[j], y[j]);
}

/// \brief y[j] = a·x[j] for j in [0, n).
template <class Scalar>
inline void scale_into(Scalar a, const Scalar* x, Scalar* y, Index n) {
  for (Index j = 0; j < n; ++j) y[j] = a * x[j];
}

/// \brief y[j] = a·(x[j] − c) for j in [0, n) (exactly a·x[j] when c = 0).
template <class Scalar>
inline void scale_shifted_into(Scalar a, const Scalar* x, Scalar c, Scalar* y, Index n) {
  for (Index j = 0; j < n; ++j) y[j] = a * (x[j] - c);
}

/// \brief y[j] = fma(a, x[j] − c, y[j]) for j in [0, n) (exactly fma(a, x[j], y[j]) when c = 0).
template <class Scalar>
inline void fma_shifted_into(Scalar a, const Scalar* x, Scalar c, Scalar* y, Index n) {
  Index j = 0;
#if FQT_HAVE_AVX512
  if constexpr (std::is_same_v<Scalar, float>) {
    const __m512 va = _mm512_set1_ps(a), vc = _mm512_set1_ps(c);
    for (; j + 16 <= n; j += 16) {
      const __m512 shifted = _mm512_sub_ps(_mm512_loadu_ps(x + j), vc);
      _mm512_storeu_ps(y + j, _mm512_fmadd_ps(va, shifted, _mm512_loadu_ps(y + j)));
    }
  }
#endif
  for (; j < n; ++j) y[j] = std::fma(a, x[j] - c, y[j]);
}

/// \brief y[j] = y[j]·a, then + c when c ≠ 0 as fma(y[j], a, c) (the sign of a zero is kept
/// when c = 0); false if a result is not finite.
template <class Scalar>
inline bool scale_shift_in_place(Scalar a, Scalar c, Scalar* y, Index n) {
  Index j = 0;
  bool finite = true;
#if FQT_HAVE_AVX512
  if constexpr (std::is_same_v<Scalar, float>) {
    const __m512 va = _mm512_set1_ps(a), vc = _mm512_set1_ps(c);
    __mmask16 bad = 0;
    for (; j + 16 <= n; j += 16) {
      const __m512 v = c != 0 ? _mm512_fmadd_ps(_mm512_loadu_ps(y + j), va, vc)
                              : _mm512_mul_ps(_mm512_loadu_ps(y + j), va);
      _mm512_storeu_ps(y + j, v);
      // v − v is 0 for finite v and NaN for ±inf or NaN.
      bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_sub_ps(v, v), _CMP_UNORD_Q);
    }
    finite = bad == 0;
  }
#endif
  for (; j < n; ++j) {
    y[j] = c != 0 ? std::fma(y[j], a, c) : y[j] * a;
    finite = finite && std::isfinite(y[j]);
  }
  return finite;
}

/// \brief t[j] = fma(−v2, w[j], s·(x[j] − c)) — one transformed BHQ row — and its min and max in
/// the same pass; false if any result is not finite. t may alias x.
template <class Scalar>
inline bool transformed_row(Scalar s, const Scalar* x, Scalar c, Scalar v2, const Scalar* w,
                            Scalar* t, Index n, Scalar& lo, Scalar& hi) {
  Index j = 0;
  Scalar l = std::numeric_limits<Scalar>::infinity(), h = -l;
  bool nan = false;
#if FQT_HAVE_AVX512
  if constexpr (std::is_same_v<Scalar, float>) {
    if (n >= 16) {
      const __m512 vs = _mm512_set1_ps(s), vneg = _mm512_set1_ps(-v2), vc = _mm512_set1_ps(c);
      __m512 vl = _mm512_set1_ps(l), vh = _mm512_set1_ps(h);
      __mmask16 bad = 0;
      for (; j + 16 <= n; j += 16) {
        const __m512 shifted = _mm512_sub_ps(_mm512_loadu_ps(x + j), vc);
        const __m512 v = _mm512_fmadd_ps(vneg, _mm512_loadu_ps(w + j), _mm512_mul_ps(vs, shifted));
        _mm512_storeu_ps(t + j, v);
        vl = _mm512_min_ps(vl, v), vh = _mm512_max_ps(vh, v);
        bad |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      }
      nan = bad != 0;
      l = _mm512_reduce_min_ps(vl);
      h = _mm512_reduce_max_ps(vh);
    }
  }
#endif
  for (; j < n; ++j) {
    const Scalar v = std::fma(-v2, w[j], s * (x[j] - c));
    t[j] = v;
    nan = nan || std::isnan(v);
    l = std::min(l, v);
    h = std::max(h, v);
  }
  lo = l;
  hi = h;
  return !nan && std::isfinite(lo) && std::isfinite(hi) && std::isfinite(hi - lo);
}
FQT_SIMD_DIAGNOSTICS_POP

}  // namespace detail
}  // namespace fqt
