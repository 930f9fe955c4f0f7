#pragma once
/// \file
/// \brief The MNIST loader: images and labels of a split of MNIST, Fashion-MNIST or any data set
/// in the same IDX files (fqt/data/idx.hpp; link `fqt::data`, which brings zlib).
///
/// Errors throw fqt::data::format_error or fqt::data::io_error as read_idx does.

#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/data/idx.hpp"

namespace fqt {
namespace data {

/// \brief Which half of MNIST to load.
enum class Split {
  Train,  ///< `train-images-idx3-ubyte`, `train-labels-idx1-ubyte` (60000 samples)
  Test    ///< `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (10000 samples)
};

/// \brief Passed as `max_samples` to load every sample of a split.
inline constexpr Index all_samples = std::numeric_limits<Index>::max();

/// \brief Images and labels of an MNIST-format data set.
struct MnistData {
  /// N × (rows·cols): row i is image i, row-major, pixels scaled from 0..255 to [0, 1].
  Matrix<float> images;
  /// N class labels in 0..9.
  std::vector<int> labels;
  /// Height of an image in pixels (28 for MNIST).
  Index image_rows = 0;
  /// Width of an image in pixels (28 for MNIST).
  Index image_cols = 0;
};

/// \brief Loads a split of MNIST or Fashion-MNIST (or any data set in the same files).
///
/// Looks in `dir` for `train-images-idx3-ubyte` and `train-labels-idx1-ubyte` (Split::Train) or
/// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte` (Split::Test), each with the `.gz`
/// suffix or without; the `.gz` file is preferred when both exist.
/// \param dir the directory holding the files
/// \param split Split::Train or Split::Test
/// \param max_samples keep only the first `max_samples` samples (the whole files are still read
/// and validated)
/// \return the first min(N, max_samples) images and labels
/// \throws io_error if a file is missing or unreadable
/// \throws format_error if a file is invalid (see read_idx; this covers images of rows x cols
/// above its byte limit, even when there are 0 of them), the images are not 3-D or the labels not
/// 1-D, their counts differ, or a label is outside 0..9
/// \throws std::invalid_argument if `max_samples` is negative
inline MnistData load_mnist(const std::filesystem::path& dir, Split split,
                            Index max_samples = all_samples);

namespace detail {

inline std::filesystem::path find_mnist_file(const std::filesystem::path& dir,
                                             const std::string& name) {
  std::error_code error;
  const std::filesystem::path gz = dir / (name + ".gz");
  if (std::filesystem::exists(gz, error)) return gz;
  const std::filesystem::path plain = dir / name;
  if (std::filesystem::exists(plain, error)) return plain;
  fail<io_error>("load_mnist", dir, "neither ", name, ".gz nor ", name, " exists");
}

}  // namespace detail

inline MnistData load_mnist(const std::filesystem::path& dir, Split split, Index max_samples) {
  constexpr const char* where = "load_mnist";
  fqt::check(max_samples >= 0, where, "max_samples must be >= 0, got ", max_samples);
  std::error_code error;
  if (!std::filesystem::is_directory(dir, error)) {
    detail::fail<io_error>(where, dir, "no such directory");
  }
  const std::string prefix = split == Split::Train ? "train" : "t10k";
  const std::filesystem::path images_path =
      detail::find_mnist_file(dir, prefix + "-images-idx3-ubyte");
  const std::filesystem::path labels_path =
      detail::find_mnist_file(dir, prefix + "-labels-idx1-ubyte");

  const IdxArray images = detail::read_idx(images_path, default_max_idx_bytes, where);
  const IdxArray labels = detail::read_idx(labels_path, default_max_idx_bytes, where);
  if (images.dims.size() != 3) {
    detail::fail<format_error>(where, images_path,
                               "images must have 3 dimensions (N, rows, cols), got ",
                               images.dims.size());
  }
  if (labels.dims.size() != 1) {
    detail::fail<format_error>(where, labels_path, "labels must have 1 dimension (N), got ",
                               labels.dims.size());
  }
  if (images.dims[0] != labels.dims[0]) {
    detail::fail<format_error>(where, dir, "count mismatch: ", images.dims[0], " images in ",
                               images_path.filename().string(), " but ", labels.dims[0],
                               " labels in ", labels_path.filename().string());
  }
  for (std::size_t i = 0; i < labels.data.size(); ++i) {
    if (labels.data[i] > 9) {
      detail::fail<format_error>(where, labels_path, "label ", int{labels.data[i]}, " of sample ",
                                 i, " is out of range 0..9");
    }
  }

  MnistData result;
  result.image_rows = images.dims[1];
  result.image_cols = images.dims[2];
  const Index count = std::min<Index>(images.dims[0], max_samples);
  // Cannot overflow: read_idx bounds the product of the non-zero dimensions by its byte limit
  // (below 2^62) even when there are 0 images.
  const Index pixels = result.image_rows * result.image_cols;
  const Eigen::Map<const Matrix<std::uint8_t>> bytes(images.data.data(), count, pixels);
  result.images = bytes.cast<float>() / 255.0f;
  result.labels.assign(labels.data.begin(), labels.data.begin() + count);
  return result;
}

}  // namespace data
}  // namespace fqt
