#pragma once
/// \file
/// \brief The quantizers as data: `QuantizerSpec` describes one quantizer (kind, bits, grid,
/// rounding), `kQuantizerKinds` is the table of kinds (name, class, the axes its scales vary
/// along — which decides the GEMM contractions its codes may feed), and `AnyQuantizer` builds and
/// calls any of them: a std::variant, visited once per call.
///
/// Adding a kind means: its header, one enumerator, one row of the table and one alternative of
/// `AnyQuantizer`'s variant (in the same order — a static_assert checks the table's order).

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/quant/adaptive.hpp"
#include "fqt/quant/block_householder.hpp"
#include "fqt/quant/hadamard.hpp"
#include "fqt/quant/per_sample.hpp"
#include "fqt/quant/per_tensor.hpp"
#include "fqt/quant/quantized.hpp"

namespace fqt {

/// \brief The kinds of quantizer fqt ships, in the order of `kQuantizerKinds`.
enum class QuantizerKind {
  PerTensor,
  PerSample,
  PerColumn,
  PerChannel,
  BlockHouseholder,
  Hadamard,
  Adaptive
};

/// \brief The rounding of a quantizer, as a value (the quantizer classes take it as a type).
enum class RoundingMode { Stochastic, Nearest };

/// \brief How a quantizer's scales vary along the columns of its N × D input.
enum class ColumnScales {
  Shared,      ///< the same along every column of a row
  PerChannel,  ///< one per block of consecutive columns (an output channel of a conv gradient)
  PerColumn    ///< one per column
};

/// \brief What the GEMM fed by a quantizer's codes contracts over. An integer GEMM can apply a
/// quantizer's scales in its epilogue only if they are constant along the contraction.
enum class Contraction {
  Columns,         ///< Q(G)·W over the columns of G: grad-input of linear and of conv
  Rows,            ///< Q(G)ᵀ·X over the rows (samples): grad-weight of linear
  RowsAndChannels  ///< Σ_n Q(G)_n·C_nᵀ over the samples and each channel's Ho·Wo columns:
                   ///< grad-weight of conv
};

/// \brief One row of the table of kinds.
struct QuantizerKindInfo {
  QuantizerKind kind;          ///< the enumerator (its index in the table)
  const char* name;            ///< short name for command lines and reports, e.g. "psq"
  const char* class_name;      ///< the class, e.g. "PerSampleQuantizer"
  bool row_scales;             ///< scales differ between rows (or rows are mixed, as BHQ and
                               ///< Hadamard do)
  ColumnScales column_scales;  ///< how scales vary along the columns
  const char* summary;         ///< one line for help texts
};

/// \brief The table of kinds, in the order of QuantizerKind.
inline constexpr std::array<QuantizerKindInfo, 7> kQuantizerKinds = {{
    {QuantizerKind::PerTensor, "ptq", "PerTensorQuantizer", false, ColumnScales::Shared,
     "per tensor (PTQ): one grid for the whole gradient"},
    {QuantizerKind::PerSample, "psq", "PerSampleQuantizer", true, ColumnScales::Shared,
     "per sample (PSQ): one grid per row"},
    {QuantizerKind::PerColumn, "column", "PerColumnQuantizer", false, ColumnScales::PerColumn,
     "per column: one grid per column, over the batch"},
    {QuantizerKind::PerChannel, "channel", "PerChannelQuantizer", false, ColumnScales::PerChannel,
     "per output channel: one grid per block of columns, over the batch"},
    {QuantizerKind::BlockHouseholder, "bhq", "BlockHouseholderQuantizer", true,
     ColumnScales::Shared, "block Householder (BHQ): sample rows mixed, then one grid per row"},
    {QuantizerKind::Hadamard, "hadamard", "HadamardQuantizer", true, ColumnScales::Shared,
     "randomized Hadamard: blocks of sample rows mixed by H·diag(±1), then one grid per row"},
    {QuantizerKind::Adaptive, "adaptive", "AdaptiveQuantizer", true, ColumnScales::Shared,
     "adaptive: PSQ, BHQ or Hadamard, whichever has the least exact variance on the input"},
}};

namespace detail {
constexpr bool kinds_in_order() {
  for (std::size_t i = 0; i < kQuantizerKinds.size(); ++i)
    if (static_cast<std::size_t>(kQuantizerKinds[i].kind) != i) return false;
  return true;
}
static_assert(kinds_in_order(), "fqt: kQuantizerKinds must list the kinds in enum order");
}  // namespace detail

/// \brief The table row of `kind`; throws std::invalid_argument for a value that is no kind.
inline const QuantizerKindInfo& kind_info(QuantizerKind kind) {
  const auto index = static_cast<std::size_t>(kind);
  check(index < kQuantizerKinds.size(), "fqt::kind_info", "no quantizer kind has the value ",
        static_cast<long long>(kind));
  return kQuantizerKinds[index];
}

/// \brief True when the scales of `kind` are constant along `contraction`, so that an integer
/// GEMM on its codes applies them in the epilogue. (A simulated backend computes any pairing.)
inline bool can_feed(QuantizerKind kind, Contraction contraction) {
  const QuantizerKindInfo& k = kind_info(kind);
  switch (contraction) {
    case Contraction::Columns:
      return k.column_scales == ColumnScales::Shared;
    case Contraction::Rows:
      return !k.row_scales;
    case Contraction::RowsAndChannels:
      return !k.row_scales && k.column_scales != ColumnScales::PerColumn;
  }
  return false;
}

/// \brief "ptq, psq, column, channel, bhq, hadamard": the names of the table, for help texts and
/// errors.
inline std::string quantizer_kind_names() {
  std::string names;
  for (const auto& k : kQuantizerKinds) names += (names.empty() ? "" : ", ") + std::string(k.name);
  return names;
}

/// \brief The kinds whose scales are constant along `contraction` (those that can_feed it), in
/// table order: e.g. PerTensor, PerSample, BlockHouseholder, Hadamard for Contraction::Columns.
inline std::vector<QuantizerKind> quantizer_kinds(Contraction contraction) {
  std::vector<QuantizerKind> kinds;
  for (const auto& k : kQuantizerKinds) {
    if (can_feed(k.kind, contraction)) kinds.push_back(k.kind);
  }
  return kinds;
}

/// \brief The names of the kinds whose scales are constant along `contraction` (those that
/// can_feed it), e.g. "ptq, psq, bhq, hadamard" for Contraction::Columns.
inline std::string quantizer_kind_names(Contraction contraction) {
  std::string names;
  for (const auto& k : kQuantizerKinds) {
    if (can_feed(k.kind, contraction)) names += (names.empty() ? "" : ", ") + std::string(k.name);
  }
  return names;
}

/// \brief The kind named `name` in the table (any case); throws std::invalid_argument naming the
/// text and the names there are.
inline QuantizerKind parse_quantizer_kind(std::string_view name) {
  for (const auto& k : kQuantizerKinds) {
    const std::string_view candidate(k.name);
    if (candidate.size() == name.size() &&
        std::equal(name.begin(), name.end(), candidate.begin(), [](char a, char b) {
          return (a >= 'A' && a <= 'Z' ? char(a - 'A' + 'a') : a) == b;
        }))
      return k.kind;
  }
  check(false, "fqt::parse_quantizer_kind", "unknown quantizer '", name, "' (expected one of ",
        quantizer_kind_names(), ")");
  return QuantizerKind::PerTensor;
}

/// \brief The description of one quantizer.
struct QuantizerSpec {
  QuantizerKind kind = QuantizerKind::PerSample;     ///< which quantizer
  int bits = 8;                                      ///< 1 ≤ bits ≤ 8·sizeof(Code)
  Grid grid = Grid::Auto;                            ///< where its grid sits
  RoundingMode rounding = RoundingMode::Stochastic;  ///< Stochastic (unbiased) or Nearest
  Index channels = 1;  ///< PerChannel: the number of column blocks; 1 for the other kinds
  /// Hadamard (and Adaptive's Hadamard candidate): the block size, a power of two in [1, 65536];
  /// 0 for the quantizer's default (HadamardQuantizer::kDefaultBlockSize) and for other kinds
  Index block_size = 0;
  /// Adaptive, in the nn layers: re-decide the candidate every `every` backward passes of a
  /// layer and reuse the decision in between (AnyQuantizer itself decides on every call); 0 for
  /// the default, kDefaultEvery, and for the other kinds
  Index every = 0;

