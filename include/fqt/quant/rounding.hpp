#pragma once
/// \file
/// \brief Rounding policies and the row kernels that apply an affine map and round.
///
/// Every kernel computes y = fma(x, inv_scale, zero_point) in Scalar, then a code in [0, B]:
/// - `Nearest`: round half to even (deterministic; the forward quantizer Q_f).
/// - `Stochastic`: ⌊y⌋ + [y − ⌊y⌋ > u] with u = (2r + 1)/2^17 and r the element's 16-bit uniform
///   (core/random.hpp). P(round up) = ⌈2^16·f − ½⌉/2^16 for the fractional part f, so
///   |E[code] − y| ≤ 2^-17 of one step: 16 random bits per element, a bias far below the float
///   resolution of y itself. A value exactly on the grid (f = 0) is never moved.
/// The AVX-512 path and the portable path execute the same IEEE operations (one fma, floor,
/// subtract, compare), so their codes are bit-identical.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/quant/grid.hpp"

namespace fqt {

/// \brief Deterministic round-to-nearest (half to even). Biased; for the forward pass.
struct Nearest {
  static constexpr bool is_stochastic = false;
};

/// \brief Unbiased stochastic rounding driven by a counter-based Philox stream.
struct Stochastic {
  static constexpr bool is_stochastic = true;
};

namespace detail {

/// Probability that stochastic rounding rounds up, for fractional part f (exact, 16-bit uniforms).
inline double round_up_probability(double f) {
  if (!(f > 0)) return 0;
  const double count = std::ceil(f * 65536.0 - 0.5);
  return std::clamp(count, 0.0, 65536.0) / 65536.0;
}

/// \brief Software prefetch of a few rows, spread over the chunks of a quantize loop, so that the
/// rows a caller reads next arrive while this row's rounding computes (BHQ's next group).
struct Prefetcher {
  const char* const* rows = nullptr;  ///< start of each row to fetch
  Index count = 0;                    ///< number of rows
  Index bytes = 0;                    ///< bytes per row
  Index lines_per_step = 0;           ///< cache lines to request per call of step()
  Index row = 0, offset = 0;          ///< cursor

  void step() {
    for (Index k = 0; k < lines_per_step && row < count; ++k) {
#if defined(__GNUC__)
      __builtin_prefetch(rows[row] + offset, 0, 2);
#endif
      offset += 64;
      if (offset >= bytes) offset = 0, ++row;
    }
  }
};

template <class Scalar>
inline Scalar round_stochastic(Scalar y, std::uint16_t r, Scalar b) {
  const Scalar fl = std::floor(y);
  const Scalar u = static_cast<Scalar>(2 * static_cast<std::int32_t>(r) + 1) * Scalar(0x1.0p-17);
  const Scalar q = fl + ((y - fl) > u ? Scalar(1) : Scalar(0));
  return std::min(std::max(q, Scalar(0)), b);
}

/// \brief Quantizes elements [j0, j1) of one row (element index k0 + j for the noise) with a map
/// that is constant over the row (inv, zp) or per column (inv_col, zp_col non-null), writing
/// codes or values. The scalar reference; `quantize_row` dispatches to SIMD where it can.
template <class Rounding, class Scalar, class Out>
inline void quantize_span_scalar(const Scalar* x, Index j0, Index j1, Scalar inv, Scalar zp,
                                 const Scalar* inv_col, const Scalar* zp_col, Scalar scale,
                                 const Scalar* scale_col, Scalar b, const std::uint16_t* noise,
                                 Out* out) {
  for (Index j = j0; j < j1; ++j) {
    const Scalar iv = inv_col ? inv_col[j] : inv;
    const Scalar z = zp_col ? zp_col[j] : zp;
    const Scalar y = std::fma(x[j], iv, z);
    Scalar q;
    if constexpr (Rounding::is_stochastic) {
      q = round_stochastic(y, noise[j - j0], b);
    } else {
      q = std::min(std::max(std::nearbyint(y), Scalar(0)), b);
    }
    if constexpr (std::is_floating_point_v<Out>) {
      out[j] = (q - z) * (scale_col ? scale_col[j] : scale);
    } else {
      out[j] = static_cast<Out>(q);
    }
  }
}

#if FQT_HAVE_AVX512
FQT_SIMD_DIAGNOSTICS_PUSH
/// 16 floats of one full chunk, stochastic: returns the rounded codes as floats.
inline __m512 round_stochastic16(__m512 x, __m512 inv, __m512 zp, __m512i r, __m512 b) {
  const __m512 y = _mm512_fmadd_ps(x, inv, zp);
  const __m512 fl = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512i twice = _mm512_add_epi32(_mm512_slli_epi32(r, 1), _mm512_set1_epi32(1));
  const __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(twice), _mm512_set1_ps(0x1.0p-17f));
  const __mmask16 up = _mm512_cmp_ps_mask(_mm512_sub_ps(y, fl), u, _CMP_GT_OQ);
  const __m512 q = _mm512_mask_add_ps(fl, up, fl, _mm512_set1_ps(1.0f));
  return _mm512_min_ps(_mm512_max_ps(q, _mm512_setzero_ps()), b);
}

template <class Out>
inline void store16(Out* out, __m512 q, __m512 zp, __m512 scale) {
  if constexpr (std::is_same_v<Out, float>) {
    _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_sub_ps(q, zp), scale));
  } else if constexpr (sizeof(Out) == 1) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q)));
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                        _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(q)));
  }
}

