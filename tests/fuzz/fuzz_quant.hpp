#pragma once
// The quantizer harnesses (fuzz_ptq, fuzz_psq, fuzz_per_column, fuzz_bhq): a matrix and the
// quantizer's settings decoded from the input, every public call made, every invariant checked.
//
// Input layout (all optional: missing bytes read as 0, missing elements are 0):
//   byte 0     flags: bit 0 double (else float), bit 1 Nearest (else Stochastic), bits 2 and 7
//              the grid (neither: Free, 2: ZeroAligned, 7: Paper, both: Auto), bits 3-6 all
//              set: tile the matrix to >= 64 x 1024 so that the parallel loops run on threads
//   byte 1     bits: kBits[byte % 16], 1..8 and the out-of-range 0, 9, -1, 16
//   byte 2, 3  rows, cols: byte % 41 (0..40, empty matrices included)
//   byte 4-11  the Philox seed; byte 12 the stream
//   then one element after another, row-major, each a tag byte and maybe a payload:
//     0x00-0x7f  a small number: (tag & 0x3f) - 32, halved when bit 6 is set (ties for Nearest)
//     0x80-0x9f  an exact zero, -0 when the tag is odd
//     0xa0-0xbf  special value kSpecial[tag - 0xa0] (±0, ±1, subnormals, ±max, ±inf, NaN, ...)
//     0xc0-0xff  the next 4 (float) or 8 (double) bytes as raw IEEE bits, little-endian
//
// Invariants, after every call:
// - only std::invalid_argument (bad bit width) and std::domain_error escape; a bit width out of
//   [1, 8] is refused by the constructor, a valid one is not, and nothing else is refused with
//   std::invalid_argument;
// - an input with a NaN or an Inf makes every call throw std::domain_error, naming the quantizer;
// - for a finite input, quantize and fake_quantize either both succeed or both throw
//   std::domain_error; on success codes lie in [0, B], the maps have the granularity's size,
//   the fake-quantized and dequantized values are finite; expected_variance and
//   element_variance, when they succeed, are finite and >= 0 and agree (relative 1e-6), and do
//   not exceed variance_bound (0 for Nearest);
// - fake_quantize is a pure function of (input, seed, stream) (bit-identical on a second call),
//   and of the input alone with Nearest (another stream gives the same bits); quantize into a
//   reused Quantized gives what a fresh one gets;
// - PTQ, PSQ, per-column: fake_quantize equals quantize(...).dequantize() bit for bit (the same
//   IEEE operations), and works in place; every value lies within one step of its group's range
//   [lo - Δ, hi + Δ] and within one step (half a step for Nearest) of its input, allowing a few
//   ulps of the range's magnitude; on Grid::ZeroAligned with at least 2 bits, an exact 0 of a
//   group whose range contains 0 comes back exactly 0;
// - BHQ: fake_quantize agrees with quantize(...).dequantize() within 16 (m + 2) ulps of the
//   group's transformed magnitude divided by the row's scale, plus that of the row's offset (m
//   the group size: the inverse reflection sums m rows, then scales and shifts one).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>

#include "fqt/quant.hpp"
#include "fuzz_support.hpp"