  /// \brief The default number of passes between two decisions of an adaptive quantizer in a
  /// layer (chosen by measurement; see README, "The adaptive quantizer").
  static constexpr Index kDefaultEvery = 8;

  /// \brief Throws std::invalid_argument naming `where`, the field and its value unless every
  /// field holds a valid value (bits are checked by the quantizer's constructor).
  void validate(const char* where) const {
    check(static_cast<std::size_t>(kind) < kQuantizerKinds.size(), where, "kind must be one of ",
          quantizer_kind_names(), ", got ", static_cast<long long>(kind));
    check(is_grid(grid), where, "grid must be Free, ZeroAligned, Paper or Auto, got ",
          static_cast<long long>(grid));
    check(rounding == RoundingMode::Stochastic || rounding == RoundingMode::Nearest, where,
          "rounding must be Stochastic or Nearest, got ", static_cast<long long>(rounding));
    check(kind == QuantizerKind::PerChannel ? channels >= 1 : channels == 1, where,
          "channels must be ", kind == QuantizerKind::PerChannel ? ">= 1" : "1 for ",
          kind == QuantizerKind::PerChannel ? "" : kind_info(kind).name, ", got ", channels);
    const bool blocks = kind == QuantizerKind::Hadamard || kind == QuantizerKind::Adaptive;
    check(blocks ? block_size == 0 || (block_size >= 1 && block_size <= (Index{1} << 16) &&
                                       (block_size & (block_size - 1)) == 0)
                 : block_size == 0,
          where, "block_size must be ",
          blocks ? "0 (the default) or a power of two in [1, 65536]" : "0 for ",
          blocks ? "" : kind_info(kind).name, ", got ", block_size);
    check(kind == QuantizerKind::Adaptive ? every >= 0 : every == 0, where, "every must be ",
          kind == QuantizerKind::Adaptive ? ">= 0 (0: the default)" : "0 for ",
          kind == QuantizerKind::Adaptive ? "" : kind_info(kind).name, ", got ", every);
  }
};

/// \brief Any quantizer of the table, built from a spec; each call visits the variant once and
/// runs the quantizer itself, so results are bit-identical to calling the class directly.
/// \tparam Scalar float or double
/// \tparam Code std::uint8_t (≤ 8 bits) or std::uint16_t
template <class Scalar = float, class Code = std::uint8_t>
class AnyQuantizer {
  template <class Rounding>
  using Row = std::tuple<
      PerTensorQuantizer<Scalar, Rounding, Code>, PerSampleQuantizer<Scalar, Rounding, Code>,
      PerColumnQuantizer<Scalar, Rounding, Code>, PerChannelQuantizer<Scalar, Rounding, Code>,
      BlockHouseholderQuantizer<Scalar, Rounding, Code>, HadamardQuantizer<Scalar, Rounding, Code>,
      AdaptiveQuantizer<Scalar, Rounding, Code>>;
  template <class Stochastic, class Nearest>
  struct Join;
  template <class... S, class... N>
  struct Join<std::tuple<S...>, std::tuple<N...>> {
    using type = std::variant<S..., N...>;  // stochastic kinds first, then nearest
  };

