// libFuzzer harness of fqt::data::load_mnist on an images file and a labels file cut from the
// input.
//
// Input: byte 0 flags (bit 0: gzip the images, bit 1: gzip the labels, bit 2: Split::Train,
// bits 3-7: max_samples, 0 for all samples, else the value minus 1), bytes 1-2 the length of the
// images file (little-endian, modulo what is left), then the images file, then the labels file.
//
// Invariants: only format_error escapes; an accepted split has min(N, max_samples) images of
// rows·cols pixels equal to the file's bytes / 255, and as many labels, in 0..9, equal to the
// file's.

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "fqt/data/mnist.hpp"
#include "fuzz_support.hpp"

namespace {

namespace fs = std::filesystem;

// A directory of symbolic links named as MNIST's files, pointing at two in-memory files.
struct MnistDirectory {
  fqt_fuzz::MemoryFile images{"fqt-fuzz-mnist-images"}, labels{"fqt-fuzz-mnist-labels"};
  fs::path dir;

  MnistDirectory() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr ? tmp : "/tmp") + "/fqt-fuzz-mnist-XXXXXX";
    if (::mkdtemp(&pattern[0]) == nullptr) {
      std::perror("fqt fuzz harness: mkdtemp");
      std::abort();
    }
    dir = pattern;
    for (const char* split : {"train", "t10k"}) {
      fs::create_symlink(images.path(), dir / (std::string(split) + "-images-idx3-ubyte"));
      fs::create_symlink(labels.path(), dir / (std::string(split) + "-labels-idx1-ubyte"));
    }
  }
  ~MnistDirectory() {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static MnistDirectory files;
  fqt_fuzz::context() =
      "MNIST input of " + std::to_string(size) + " bytes: " + fqt_fuzz::hex(data, size);
  fqt_fuzz::ByteReader in(data, size);
  const std::uint8_t flags = in.byte();
  const std::size_t images_length = static_cast<std::size_t>(in.uint(2)) % (in.remaining() + 1);
  const std::uint8_t* images_bytes = in.here();
  const std::uint8_t* labels_bytes = images_bytes + images_length;
  const std::size_t labels_length = in.remaining() - images_length;
  const fqt::data::Split split = (flags & 4) ? fqt::data::Split::Train : fqt::data::Split::Test;
  const fqt::Index max_samples = (flags >> 3) == 0 ? fqt::data::all_samples : (flags >> 3) - 1;

  if (flags & 1) {
    files.images.write(fqt_fuzz::gzip(images_bytes, images_length));
  } else {
    files.images.write(images_bytes, images_length);
  }
  if (flags & 2) {
    files.labels.write(fqt_fuzz::gzip(labels_bytes, labels_length));
  } else {
    files.labels.write(labels_bytes, labels_length);
  }

  fqt::data::MnistData mnist;
  try {
    mnist = fqt::data::load_mnist(files.dir, split, max_samples);
  } catch (const fqt::data::format_error& e) {
    if (std::string(e.what()).rfind("load_mnist: ", 0) != 0) {
      fqt_fuzz::finding("errors name the function", e.what());
    }
    if (fqt_fuzz::verbose()) std::fprintf(stderr, "refused: %s\n", e.what());
    return 0;
  } catch (const fqt::data::io_error& e) {
    fqt_fuzz::finding("readable files give no io_error", e.what());
  } catch (...) {
    fqt_fuzz::unexpected_exception("load_mnist");
  }
  if (fqt_fuzz::verbose()) {
    std::fprintf(stderr, "accepted: %lld images of %lld x %lld\n",
                 static_cast<long long>(mnist.images.rows()),
                 static_cast<long long>(mnist.image_rows),
                 static_cast<long long>(mnist.image_cols));
  }

  // The files load_mnist accepted, read back directly.
  const auto images = fqt::data::read_idx(files.images.path());
  const auto labels = fqt::data::read_idx(files.labels.path());
  const fqt::Index n = std::min<fqt::Index>(images.dims.at(0), max_samples);
  const fqt::Index pixels = static_cast<fqt::Index>(images.dims.at(1)) * images.dims.at(2);
  if (mnist.image_rows != images.dims[1] || mnist.image_cols != images.dims[2] ||
      mnist.images.rows() != n || mnist.images.cols() != pixels ||
      static_cast<fqt::Index>(mnist.labels.size()) != n) {
    fqt_fuzz::finding("the shapes are the files'", mnist.images.rows(), " x ", mnist.images.cols(),
                      " images of ", mnist.image_rows, " x ", mnist.image_cols, ", ",
                      mnist.labels.size(), " labels");
  }
  for (fqt::Index i = 0; i < n; ++i) {
    const int label = mnist.labels[static_cast<std::size_t>(i)];
    if (label < 0 || label > 9 || label != labels.data[static_cast<std::size_t>(i)]) {
      fqt_fuzz::finding("labels are the file's, in 0..9", "label ", label, " of sample ", i);
    }
    for (fqt::Index j = 0; j < pixels; ++j) {
      const float expected =
          static_cast<float>(images.data[static_cast<std::size_t>(i * pixels + j)]) / 255.0f;
      if (mnist.images(i, j) != expected) {
        fqt_fuzz::finding("pixels are the file's bytes / 255", "pixel (", i, ", ", j, ") is ",
                          mnist.images(i, j), ", expected ", expected);
      }
    }
  }
  return 0;
}
