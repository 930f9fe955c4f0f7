#pragma once
/// \file
/// \brief The geometry of 2-D windowed ops: `Window2d` (input plane, kernel, strides, paddings and
/// the output plane they give), shared by `Conv2dGeometry` and `Pool2dGeometry`.

#include <cstdint>
#include <limits>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/nn/detail/checks.hpp"

namespace fqt {
namespace nn {

/// \brief A kh×kw window sliding over an H×W plane with strides (sh, sw) and paddings (ph, pw) on
/// both sides. Output height ⌊(H + 2·ph − kh)/sh⌋ + 1, likewise the width.
///
/// The size accessors do not check for overflow: the ops call their geometry's validate() first.
struct Window2d {
  Index in_height = 0;       ///< H
  Index in_width = 0;        ///< W
  Index kernel_height = 1;   ///< kh
  Index kernel_width = 1;    ///< kw
  Index stride_height = 1;   ///< sh
  Index stride_width = 1;    ///< sw
  Index padding_height = 0;  ///< ph (above and below)
  Index padding_width = 0;   ///< pw (left and right)

  /// \brief Output height Ho.
  Index out_height() const {
    return (in_height + 2 * padding_height - kernel_height) / stride_height + 1;
  }
  /// \brief Output width Wo.
  Index out_width() const {
    return (in_width + 2 * padding_width - kernel_width) / stride_width + 1;
  }
  /// \brief Positions of the window, Ho·Wo.
  Index out_plane() const { return out_height() * out_width(); }

 protected:
  Window2d() = default;
  Window2d(Index height, Index width, Index kernel, Index stride, Index padding)
      : in_height(height),
        in_width(width),
        kernel_height(kernel),
        kernel_width(kernel),
        stride_height(stride),
        stride_width(stride),
        padding_height(padding),
        padding_width(padding) {}

  /// \brief Throws std::invalid_argument naming `where`, the fields and their values unless the
  /// plane, kernel and strides are positive, the paddings non-negative (and at most half the
  /// kernel when `padding_at_most_half_kernel`), the window fits in the padded plane and
  /// H + 2·ph, W + 2·pw fit in an Index. Past it, Ho and Wo cannot overflow.
  void validate_window(const char* where, bool padding_at_most_half_kernel) const {
    check(in_height > 0 && in_width > 0, where, "spatial sizes must be positive, got in_height ",
          in_height, ", in_width ", in_width);
    check(kernel_height > 0 && kernel_width > 0, where, "kernel must be positive, got ",
          kernel_height, " x ", kernel_width);
    check(stride_height > 0 && stride_width > 0, where, "stride must be positive, got ",
          stride_height, " x ", stride_width);
    check(padding_height >= 0 && padding_width >= 0, where, "padding must be >= 0, got ",
          padding_height, " x ", padding_width);
    // p ≤ k/2 rather than 2·p ≤ k: no product that could overflow.
    check(!padding_at_most_half_kernel ||
              (padding_height <= kernel_height / 2 && padding_width <= kernel_width / 2),
          where, "padding must be in [0, kernel/2], got ", padding_height, " x ", padding_width,
          " for kernel ", kernel_height, " x ", kernel_width);
    const Index padded_height =
        detail::checked_sum(where, "in_height + padding_height + padding_height",
                            {in_height, padding_height, padding_height});
    const Index padded_width =
        detail::checked_sum(where, "in_width + padding_width + padding_width",
                            {in_width, padding_width, padding_width});
    check(kernel_height <= padded_height && kernel_width <= padded_width, where, "kernel ",
          kernel_height, " x ", kernel_width, " is larger than the padded input ", padded_height,
          " x ", padded_width, " (input ", in_height, " x ", in_width, " + 2 * padding ",
          padding_height, " x ", padding_width, ")");
  }
};

/// \brief Shape of a 2-D convolution: input C×H×W, K output channels, the window (zero padding).
struct Conv2dGeometry : Window2d {
  Index in_channels = 0;   ///< C
  Index out_channels = 0;  ///< K