 public:
  /// The variant: alternative kind + kinds·rounding, in the order of the table.
  using Variant = typename Join<Row<Stochastic>, Row<Nearest>>::type;
  static_assert(std::tuple_size_v<Row<Stochastic>> == kQuantizerKinds.size(),
                "fqt: AnyQuantizer needs one alternative per row of kQuantizerKinds");

  /// \throws std::invalid_argument for an invalid spec (see QuantizerSpec::validate and the
  /// quantizers' constructors)
  explicit AnyQuantizer(const QuantizerSpec& spec)
      : spec_(checked(spec)),
        quantizer_(make(spec, std::make_index_sequence<std::variant_size_v<Variant>>{})) {}

  const QuantizerSpec& spec() const { return spec_; }
  /// \brief The class name of the quantizer (as in its error messages).
  const char* name() const { return kind_info(spec_.kind).class_name; }

  /// \brief Calls f(quantizer) with the concrete quantizer.
  template <class F>
  decltype(auto) visit(F&& f) const {
    return std::visit(std::forward<F>(f), quantizer_);
  }

  /// \brief Quantizes x into q (see the quantizers' `quantize`).
  void quantize(const MatrixCRef<Scalar>& x, const Philox& rng, Quantized<Scalar, Code>& q) const {
    visit([&](const auto& quantizer) { quantizer.quantize(x, rng, q); });
  }
  /// \brief Quantizes x.
  Quantized<Scalar, Code> quantize(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    Quantized<Scalar, Code> q;
    quantize(x, rng, q);
    return q;
  }
  /// \brief Fake quantization into out (same shape as x); overwrites out.
  void fake_quantize(const MatrixCRef<Scalar>& x, const Philox& rng, MatrixRef<Scalar> out) const {
    visit([&](const auto& quantizer) { quantizer.fake_quantize(x, rng, out); });
  }
  /// \brief Fake quantization.
  Matrix<Scalar> operator()(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    Matrix<Scalar> out(x.rows(), x.cols());
    fake_quantize(x, rng, out);
    return out;
  }
  /// \brief Exact E‖Q(x) − x‖² (0 for Nearest).
  Scalar expected_variance(const MatrixCRef<Scalar>& x) const {
    return visit([&](const auto& quantizer) { return quantizer.expected_variance(x); });
  }
  /// \brief Exact per-element variance.
  Matrix<double> element_variance(const MatrixCRef<Scalar>& x) const {
    return visit([&](const auto& quantizer) { return quantizer.element_variance(x); });
  }
  /// \brief The paper's bound Σ Δ²/4.
  Scalar variance_bound(const MatrixCRef<Scalar>& x) const {
    return visit([&](const auto& quantizer) { return quantizer.variance_bound(x); });
  }