namespace fqt_fuzz {

using fqt::Index;
template <class T>
using Matrix = fqt::Matrix<T>;

enum class Kind { PerTensor, PerSample, PerColumn, BlockHouseholder };

template <Kind kKind, class Scalar, class Rounding>
struct QuantizerOf;
template <class Scalar, class Rounding>
struct QuantizerOf<Kind::PerTensor, Scalar, Rounding> {
  using type = fqt::PerTensorQuantizer<Scalar, Rounding>;
};
template <class Scalar, class Rounding>
struct QuantizerOf<Kind::PerSample, Scalar, Rounding> {
  using type = fqt::PerSampleQuantizer<Scalar, Rounding>;
};
template <class Scalar, class Rounding>
struct QuantizerOf<Kind::PerColumn, Scalar, Rounding> {
  using type = fqt::PerColumnQuantizer<Scalar, Rounding>;
};
template <class Scalar, class Rounding>
struct QuantizerOf<Kind::BlockHouseholder, Scalar, Rounding> {
  using type = fqt::BlockHouseholderQuantizer<Scalar, Rounding>;
};

inline constexpr int kBits[16] = {1, 2, 3, 4, 5, 6, 7, 8, 2, 3, 4, 8, 0, 9, -1, 16};
inline constexpr std::uint8_t kLargeFlags = 0x78;

/// The special values of tags 0xa0-0xbf.
template <class Scalar>
Scalar special(int i) {
  using L = std::numeric_limits<Scalar>;
  const Scalar table[32] = {Scalar(0),
                            -Scalar(0),
                            Scalar(1),
                            Scalar(-1),
                            L::denorm_min(),
                            -L::denorm_min(),
                            L::min(),
                            -L::min(),
                            L::max(),
                            L::lowest(),
                            L::infinity(),
                            -L::infinity(),
                            L::quiet_NaN(),
                            -L::quiet_NaN(),
                            L::epsilon(),
                            L::max() / 2,
                            -L::max() / 2,
                            L::max() / 255,
                            std::sqrt(L::max()),
                            -std::sqrt(L::max()),
                            Scalar(0.5),
                            1 + L::epsilon(),
                            1 - L::epsilon() / 2,
                            Scalar(16777216),
                            Scalar(9007199254740992.0),
                            std::is_same_v<Scalar, float> ? Scalar(1e-30f) : Scalar(1e-300),
                            3 * L::denorm_min(),
                            L::min() / 2,
                            Scalar(1e5),
                            Scalar(-1e5),
                            Scalar(0.1),
                            std::nextafter(L::max(), Scalar(0))};
  return table[i & 31];
}

/// The settings decoded from the first 13 bytes.
struct Settings {
  std::uint8_t flags = 0;
  bool is_double = false, nearest = false, zero_aligned = false, large = false;
  fqt::Grid grid = fqt::Grid::Free;
  int bits = 1;
  Index rows = 0, cols = 0;
  std::uint64_t seed = 0, stream = 0;
};

inline Settings decode_settings(ByteReader& in) {
  Settings s;
  s.flags = in.byte();
  s.is_double = s.flags & 1;
  s.nearest = s.flags & 2;
  s.zero_aligned = (s.flags & 0x84) == 0x04;
  s.grid = (s.flags & 0x80) ? ((s.flags & 4) ? fqt::Grid::Auto : fqt::Grid::Paper)
                            : ((s.flags & 4) ? fqt::Grid::ZeroAligned : fqt::Grid::Free);
  s.large = (s.flags & kLargeFlags) == kLargeFlags;
  s.bits = kBits[in.byte() % 16];
  s.rows = in.byte() % 41;
  s.cols = in.byte() % 41;
  s.seed = in.uint(8);
  s.stream = in.byte();
  return s;
}

template <class Scalar>
Matrix<Scalar> decode_matrix(ByteReader& in, const Settings& s) {
  Matrix<Scalar> x(s.rows, s.cols);
  for (Index k = 0; k < x.size(); ++k) {
    Scalar v = 0;
    if (!in.empty()) {
      const std::uint8_t tag = in.byte();
      if (tag < 0x80) {
        v = static_cast<Scalar>((tag & 0x3f) - 32) * ((tag & 0x40) ? Scalar(0.5) : Scalar(1));
      } else if (tag < 0xa0) {
        v = (tag & 1) ? -Scalar(0) : Scalar(0);
      } else if (tag < 0xc0) {
        v = special<Scalar>(tag - 0xa0);
      } else {
        using Bits = std::conditional_t<sizeof(Scalar) == 4, std::uint32_t, std::uint64_t>;
        const Bits bits = static_cast<Bits>(in.uint(sizeof(Scalar)));
        std::memcpy(&v, &bits, sizeof(v));
      }
    }
    x.data()[k] = v;
  }
  if (s.large && x.size() > 0) {
    // Just enough work for parallel_for to use threads: >= 2^16 elements in >= 8 rows.
    const Index row_copies = (8 + s.rows - 1) / s.rows;
    const Index col_copies =
        (65536 + row_copies * s.rows * s.cols - 1) / (row_copies * s.rows * s.cols);
    const Matrix<Scalar> tiled = x.replicate(row_copies, col_copies);
    x = tiled;
  }
  return x;
}

template <class Scalar>
std::string describe(const char* quantizer, const Settings& s, const Matrix<Scalar>& x) {
  std::ostringstream out;
  out.precision(std::numeric_limits<Scalar>::max_digits10);
  out << quantizer << "<" << (s.is_double ? "double" : "float") << ", "
      << (s.nearest ? "Nearest" : "Stochastic") << ">(bits " << s.bits << ", "
      << "Grid::" << fqt::to_string(s.grid) << "), Philox(" << s.seed << ", " << s.stream << "), x "
      << x.rows() << " x " << x.cols() << (s.large ? " (tiled)" : "") << " = [";
  const Index shown = s.rows * s.cols;
  for (Index k = 0; k < shown && k < x.size() && k < 200; ++k) {
    const Index i = k / std::max<Index>(s.cols, 1), j = k % std::max<Index>(s.cols, 1);
    out << (k == 0 ? "" : (j == 0 ? "; " : ", ")) << x(i, j);
  }
  out << (shown > 200 ? ", ...]" : "]");
  return out.str();
}

enum class Threw { Nothing, DomainError, InvalidArgument };

template <class Call>
Threw attempt(const char* name, Call&& call, std::string& message) {
  try {
    call();
    return Threw::Nothing;
  } catch (const std::domain_error& e) {
    message = e.what();
    return Threw::DomainError;
  } catch (const std::invalid_argument& e) {
    message = e.what();
    return Threw::InvalidArgument;
  } catch (...) {
    unexpected_exception(name);
  }
}

template <class Scalar>
bool same_bits(const Matrix<Scalar>& a, const Matrix<Scalar>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         (a.size() == 0 || std::memcmp(a.data(), b.data(),
                                       sizeof(Scalar) * static_cast<std::size_t>(a.size())) == 0);
}

template <class Scalar>
bool same_quantized(const fqt::Quantized<Scalar, std::uint8_t>& a,
                    const fqt::Quantized<Scalar, std::uint8_t>& b) {
  return a.codes == b.codes && a.granularity == b.granularity && a.bits == b.bits &&
         a.scale.size() == b.scale.size() && a.scale == b.scale && a.zero_point == b.zero_point &&
         a.transform.has_value() == b.transform.has_value();
}

template <Kind kKind, class Scalar, class Rounding>
void check_quantizer(const Settings& s, const Matrix<Scalar>& x) {
  using Quantizer = typename QuantizerOf<kKind, Scalar, Rounding>::type;
  using Wide = long double;
  constexpr bool kAffine = kKind != Kind::BlockHouseholder;
  const char* name = Quantizer::name();
  context() = describe(name, s, x);

  const fqt::Grid grid = s.grid;
  std::optional<Quantizer> q;
  std::string message;
  const Threw built = attempt(
      "the constructor", [&] { q.emplace(s.bits, grid); }, message);
  if (s.bits < 1 || s.bits > 8) {
    if (built != Threw::InvalidArgument) {
      finding("bits outside [1, 8] throw std::invalid_argument", "bits ", s.bits, " accepted");
    }
    return;
  }
  if (built != Threw::Nothing) finding("bits in [1, 8] are accepted", message);

  const bool finite = x.allFinite();
  const fqt::Philox rng(s.seed, s.stream), other(s.seed, s.stream + 1);
  const int b = (1 << s.bits) - 1;
  const Scalar eps = std::numeric_limits<Scalar>::epsilon();
  const Wide tiny = std::numeric_limits<Scalar>::denorm_min();

  // True when the call succeeded; checks what a refusal may be.
  auto succeeded = [&](const char* call, Threw threw, const std::string& what) {
    if (threw == Threw::InvalidArgument) {
      finding("only bad bit widths throw std::invalid_argument", call, ": ", what);
    }
    if (!finite) {
      if (threw != Threw::DomainError) {
        finding("an input with NaN or Inf throws std::domain_error", call, " did not throw");
      }
      if (what.find("Quantizer") == std::string::npos) {
        finding("the domain_error of a NaN or Inf names the quantizer", call, ": ", what);
      }
      return false;
    }
    return threw == Threw::Nothing;
  };

  Matrix<Scalar> fake;
  const bool fake_ok = succeeded("fake_quantize",
                                 attempt(
                                     "fake_quantize", [&] { fake = (*q)(x, rng); }, message),
                                 message);
  const std::string fake_message = message;
  fqt::Quantized<Scalar, std::uint8_t> quantized;
  const bool quantize_ok =
      succeeded("quantize",
                attempt(
                    "quantize", [&] { quantized = q->quantize(x, rng); }, message),
                message);
  // BHQ's codes may stand for values past the largest finite Scalar (T⁻¹ of an input within
  // rounding of it): then fake_quantize and dequantize throw std::domain_error, as documented.
  Matrix<Scalar> values;
  std::string dequantize_message;
  const Threw dequantized =
      quantize_ok ? attempt(
                        "dequantize", [&] { values = quantized.dequantize(); }, dequantize_message)
                  : Threw::Nothing;
  const bool unrepresentable = !kAffine && dequantized == Threw::DomainError && !fake_ok;
  if (finite && fake_ok != quantize_ok && !unrepresentable) {
    finding("quantize and fake_quantize refuse the same inputs",
            "fake_quantize: ", fake_ok ? "ok" : fake_message,
            "; quantize: ", quantize_ok ? "ok" : message,
            "; dequantize: ", dequantized == Threw::Nothing ? "ok" : dequantize_message);
  }

  // A tiled input (the parallel paths) gets the checks of its results' consistency; the
  // per-element checks, already made on the tile itself, would cost more than all calls.
  const bool thorough = !s.large;

  if (fake_ok) {
    if (fake.rows() != x.rows() || fake.cols() != x.cols()) {
      finding("fake_quantize keeps the shape", fake.rows(), " x ", fake.cols());
    }
    if (!fake.allFinite()) finding("fake_quantize of a finite input is finite", "");
  }
  if (fake_ok && thorough) {
    Matrix<Scalar> again;
    if (attempt(
            "fake_quantize (again)", [&] { again = (*q)(x, rng); }, message) != Threw::Nothing ||
        !same_bits(fake, again)) {
      finding("fake_quantize is a pure function of (input, seed, stream)", message);
    }
    if constexpr (!Rounding::is_stochastic) {
      if (attempt(
              "fake_quantize (other stream)", [&] { again = (*q)(x, other); }, message) !=
              Threw::Nothing ||
          !same_bits(fake, again)) {
        finding("Nearest does not depend on the stream", message);
      }
    }
  }

  if (quantize_ok) {
    const fqt::Granularity granularity_expected =
        kKind == Kind::PerTensor   ? fqt::Granularity::PerTensor
        : kKind == Kind::PerColumn ? fqt::Granularity::PerColumn
                                   : fqt::Granularity::PerRow;
    const Index groups_expected = kKind == Kind::PerTensor   ? 1
                                  : kKind == Kind::PerColumn ? x.cols()
                                                             : x.rows();
    if (quantized.codes.rows() != x.rows() || quantized.codes.cols() != x.cols() ||
        quantized.bits != s.bits || quantized.granularity != granularity_expected ||
        quantized.scale.size() != groups_expected ||
        quantized.zero_point.size() != groups_expected ||
        (kAffine && quantized.transform.has_value())) {
      finding("quantize gives codes of x's shape, its bits, and one map per group",
              quantized.codes.rows(), " x ", quantized.codes.cols(), ", bits ", quantized.bits,
              ", ", quantized.scale.size(), " scales, ", quantized.zero_point.size(),
              " zero points");
    }
    for (Index k = 0; k < quantized.codes.size(); ++k) {
      if (quantized.codes.data()[k] > b) {
        finding("codes lie in [0, B]", "code ", int{quantized.codes.data()[k]}, " > ", b,
                " at element ", k);
      }
    }
    if (!quantized.scale.allFinite() || !quantized.zero_point.allFinite() ||
        !(quantized.scale.array() > 0).all()) {
      finding("scales are positive and finite, zero points finite", "");
    }
    if (dequantized == Threw::InvalidArgument || (dequantized == Threw::DomainError && fake_ok)) {
      finding("the codes of an accepted input dequantize", dequantize_message);
    }
    if (dequantized == Threw::Nothing && !values.allFinite()) {
      finding("dequantize gives finite values", "");
    }

    if (!thorough) {
      if constexpr (kAffine) {
        if (fake_ok && !(fake == values)) {
          finding("fake_quantize equals quantize(...).dequantize()", "(bit for bit, affine)");
        }
      }
    } else {
      // Quantizing into a Quantized used before (another shape, another transform) is the same.
      fqt::Quantized<Scalar, std::uint8_t> reused;
      Matrix<Scalar> previous = Matrix<Scalar>::Zero(5, 3);
      for (Index k = 0; k < previous.size(); ++k)
        previous.data()[k] = Scalar(k % 4) * (k % 3 ? 1 : -8);
      if (attempt(
              "quantize (reused, first)", [&] { q->quantize(previous, rng, reused); }, message) !=
              Threw::Nothing ||
          attempt(
              "quantize (reused)", [&] { q->quantize(x, rng, reused); }, message) !=
              Threw::Nothing ||
          !same_quantized(quantized, reused)) {
        finding("quantize into a reused Quantized gives what a fresh one gets", message);
      }

      if constexpr (kAffine) {
        if (fake_ok && !(fake == values)) {
          finding("fake_quantize equals quantize(...).dequantize()", "(bit for bit, affine)");
        }
        Matrix<Scalar> inplace = x;
        if (attempt(
                "fake_quantize (in place)", [&] { q->fake_quantize(inplace, rng, inplace); },
                message) != Threw::Nothing ||
            !same_bits(inplace, fake)) {
          finding("fake_quantize works in place", message);
        }
        // Each group's range, then every element against it.
        const Index n_groups = groups_expected;
        std::vector<Scalar> lo(static_cast<std::size_t>(n_groups),
                               std::numeric_limits<Scalar>::infinity());
        std::vector<Scalar> hi(static_cast<std::size_t>(n_groups),
                               -std::numeric_limits<Scalar>::infinity());
        auto group = [&](Index i, Index j) -> std::size_t {
          return static_cast<std::size_t>(kKind == Kind::PerTensor   ? 0
                                          : kKind == Kind::PerSample ? i
                                                                     : j);
        };
        for (Index i = 0; i < x.rows(); ++i) {
          for (Index j = 0; j < x.cols(); ++j) {
            lo[group(i, j)] = std::min(lo[group(i, j)], x(i, j));
            hi[group(i, j)] = std::max(hi[group(i, j)], x(i, j));
          }
        }
        for (Index i = 0; i < x.rows(); ++i) {
          for (Index j = 0; j < x.cols(); ++j) {
            const std::size_t g = group(i, j);
            const Wide step = quantized.scale(static_cast<Index>(g));
            const Wide l = lo[g], h = hi[g], v = values(i, j), in = x(i, j);
            const Wide tol =
                8 * Wide(eps) * (std::abs(l) + std::abs(h) + step * (b + 1)) + 4 * tiny;
            if (v < l - step - tol || v > h + step + tol) {
              finding("a value lies within one step of its group's range", "element (", i, ", ", j,
                      ") = ", in, " -> ", v, ", range [", l, ", ", h, "], step ", step);
            }
            const Wide reach = Rounding::is_stochastic ? step : step / 2;
            if (std::abs(v - in) > reach + tol) {
              finding(Rounding::is_stochastic ? "a value lies within one step of its input"
                                              : "a value lies within half a step of its input",
                      "element (", i, ", ", j, ") = ", in, " -> ", v, ", step ", step,
                      ", zero point ", quantized.zero_point(static_cast<Index>(g)));
            }
            if (s.zero_aligned && s.bits >= 2 && lo[g] <= 0 && hi[g] >= 0 && x(i, j) == 0 &&
                values(i, j) != 0) {
              finding("on the zero-aligned grid an exact 0 stays exact", "element (", i, ", ", j,
                      ") -> ", v, ", range [", l, ", ", h, "], step ", step, ", zero point ",
                      quantized.zero_point(static_cast<Index>(g)));
            }
          }
        }
      } else if (fake_ok) {
        // T⁻¹y = diag(s)⁻¹·H·y + c per group: compare within the rounding of those operations.
        Matrix<Scalar> transformed = values;
        if (quantized.transform) {
          fqt::Quantized<Scalar, std::uint8_t> plain = quantized;
          plain.transform.reset();
          transformed = plain.dequantize();
        }
        const auto tolerance_of = [&](Index g_size, Wide magnitude, Wide row_scale, Wide offset) {
          return 16 * (g_size + 2) * Wide(eps) *
                     (std::sqrt(Wide(g_size)) * magnitude / row_scale + std::abs(offset)) +
                 4 * tiny;
        };
        auto compare_row = [&](Index r, Wide tol) {
          for (Index j = 0; j < x.cols(); ++j) {
            const Wide difference = std::abs(Wide(fake(r, j)) - Wide(values(r, j)));
            if (!(difference <= tol)) {
              finding("BHQ: fake_quantize agrees with quantize(...).dequantize()", "element (", r,
                      ", ", j, "): ", fake(r, j), " vs ", values(r, j), ", tolerance ", tol);
            }
          }
        };
        if (!quantized.transform) {
          if (!(fake == values)) finding("BHQ without a transform (PSQ) is exact", "");
        } else {
          const auto& t = *quantized.transform->block_householder();
          for (Index g = 0; g < t.groups(); ++g) {
            Wide magnitude = 0;
            for (Index j = 0; j < t.group_size(g); ++j) {
              magnitude =
                  std::max<Wide>(magnitude, transformed.row(t.member(g, j)).cwiseAbs().maxCoeff());
            }
            for (Index j = 0; j < t.group_size(g); ++j) {
              const Index r = t.member(g, j);
              compare_row(
                  r, tolerance_of(t.group_size(g), magnitude, t.row_scale()(r), t.row_offset()(r)));
            }
          }
        }
      }
    }
  }

  // Variances.
  Scalar variance = 0;
  const bool variance_ok =
      succeeded("expected_variance",
                attempt(
                    "expected_variance", [&] { variance = q->expected_variance(x); }, message),
                message);
  Matrix<double> elements;
  const bool elements_ok =
      succeeded("element_variance",
                attempt(
                    "element_variance", [&] { elements = q->element_variance(x); }, message),
                message);
  Scalar bound = 0;
  const bool bound_ok =
      succeeded("variance_bound",
                attempt(
                    "variance_bound", [&] { bound = q->variance_bound(x); }, message),
                message);
  if (variance_ok) {
    if (!std::isfinite(variance) || variance < 0) {
      finding("expected_variance is finite and >= 0", variance);
    }
    if (!Rounding::is_stochastic && variance != 0) {
      finding("expected_variance is 0 for Nearest", variance);
    }
  }
  if (elements_ok) {
    if (elements.rows() != x.rows() || elements.cols() != x.cols() || !elements.allFinite() ||
        (elements.array() < 0).any()) {
      finding("element_variance has x's shape, finite and >= 0", elements.rows(), " x ",
              elements.cols());
    }
    if (variance_ok) {
      const double sum = elements.sum();
      const double difference = std::abs(sum - double(variance));
      if (!(difference <=
            1e-6 * std::max(std::abs(sum), std::abs(double(variance))) + double(tiny))) {
        finding("element_variance sums to expected_variance", sum, " vs ", variance);
      }
    }
  }
  if (bound_ok && variance_ok) {
    if (!std::isfinite(bound) || !(Wide(variance) <= Wide(bound) * (1 + 1e-6) + tiny)) {
      finding("expected_variance <= variance_bound", variance, " > ", bound);
    }
  }
}

template <Kind kKind>
int run_quantizer(const std::uint8_t* data, std::size_t size) try {
  ByteReader in(data, size);
  const Settings s = decode_settings(in);
  if (s.is_double) {
    const Matrix<double> x = decode_matrix<double>(in, s);
    if (s.nearest) {
      check_quantizer<kKind, double, fqt::Nearest>(s, x);
    } else {
      check_quantizer<kKind, double, fqt::Stochastic>(s, x);
    }
  } else {
    const Matrix<float> x = decode_matrix<float>(in, s);
    if (s.nearest) {
      check_quantizer<kKind, float, fqt::Nearest>(s, x);
    } else {
      check_quantizer<kKind, float, fqt::Stochastic>(s, x);
    }
  }
  if (verbose()) std::fprintf(stderr, "checked: %s\n", context().c_str());
  return 0;
} catch (const KnownFinding&) {
  return 0;
}

}  // namespace fqt_fuzz