  Conv2dGeometry() = default;
  /// \brief A square kernel with equal strides and paddings in both directions.
  Conv2dGeometry(Index in_channels_, Index in_height_, Index in_width_, Index out_channels_,
                 Index kernel, Index stride = 1, Index padding = 0)
      : Window2d(in_height_, in_width_, kernel, stride, padding),
        in_channels(in_channels_),
        out_channels(out_channels_) {}

  /// \brief Columns of an input batch, C·H·W.
  Index input_size() const { return in_channels * in_height * in_width; }
  /// \brief Columns of an output batch, K·Ho·Wo.
  Index output_size() const { return out_channels * out_plane(); }
  /// \brief Columns of the weight matrix, C·kh·kw.
  Index patch_size() const { return in_channels * kernel_height * kernel_width; }

  /// \brief Throws std::invalid_argument naming `where` and the offending fields and values
  /// unless every size is positive, paddings are non-negative, the kernel fits in the padded
  /// input and every derived size — H + 2·ph, W + 2·pw, C·H·W, C·kh·kw, Ho·Wo, K·Ho·Wo and the
  /// per-sample im2col buffer C·kh·kw·Ho·Wo — fits in an Index.
  void validate(const char* where) const {
    check(in_channels > 0 && out_channels > 0, where, "channels must be positive, got in_channels ",
          in_channels, ", out_channels ", out_channels);
    validate_window(where, false);
    detail::checked_product(where, "in_channels * in_height * in_width",
                            {in_channels, in_height, in_width});
    detail::checked_product(where, "in_channels * kernel_height * kernel_width",
                            {in_channels, kernel_height, kernel_width});
    const Index ho = out_height(), wo = out_width();
    detail::checked_product(where, "out_channels * out_height * out_width", {out_channels, ho, wo});
    detail::checked_product(where,
                            "in_channels * kernel_height * kernel_width * out_height * out_width",
                            {in_channels, kernel_height, kernel_width, ho, wo});
  }
};

/// \brief Shape of a 2-D max pooling over C channels of H×W; padding counts as −∞ and is at most
/// half the kernel.
struct Pool2dGeometry : Window2d {
  Index channels = 0;  ///< C

  Pool2dGeometry() : Window2d(0, 0, 2, 2, 0) {}
  /// \brief A square window; stride 0 means stride = kernel (a negative stride is kept, for
  /// validate() to reject).
  Pool2dGeometry(Index channels_, Index in_height_, Index in_width_, Index kernel, Index stride = 0,
                 Index padding = 0)
      : Window2d(in_height_, in_width_, kernel, stride != 0 ? stride : kernel, padding),
        channels(channels_) {}

  /// \brief Columns of an input batch, C·H·W.
  Index input_size() const { return channels * in_height * in_width; }
  /// \brief Columns of an output batch, C·Ho·Wo.
  Index output_size() const { return channels * out_plane(); }

  /// \brief Throws std::invalid_argument naming `where`, the fields and the values unless sizes
  /// are positive, padding ≤ kernel/2, the window fits in the padded input, every derived size
  /// (H + 2·ph, W + 2·pw, C·H·W, C·Ho·Wo) fits in an Index and C·H·W fits the int32 argmax of
  /// MaxPool2dCache.
  void validate(const char* where) const {
    check(channels > 0, where, "channels must be positive, got ", channels);
    validate_window(where, true);
    const Index size = detail::checked_product(where, "channels * in_height * in_width",
                                               {channels, in_height, in_width});
    check(size <= std::numeric_limits<std::int32_t>::max(), where,
          "channels * in_height * in_width = ", channels, " * ", in_height, " * ", in_width, " = ",
          size, " exceeds the int32 argmax index limit ", std::numeric_limits<std::int32_t>::max());
    detail::checked_product(where, "channels * out_height * out_width",
                            {channels, out_height(), out_width()});
  }
};

}  // namespace nn
}  // namespace fqt