/// One full chunk (128 elements starting at x) with AVX-512.
template <class Out>
inline void stochastic_chunk_avx512(const float* x, const __m512i words[4], float inv, float zp,
                                    const float* inv_col, const float* zp_col, float scale,
                                    const float* scale_col, float b, Out* out) {
  const __m512 vb = _mm512_set1_ps(b);
  const __m512i mask16 = _mm512_set1_epi32(0xFFFF);
  for (int t = 0; t < 8; ++t) {
    const __m512i w = words[t % 4];
    const __m512i r = t < 4 ? _mm512_and_si512(w, mask16) : _mm512_srli_epi32(w, 16);
    const __m512 vinv = inv_col ? _mm512_loadu_ps(inv_col + 16 * t) : _mm512_set1_ps(inv);
    const __m512 vzp = zp_col ? _mm512_loadu_ps(zp_col + 16 * t) : _mm512_set1_ps(zp);
    const __m512 vscale = scale_col ? _mm512_loadu_ps(scale_col + 16 * t) : _mm512_set1_ps(scale);
    const __m512 q = round_stochastic16(_mm512_loadu_ps(x + 16 * t), vinv, vzp, r, vb);
    store16(out + 16 * t, q, vzp, vscale);
  }
}
FQT_SIMD_DIAGNOSTICS_POP
#endif

/// \brief Quantizes one row x[0, n) whose first element has the global (row-major) index k0.
/// The map is the row's (inv, zp, scale) or, when the *_col pointers are non-null, per column.
/// Out is Code (codes) or Scalar (dequantized values).
template <class Rounding, class Scalar, class Out>
inline void quantize_row(const Scalar* x, Index n, std::uint64_t k0, const AffineMap<Scalar>& map,
                         const Scalar* inv_col, const Scalar* zp_col, const Scalar* scale_col,
                         int max_code, const Philox& rng, Out* out,
                         Prefetcher* prefetch = nullptr) {
  const Scalar b = static_cast<Scalar>(max_code);
  if constexpr (!Rounding::is_stochastic) {
    quantize_span_scalar<Rounding>(x, 0, n, map.inv_scale, map.zero_point, inv_col, zp_col,
                                   map.scale, scale_col, b, nullptr, out);
  } else {
    alignas(64) std::uint16_t noise[kChunk];
    const std::uint64_t k_end = k0 + static_cast<std::uint64_t>(n);
    std::uint64_t k = k0;
    while (k < k_end) {
      if (prefetch) prefetch->step();
      const std::uint64_t chunk = k / kChunk;
      const std::uint64_t chunk_begin = chunk * kChunk;
      const std::uint64_t stop = std::min(chunk_begin + kChunk, k_end);
      const Index j0 = static_cast<Index>(k - k0);
      const Index j1 = static_cast<Index>(stop - k0);
#if FQT_HAVE_AVX512
      if constexpr (std::is_same_v<Scalar, float>) {
        __m512i words[4];
        philox16_avx512(rng, chunk, words);
        if (k == chunk_begin && stop == chunk_begin + kChunk) {
          stochastic_chunk_avx512(x + j0, words, map.inv_scale, map.zero_point,
                                  inv_col ? inv_col + j0 : nullptr, zp_col ? zp_col + j0 : nullptr,
                                  map.scale, scale_col ? scale_col + j0 : nullptr, b, out + j0);
          k = stop;
          continue;
        }
        alignas(64) std::uint32_t lanes[4][16];
        for (int w = 0; w < 4; ++w) _mm512_store_si512(lanes[w], words[w]);
        for (int w = 0; w < 4; ++w) {
          for (int l = 0; l < 16; ++l) {
            noise[16 * w + l] = static_cast<std::uint16_t>(lanes[w][l]);
            noise[64 + 16 * w + l] = static_cast<std::uint16_t>(lanes[w][l] >> 16);
          }
        }
      } else {
        uniform16_chunk(rng, chunk, noise);
      }
#else
      uniform16_chunk(rng, chunk, noise);
#endif
      quantize_span_scalar<Rounding>(x, j0, j1, map.inv_scale, map.zero_point, inv_col, zp_col,
                                     map.scale, scale_col, b, noise + (k - chunk_begin), out);
      k = stop;
    }
  }
}

