// Philox streams (core/random.hpp), the rounding kernels (quant/rounding.hpp) and thread
// independence (core/parallel.hpp).
#include <catch2/catch.hpp>
#include <fqt/quant.hpp>
#include <set>

#include "support/quant_support.hpp"

using fqt::Index;
using fqt::Matrix;
using fqt::Philox;

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vector", "[core][random]") {
  // Random123's kat_vectors: philox4x32 10 rounds, counter 0, key 0.
  const auto w = Philox(0, 0).block(0);
  REQUIRE(w[0] == 0x6627e8d5u);
  REQUIRE(w[1] == 0xe169c58du);
  REQUIRE(w[2] == 0xbc57ac4cu);
  REQUIRE(w[3] == 0x9b00dbd8u);
}

TEST_CASE("uniforms follow the documented chunk layout on every path", "[core][random]") {
  const Philox rng(0x0123456789abcdefULL, 0xfedcba9876543210ULL);
  for (std::uint64_t chunk : {0ULL, 1ULL, 77ULL, (1ULL << 28) - 1, (1ULL << 32) + 3}) {
    std::uint16_t u[128];
    fqt::detail::uniform16_chunk(rng, chunk, u);
    for (std::uint64_t j = 0; j < 128; ++j) {
      const auto w = rng.block(chunk * 16 + j % 16);
      const auto expected = static_cast<std::uint16_t>(w[(j / 16) % 4] >> (16 * (j / 64)));
      REQUIRE(u[j] == expected);
      REQUIRE(rng.uniform16(chunk * 128 + j) == expected);
    }
#if FQT_HAVE_AVX512
    __m512i words[4];
    fqt::detail::philox16_avx512(rng, chunk, words);
    alignas(64) std::uint32_t lanes[4][16];
    for (int i = 0; i < 4; ++i) _mm512_store_si512(lanes[i], words[i]);
    for (int lane = 0; lane < 16; ++lane) {
      const auto w = rng.block(chunk * 16 + static_cast<std::uint64_t>(lane));
      for (int i = 0; i < 4; ++i) REQUIRE(lanes[i][lane] == w[static_cast<std::size_t>(i)]);
    }
#endif
  }
}

TEST_CASE("substreams are distinct, reproducible and independent", "[core][random]") {
  const Philox root(42);
  std::set<std::uint64_t> ids{root.stream()};
  for (std::uint64_t step = 0; step < 20; ++step)
    for (std::uint64_t layer = 0; layer < 5; ++layer)
      for (std::uint64_t role = 0; role < 3; ++role) {
        const Philox s = root.substream(step, layer, role);
        REQUIRE(s.seed() == root.seed());
        REQUIRE(s.stream() == root.substream(step, layer, role).stream());
        ids.insert(s.stream());
      }
  REQUIRE(ids.size() == 1 + 20 * 5 * 3);
  // Two streams' uniforms are uncorrelated: the sample correlation of 20000 pairs is within
  // 6 standard errors (1/sqrt(n)) of zero, and each mean within 6 standard errors of 1/2.
  const Philox a = root.substream(1), b = root.substream(2);
  const int n = 20000;
  double sa = 0, sb = 0, sab = 0, saa = 0, sbb = 0;
  for (int k = 0; k < n; ++k) {
    const double x = a.uniform(k), y = b.uniform(k);
    sa += x, sb += y, sab += x * y, saa += x * x, sbb += y * y;
  }
  const double ma = sa / n, mb = sb / n;
  const double corr = (sab / n - ma * mb) / std::sqrt((saa / n - ma * ma) * (sbb / n - mb * mb));
  REQUIRE(std::abs(corr) < 6 / std::sqrt(double(n)));
  REQUIRE(std::abs(ma - 0.5) < 6 * std::sqrt(1.0 / 12 / n));
  // Normals: mean 0 and variance 1 within 6 standard errors.
  double s1 = 0, s2 = 0;
  for (int k = 0; k < n; ++k) {
    const double z = a.normal(k);
    s1 += z, s2 += z * z;
  }
  REQUIRE(std::abs(s1 / n) < 6 / std::sqrt(double(n)));
  REQUIRE(std::abs(s2 / n - 1) < 6 * std::sqrt(2.0 / n));
}

TEST_CASE("the quantize kernels are bit-identical to the documented scalar rule", "[quant]") {
  // Reference: y = fma(x, 1/Δ, z), code = clamp(⌊y⌋ + [y − ⌊y⌋ > (2r + 1)/2^17], 0, B), with r
  // the element's 16-bit uniform. Rows start at unaligned element indices (cols = 300) so both
  // the full-chunk SIMD path and the partial-chunk path run.
  const Matrix<float> x = fqt_test::sparse<float>(9, 300, 0.2, 31);
  const Philox rng(5, 6);
  for (int bits : {1, 3, 8}) {
    const fqt::PerSampleQuantizer<float> q(bits);
    const auto r = q.quantize(x, rng);
    const float b = float((1 << bits) - 1);
    for (Index i = 0; i < x.rows(); ++i) {
      const float z = r.zero_point(i), inv = 1 / r.scale(i);
      for (Index j = 0; j < x.cols(); ++j) {
        const float y = std::fma(x(i, j), inv, z);
        const float fl = std::floor(y);
        const auto u16 = rng.uniform16(static_cast<std::uint64_t>(i * x.cols() + j));
        const float u = float(2 * int(u16) + 1) * 0x1.0p-17f;
        const float code = std::min(std::max(fl + (y - fl > u ? 1.f : 0.f), 0.f), b);
        REQUIRE(static_cast<float>(r.codes(i, j)) == code);
      }
    }
  }
}

TEST_CASE("results are bit-identical with 1 and 2 threads", "[core][parallel]") {
  const Matrix<float> x = fqt_test::sparse<float>(256, 300, 0.3, 2);
  const Philox rng(9, 1);
  auto run_all = [&] {
    std::vector<Matrix<float>> out;
    out.push_back(fqt::PerTensorQuantizer<float>(4)(x, rng));
    out.push_back(fqt::PerSampleQuantizer<float>(4)(x, rng));
    out.push_back(fqt::PerColumnQuantizer<float>(4)(x, rng));
    out.push_back(fqt::BlockHouseholderQuantizer<float>(4)(x, rng));
    out.push_back(fqt::BlockHouseholderQuantizer<float>(4).quantize(x, rng).codes.cast<float>());
    return out;
  };
  const int before = fqt::num_threads();
  fqt::set_num_threads(1);
  const auto one = run_all();
  fqt::set_num_threads(2);
  const auto two = run_all();
  fqt::set_num_threads(before);
  for (std::size_t k = 0; k < one.size(); ++k) REQUIRE(one[k] == two[k]);
  // Different streams give different noise.
  REQUIRE(fqt::PerSampleQuantizer<float>(4)(x, rng) !=
          fqt::PerSampleQuantizer<float>(4)(x, rng.substream(1)));
}
