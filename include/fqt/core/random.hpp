#pragma once
/// \file
/// \brief Counter-based random streams over Random123's Philox4x32-10.
///
/// A `Philox` is a value: a 64-bit seed (the key) and a 64-bit stream id. Every random number fqt
/// draws is a pure function of (seed, stream, index), so a result never depends on the number of
/// threads, on the order in which rows are processed, or on anything drawn before. A training step
/// derives the stream of each quantization as `rng.substream(step, layer, role)`.
///
/// **Uniforms for stochastic rounding.** Element k of a matrix (row-major index) gets a 16-bit
/// uniform integer r_k. Elements are grouped in chunks of 128; chunk c uses the 16 Philox blocks
/// with counters 16c … 16c+15, and element j of the chunk takes lane j mod 16, 32-bit word
/// (j / 16) mod 4, and half j / 64 of that word. This layout lets the AVX-512 path draw 16 blocks
/// at once and use the words in order with no shuffle; the portable path computes the same bits.

#include <Random123/philox.h>

#include <array>
#include <cmath>
#include <cstdint>

#include "fqt/core/simd.hpp"

namespace fqt {

/// \brief A counter-based random stream: (seed, stream) → Philox4x32-10 blocks.
class Philox {
 public:
  /// \param seed the key of the generator
  /// \param stream the stream id; distinct ids give independent streams
  explicit constexpr Philox(std::uint64_t seed = 0, std::uint64_t stream = 0) noexcept
      : seed_(seed), stream_(stream) {}

  constexpr std::uint64_t seed() const noexcept { return seed_; }
  constexpr std::uint64_t stream() const noexcept { return stream_; }

  /// \brief A stream derived from this one and (a, b, c), e.g. (step, layer, role). Derived ids
  /// are Philox hashes of the parent id and the arguments: distinct argument tuples give distinct,
  /// independent streams (up to 64-bit hash collisions), and none equals its parent.
  Philox substream(std::uint64_t a, std::uint64_t b = 0, std::uint64_t c = 0) const noexcept {
    std::uint64_t h = mix(stream_, 0x5bd1e995u);
    h = mix(h ^ a, 1);
    h = mix(h ^ b, 2);
    h = mix(h ^ c, 3);
    return Philox(seed_, h);
  }

  /// \brief The four 32-bit words of block `counter` of this stream.
  std::array<std::uint32_t, 4> block(std::uint64_t counter) const noexcept {
    r123::Philox4x32 gen;
    r123::Philox4x32::ctr_type ctr = {
        {static_cast<std::uint32_t>(counter), static_cast<std::uint32_t>(counter >> 32),
         static_cast<std::uint32_t>(stream_), static_cast<std::uint32_t>(stream_ >> 32)}};
    r123::Philox4x32::key_type key = {
        {static_cast<std::uint32_t>(seed_), static_cast<std::uint32_t>(seed_ >> 32)}};
    const auto out = gen(ctr, key);
    return {out.v[0], out.v[1], out.v[2], out.v[3]};
  }

  /// \brief The 16-bit uniform integer of element k (see the file comment for the layout).
  std::uint16_t uniform16(std::uint64_t k) const noexcept {
    const std::uint64_t j = k % 128;
    const auto words = block((k / 128) * 16 + j % 16);
    return static_cast<std::uint16_t>(words[(j / 16) % 4] >> (16 * (j / 64)));
  }

  /// \brief A double uniform on [0, 1) with 53 random bits, number k of this stream.
  double uniform(std::uint64_t k) const noexcept {
    const auto w = block(k);
    const std::uint64_t bits = (std::uint64_t{w[0]} << 21) ^ (std::uint64_t{w[1]} >> 11);
    return static_cast<double>(bits & ((std::uint64_t{1} << 53) - 1)) * 0x1.0p-53;
  }

  /// \brief A standard normal variate, number k of this stream (Box–Muller on one block).
  double normal(std::uint64_t k) const noexcept {
    const auto w = block(k);
    const std::uint64_t a = ((std::uint64_t{w[0]} << 32) | w[1]) >> 11;
    const std::uint64_t b = ((std::uint64_t{w[2]} << 32) | w[3]) >> 11;
    const double u1 = (static_cast<double>(a) + 0.5) * 0x1.0p-53;  // (0, 1): log is finite
    const double u2 = static_cast<double>(b) * 0x1.0p-53;
    constexpr double kTwoPi = 6.283185307179586476925286766559;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2);
  }

