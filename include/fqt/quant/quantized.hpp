#pragma once
/// \file
/// \brief `Quantized`: integer codes plus the affine maps (and, for BHQ and Hadamard, the row
/// transform) that give them their values — what an integer GEMM consumes.

#include <cstdint>
#include <optional>
#include <type_traits>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/quant/grid.hpp"
#include "fqt/quant/transform.hpp"

namespace fqt {

/// \brief A quantized matrix: codes in [0, 2^bits − 1] and one affine map per tensor, row,
/// column or channel (block of cols()/scale.size() consecutive columns). The value of code c at (i,
/// j) is (c − zero_point)·scale with the map of (i, j) (gemmlowp's convention: on a zero-aligned
/// grid zero_point is an integer and 0 is exact). When `transform` is set (BHQ, Hadamard), the
/// codes quantize T·x and the value is T⁻¹ applied to the dequantized rows; an integer GEMM Q·W
/// may run on the codes and apply T⁻¹ to its N-row output. T is affine: T⁻¹·y = L·y + c·𝟙ᵀ with L
/// linear and c the row offsets (BHQ: L = diag(s)⁻¹·H, c zero for rows whose range contains 0;
/// Hadamard: L = Tᵀ, c = 0), so T⁻¹(Q)·W = L·(Q·W) + c·(𝟙ᵀW).
/// \tparam Scalar float or double
/// \tparam Code an unsigned integer type wide enough for the bit width
template <class Scalar, class Code>
struct Quantized {
  static_assert(std::is_floating_point_v<Scalar>, "fqt: Quantized needs a floating-point Scalar");
  static_assert(std::is_unsigned_v<Code>, "fqt: Quantized needs an unsigned integer Code");

  Matrix<Code> codes;  ///< N × D codes
  Granularity granularity = Granularity::PerTensor;
  Vector<Scalar> scale;                           ///< steps: size 1, N, D or K by granularity
  Vector<Scalar> zero_point;                      ///< zero points in code units, same size
  int bits = 8;                                   ///< codes lie in [0, 2^bits − 1]
  std::optional<RowTransform<Scalar>> transform;  ///< the row transform T (BHQ, Hadamard), if any

  Index rows() const { return codes.rows(); }
  Index cols() const { return codes.cols(); }

  /// \brief The values the codes stand for, written into out (same shape as codes); overwrites.
  /// \throws std::domain_error if T⁻¹ maps a value past the largest finite Scalar (transforms only)
  void dequantize(MatrixRef<Scalar> out) const {
    check(out.rows() == rows() && out.cols() == cols(), "Quantized::dequantize", "output is ",
          out.rows(), "x", out.cols(), ", codes are ", rows(), "x", cols());
    const Index n = rows();
    for (Index i = 0; i < n; ++i) {
      const auto c = codes.row(i).template cast<Scalar>().array();
      switch (granularity) {
        case Granularity::PerTensor:
          out.row(i).array() = (c - zero_point(0)) * scale(0);
          break;
        case Granularity::PerRow:
          out.row(i).array() = (c - zero_point(i)) * scale(i);
          break;
        case Granularity::PerColumn:
          out.row(i).array() = (c - zero_point.transpose().array()) * scale.transpose().array();
          break;
        case Granularity::PerChannel: {
          const Index width = cols() / scale.size();
          for (Index k = 0; k < scale.size(); ++k) {
            out.row(i).segment(k * width, width).array() =
                (c.segment(k * width, width) - zero_point(k)) * scale(k);
          }
          break;
        }
      }
    }
    if (transform) transform->apply_inverse(out);
  }

  /// \brief The values the codes stand for.
  Matrix<Scalar> dequantize() const {
    Matrix<Scalar> out(rows(), cols());
    dequantize(out);
    return out;
  }
};

}  // namespace fqt
