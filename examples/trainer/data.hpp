#pragma once
/// \file
/// \brief The trainer's data: an image classification set in memory (MNIST / Fashion-MNIST
/// format), its subsets, the reproducible per-epoch shuffle and the gathering of a batch.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/data/mnist.hpp"

namespace fqt_train {

using fqt::Index;
/// \brief The trainer's matrices: float, row-major, one sample per row.
using Matrix = fqt::Matrix<float>;

/// \brief Labelled grey-scale images: row i of `images` is image i (height × width pixels,
/// row-major), normalised from [0, 1] to [−1, 1] as (x − 0.5)/0.5.
struct Dataset {
  Matrix images;            ///< N × (height·width), values in [−1, 1]
  std::vector<int> labels;  ///< N class indices in [0, classes)
  Index height = 0;         ///< image height in pixels
  Index width = 0;          ///< image width in pixels
  int classes = 10;         ///< number of classes

  /// \brief Number of samples N.
  Index size() const { return images.rows(); }
};

/// \brief The default data directory: Debian's `dataset-fashion-mnist` package.
inline const char* default_data_dir() { return "/usr/share/datasets/fashion-mnist"; }

/// \brief Converts an MNIST-format split (pixels in [0, 1]) into a Dataset (pixels in [−1, 1]).
inline Dataset to_dataset(fqt::data::MnistData data) {
  Dataset d;
  d.images = std::move(data.images);
  d.images.array() = (d.images.array() - 0.5f) * 2.0f;
  d.labels = std::move(data.labels);
  d.height = data.image_rows;
  d.width = data.image_cols;
  d.classes = 10;
  return d;
}

/// \brief Loads the first `max_samples` samples of a split of an MNIST-format directory (the
/// Fashion-MNIST training files are already in a shuffled order, so a prefix is a fair subset).
/// \throws fqt::data::io_error, fqt::data::format_error (see fqt::data::load_mnist)
inline Dataset load_split(const std::filesystem::path& dir, fqt::data::Split split,
                          Index max_samples = fqt::data::all_samples) {
  return to_dataset(fqt::data::load_mnist(dir, split, max_samples));
}

/// \brief The order in which an epoch visits the n samples: a Fisher–Yates shuffle driven by
/// `rng.substream(epoch)` (draw i is that stream's uniform(i)). A pure function of (rng, epoch,
/// n): the same seed gives the same order on any machine and thread count.
inline std::vector<Index> epoch_order(Index n, const fqt::Philox& rng, std::uint64_t epoch) {
  std::vector<Index> order(static_cast<std::size_t>(std::max<Index>(n, 0)));
  std::iota(order.begin(), order.end(), Index{0});
  const fqt::Philox stream = rng.substream(epoch);
  for (Index i = n - 1; i > 0; --i) {
    const double u = stream.uniform(static_cast<std::uint64_t>(i));
    const Index j = std::min(i, static_cast<Index>(u * static_cast<double>(i + 1)));
    std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(j)]);
  }
  return order;
}

/// \brief Copies the samples `order[first, first + count)` of `data` into `images` (resized to
/// count × pixels) and `labels`.
inline void gather_batch(const Dataset& data, const std::vector<Index>& order, Index first,
                         Index count, Matrix& images, std::vector<int>& labels) {
  fqt::check(first >= 0 && count >= 0 && first + count <= static_cast<Index>(order.size()),
             "fqt_train::gather_batch", "samples [", first, ", ", first + count,
             ") are outside the order of ", order.size(), " samples");
  if (images.rows() != count || images.cols() != data.images.cols()) {
    images.resize(count, data.images.cols());
  }
  labels.resize(static_cast<std::size_t>(count));
  for (Index r = 0; r < count; ++r) {
    const Index s = order[static_cast<std::size_t>(first + r)];
    images.row(r) = data.images.row(s);
    labels[static_cast<std::size_t>(r)] = data.labels[static_cast<std::size_t>(s)];
  }
}

}  // namespace fqt_train