 private:
  static std::uint64_t mix(std::uint64_t x, std::uint32_t salt) noexcept {
    r123::Philox4x32 gen;
    r123::Philox4x32::ctr_type ctr = {
        {static_cast<std::uint32_t>(x), static_cast<std::uint32_t>(x >> 32), salt, 0x9e3779b9u}};
    r123::Philox4x32::key_type key = {{0x243f6a88u, 0x85a308d3u}};
    const auto out = gen(ctr, key);
    return (std::uint64_t{out.v[1]} << 32) | out.v[0];
  }

  std::uint64_t seed_;
  std::uint64_t stream_;
};

namespace detail {

/// Elements per chunk of uniforms (16 Philox blocks × 8 halves of 16 bits).
inline constexpr std::uint64_t kChunk = 128;

/// \brief The 128 16-bit uniforms of chunk `chunk`, in element order (portable path).
inline void uniform16_chunk(const Philox& rng, std::uint64_t chunk, std::uint16_t* out) noexcept {
  for (std::uint64_t lane = 0; lane < 16; ++lane) {
    const auto w = rng.block(chunk * 16 + lane);
    for (std::uint64_t word = 0; word < 4; ++word) {
      out[16 * word + lane] = static_cast<std::uint16_t>(w[word]);
      out[64 + 16 * word + lane] = static_cast<std::uint16_t>(w[word] >> 16);
    }
  }
}

#if FQT_HAVE_AVX512
FQT_SIMD_DIAGNOSTICS_PUSH
/// \brief Philox4x32-10 on 16 counters at once: words[w] holds word w of the 16 blocks with
/// counters 16·chunk + lane. Bit-identical to Random123's scalar philox4x32.
inline void philox16_avx512(const Philox& rng, std::uint64_t chunk, __m512i words[4]) noexcept {
  const std::uint64_t base = chunk * 16;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lo_base = _mm512_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(base)));
  __m512i c0 = _mm512_add_epi32(lo_base, lane);
  // Carry into the high word when the low word wraps inside these 16 counters.
  const __mmask16 wrapped = _mm512_cmplt_epu32_mask(c0, lo_base);
  __m512i c1 =
      _mm512_mask_add_epi32(_mm512_set1_epi32(static_cast<int>(base >> 32)), wrapped,
                            _mm512_set1_epi32(static_cast<int>(base >> 32)), _mm512_set1_epi32(1));
  __m512i c2 = _mm512_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(rng.stream())));
  __m512i c3 = _mm512_set1_epi32(static_cast<int>(rng.stream() >> 32));
  std::uint32_t k0 = static_cast<std::uint32_t>(rng.seed());
  std::uint32_t k1 = static_cast<std::uint32_t>(rng.seed() >> 32);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  constexpr __mmask16 kOdd = 0xAAAA;
  for (int round = 0; round < 10; ++round) {
    // 32×32→64 products of the even lanes, then of the odd lanes shifted down.
    const __m512i p0e = _mm512_mul_epu32(c0, m0);
    const __m512i p0o = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), m0);
    const __m512i p1e = _mm512_mul_epu32(c2, m1);
    const __m512i p1o = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), m1);
    const __m512i hi0 = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(p0e, 32), p0o);
    const __m512i lo0 = _mm512_mask_blend_epi32(kOdd, p0e, _mm512_slli_epi64(p0o, 32));
    const __m512i hi1 = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(p1e, 32), p1o);
    const __m512i lo1 = _mm512_mask_blend_epi32(kOdd, p1e, _mm512_slli_epi64(p1o, 32));
    const __m512i key0 = _mm512_set1_epi32(static_cast<int>(k0));
    const __m512i key1 = _mm512_set1_epi32(static_cast<int>(k1));
    // xor3 via ternary logic (0x96 = a ^ b ^ c).
    c0 = _mm512_ternarylogic_epi32(hi1, c1, key0, 0x96);
    c1 = lo1;
    c2 = _mm512_ternarylogic_epi32(hi0, c3, key1, 0x96);
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  words[0] = c0;
  words[1] = c1;
  words[2] = c2;
  words[3] = c3;
}
FQT_SIMD_DIAGNOSTICS_POP
#endif

}  // namespace detail
}  // namespace fqt