 private:
  static const QuantizerSpec& checked(const QuantizerSpec& spec) {
    spec.validate("fqt::AnyQuantizer");
    return spec;
  }

  template <class Q>
  static Q construct(const QuantizerSpec& spec) {
    using S = typename Q::scalar_type;
    using R = typename Q::rounding_type;
    using C = typename Q::code_type;
    const Index block =
        spec.block_size > 0 ? spec.block_size : HadamardQuantizer<S>::kDefaultBlockSize;
    if constexpr (Q::granularity == Granularity::PerChannel) {
      return Q(spec.bits, spec.grid, spec.channels);
    } else if constexpr (std::is_same_v<Q, HadamardQuantizer<S, R, C>>) {
      return Q(spec.bits, spec.grid, block);
    } else if constexpr (std::is_same_v<Q, AdaptiveQuantizer<S, R, C>>) {
      return Q(spec.bits, spec.grid,
               {Q::Kind::PerSample, Q::Kind::BlockHouseholder, Q::Kind::Hadamard}, block);
    } else {
      return Q(spec.bits, spec.grid);
    }
  }

  template <std::size_t... I>
  static Variant make(const QuantizerSpec& spec, std::index_sequence<I...>) {
    const std::size_t index = static_cast<std::size_t>(spec.kind) +
                              kQuantizerKinds.size() * static_cast<std::size_t>(spec.rounding);
    std::optional<Variant> built;
    ((I == index ? (void)built.emplace(std::in_place_index<I>,
                                       construct<std::variant_alternative_t<I, Variant>>(spec))
                 : void()),
     ...);
    return std::move(*built);
  }

  QuantizerSpec spec_;
  Variant quantizer_;
};

}  // namespace fqt