/// \brief Σ_j p_j(1 − p_j) over x[0, n) under one map (inv, z): the rounding variance in units of
/// Δ², p_j the exact probability that stochastic rounding rounds y_j = fma(x_j, inv, z) up
/// (0 at the clamped ends of the grid [0, B]). AVX-512 for float, with the same IEEE operations as
/// the portable loop for y; the sum is accumulated in double (in a different order on the two
/// paths, so the two agree to rounding, not bit for bit).
template <class Scalar>
inline double row_rounding_sum(const Scalar* x, Index n, Scalar inv, Scalar z, Scalar b) {
  Index j = 0;
  double total = 0;
#if FQT_HAVE_AVX512
  if constexpr (std::is_same_v<Scalar, float>) {
    FQT_SIMD_DIAGNOSTICS_PUSH
    const __m512 vinv = _mm512_set1_ps(inv), vz = _mm512_set1_ps(z), vb = _mm512_set1_ps(b);
    const __m512 zero = _mm512_setzero_ps();
    const __m512d scale = _mm512_set1_pd(65536.0), half = _mm512_set1_pd(0.5);
    const __m512d lo = _mm512_setzero_pd(), hi = _mm512_set1_pd(65536.0);
    const __m512d unit = _mm512_set1_pd(1.0 / 65536.0);
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    for (; j + 16 <= n; j += 16) {
      const __m512 y = _mm512_fmadd_ps(_mm512_loadu_ps(x + j), vinv, vz);
      const __m512 f =
          _mm512_sub_ps(y, _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
      const __mmask16 inside =
          _mm512_cmp_ps_mask(y, zero, _CMP_GT_OQ) & _mm512_cmp_ps_mask(y, vb, _CMP_LT_OQ);
      const __m512d f0 = _mm512_cvtps_pd(_mm512_castps512_ps256(f));
      const __m512d f1 =
          _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
      auto probability = [&](__m512d fr) {
        const __m512d c = _mm512_roundscale_pd(_mm512_fmsub_pd(fr, scale, half),
                                               _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
        return _mm512_mul_pd(_mm512_min_pd(_mm512_max_pd(c, lo), hi), unit);
      };
      const __m512d p0 = probability(f0), p1 = probability(f1);
      acc0 = _mm512_mask_add_pd(acc0, static_cast<__mmask8>(inside), acc0,
                                _mm512_fnmadd_pd(p0, p0, p0));
      acc1 = _mm512_mask_add_pd(acc1, static_cast<__mmask8>(inside >> 8), acc1,
                                _mm512_fnmadd_pd(p1, p1, p1));
    }
    total = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
    FQT_SIMD_DIAGNOSTICS_POP
  }
#endif
  for (; j < n; ++j) {
    const Scalar y = std::fma(x[j], inv, z);
    if (!(y > 0) || !(y < b)) continue;  // clamped at an end of the grid: deterministic
    const double p = round_up_probability(static_cast<double>(y - std::floor(y)));
    total += p * (1 - p);
  }
  return total;
}

/// \brief Exact E‖Q(x) − x‖² over one row's elements [0, n) under the given map (in units of the
/// original values, before any inverse transform), for stochastic rounding; 0 for Nearest.
template <class Scalar>
inline double row_variance(const Scalar* x, Index n, const AffineMap<Scalar>& map,
                           const Scalar* inv_col, const Scalar* zp_col, const Scalar* scale_col,
                           int max_code) {
  const Scalar b = static_cast<Scalar>(max_code);
  if (!inv_col) {
    // One map for the row: Σ p(1 − p), then Δ² once (0 stays 0 even when Δ² overflows).
    const double sum = row_rounding_sum(x, n, map.inv_scale, map.zero_point, b);
    const double s = static_cast<double>(map.scale);
    return sum > 0 ? s * s * sum : 0.0;
  }
  double total = 0;
  for (Index j = 0; j < n; ++j) {
    const Scalar iv = inv_col[j];
    const Scalar z = zp_col[j];
    const Scalar y = std::fma(x[j], iv, z);
    if (!(y > 0) || !(y < b)) continue;  // clamped at an end of the grid: deterministic
    const double p = round_up_probability(static_cast<double>(y - std::floor(y)));
    if (!(p > 0 && p < 1)) continue;  // on the grid: exact (and Δ² may overflow, inf·0)
    const double s = static_cast<double>(scale_col[j]);
    total += s * s * p * (1 - p);
  }
  return total;
}

}  // namespace detail
}  // namespace fqt
