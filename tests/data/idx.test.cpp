#include "fqt/data/idx.hpp"

#include <zlib.h>

#include <array>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "fqt/data/mnist.hpp"
#include "support/skip.hpp"

namespace fs = std::filesystem;
using fqt::data::format_error;
using fqt::data::IdxArray;
using fqt::data::io_error;
using fqt::data::Split;

namespace {

// A fresh directory under the system temporary directory, removed with its contents at scope exit.
class TempDir {
 public:
  TempDir() {
    static unsigned counter = 0;
    const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
    for (;;) {
      path_ = fs::temp_directory_path() /
              ("fqt-idx-test-" + std::to_string(stamp) + "-" + std::to_string(counter++));
      if (fs::create_directory(path_)) break;  // false: the name exists already, try the next
    }
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  fs::path operator/(const std::string& name) const { return path_ / name; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

using Bytes = std::vector<std::uint8_t>;

// Writes raw bytes, gzip-compressed or not, so that tests can build malformed files.
void write_bytes(const fs::path& path, const Bytes& bytes, bool gzip) {
  if (gzip) {
    gzFile file = gzopen(path.string().c_str(), "wb");
    REQUIRE(file != nullptr);
    if (!bytes.empty()) {
      REQUIRE(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())) ==
              static_cast<int>(bytes.size()));
    }
    REQUIRE(gzclose(file) == Z_OK);
  } else {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
  }
}

Bytes read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The bytes of an IDX header of type 0x08.
Bytes idx_header(std::initializer_list<std::uint32_t> dims) {
  Bytes header = {0x00, 0x00, 0x08, static_cast<std::uint8_t>(dims.size())};
  for (const std::uint32_t dim : dims) {
    for (int shift = 24; shift >= 0; shift -= 8)
      header.push_back(static_cast<std::uint8_t>(dim >> shift));
  }
  return header;
}

Bytes concat(Bytes first, const Bytes& second) {
  first.insert(first.end(), second.begin(), second.end());
  return first;
}

// 3 images of 4×5 pixels with distinct values, and their labels.
IdxArray small_images(std::uint32_t count = 3) {
  IdxArray images{{count, 4, 5}, Bytes(count * 20)};
  for (std::size_t i = 0; i < images.data.size(); ++i) {
    images.data[i] = static_cast<std::uint8_t>((i * 37 + 11) % 256);
  }
  images.data[0] = 0;
  images.data[1] = 255;
  return images;
}

IdxArray small_labels(Bytes values = {7, 0, 9}) {
  return IdxArray{{static_cast<std::uint32_t>(values.size())}, std::move(values)};
}

// Matches an exception whose what() contains every fragment.
class MessageContains : public Catch::MatcherBase<std::exception> {
 public:
  explicit MessageContains(std::vector<std::string> fragments) : fragments_(std::move(fragments)) {}
  bool match(const std::exception& error) const override {
    const std::string message = error.what();
    for (const std::string& fragment : fragments_) {
      if (message.find(fragment) == std::string::npos) return false;
    }
    return true;
  }
  std::string describe() const override {
    std::string text = "has a message containing";
    for (const std::string& fragment : fragments_) text += " \"" + fragment + "\"";
    return text;
  }

 private:
  std::vector<std::string> fragments_;
};

MessageContains message_contains(std::vector<std::string> fragments) {
  return MessageContains(std::move(fragments));
}

}  // namespace

TEST_CASE("write_idx and read_idx round-trip an array, plain and gzip", "[data][idx]") {
  const bool gzip = GENERATE(false, true);
  CAPTURE(gzip);
  TempDir dir;
  const IdxArray images = small_images();
  const IdxArray labels = small_labels();
  fqt::data::write_idx(dir / "images", images, gzip);
  fqt::data::write_idx(dir / "labels", labels, gzip);

  const Bytes raw = read_bytes(dir / "images");
  REQUIRE(raw.size() >= 4);
  if (gzip) {
    CHECK(raw[0] == 0x1f);
    CHECK(raw[1] == 0x8b);
  } else {
    // The exact IDX bytes: the magic number, big-endian dims, then the data.
    CHECK(raw == concat(idx_header({3, 4, 5}), images.data));
  }

  const IdxArray images_read = fqt::data::read_idx(dir / "images");
  CHECK(images_read.dims == images.dims);
  CHECK(images_read.data == images.data);
  const IdxArray labels_read = fqt::data::read_idx(dir / "labels");
  CHECK(labels_read.dims == labels.dims);
  CHECK(labels_read.data == labels.data);
}

TEST_CASE("read_idx reads big-endian dimensions above 255 and empty arrays", "[data][idx]") {
  const bool gzip = GENERATE(false, true);
  CAPTURE(gzip);
  TempDir dir;
  const IdxArray wide{{1, 0x0102}, Bytes(0x0102, 3)};
  fqt::data::write_idx(dir / "wide", wide, gzip);
  CHECK(fqt::data::read_idx(dir / "wide").dims == wide.dims);

  const IdxArray empty{{0, 28, 28}, {}};
  fqt::data::write_idx(dir / "empty", empty, gzip);
  const IdxArray empty_read = fqt::data::read_idx(dir / "empty");
  CHECK(empty_read.dims == empty.dims);
  CHECK(empty_read.data.empty());
}

TEST_CASE("write_idx rejects dimensions that do not match the data", "[data][idx]") {
  TempDir dir;
  CHECK_THROWS_MATCHES(fqt::data::write_idx(dir / "x", IdxArray{{3, 4}, Bytes(11)}, false),
                       std::invalid_argument,
                       message_contains({"write_idx", "12 elements", "data has 11"}));
  CHECK_THROWS_MATCHES(fqt::data::write_idx(dir / "x", IdxArray{{}, Bytes(1)}, false),
                       std::invalid_argument,
                       message_contains({"write_idx", "1 to 255 dimensions"}));
}

TEST_CASE("write_idx reports a file it cannot create", "[data][idx]") {
  TempDir dir;
  CHECK_THROWS_MATCHES(fqt::data::write_idx(dir / "no-such-dir" / "x", small_labels(), true),
                       io_error,
                       message_contains({"write_idx", "no-such-dir", "cannot open for writing"}));
}

TEST_CASE("read_idx reports a missing file or a directory as io_error", "[data][idx]") {
  TempDir dir;
  const fs::path missing = dir / "missing.gz";
  CHECK_THROWS_MATCHES(fqt::data::read_idx(missing), io_error,
                       message_contains({"read_idx: " + missing.string(), "no such file"}));
  CHECK_THROWS_MATCHES(fqt::data::read_idx(dir.path()), io_error,
                       message_contains({"read_idx", "is a directory"}));
}

TEST_CASE("read_idx rejects a wrong magic number", "[data][idx]") {
  const bool gzip = GENERATE(false, true);
  CAPTURE(gzip);
  TempDir dir;
  const fs::path path = dir / "bad";

  SECTION("nonzero leading bytes") {
    write_bytes(path, concat({0x50, 0x4b, 0x08, 0x01, 0, 0, 0, 1}, {0}), gzip);
    CHECK_THROWS_MATCHES(fqt::data::read_idx(path), format_error,
                         message_contains({"read_idx: " + path.string(), "wrong magic number",
                                           "0x50 0x4b 0x08 0x01"}));
  }
  SECTION("an unknown type code") {
    write_bytes(path, {0x00, 0x00, 0x42, 0x01, 0, 0, 0, 1, 0}, gzip);
    CHECK_THROWS_MATCHES(fqt::data::read_idx(path), format_error,
                         message_contains({"wrong magic number", "unknown type code 0x42"}));
  }
  SECTION("zero dimensions") {
    write_bytes(path, {0x00, 0x00, 0x08, 0x00, 7}, gzip);
    CHECK_THROWS_MATCHES(fqt::data::read_idx(path), format_error,
                         message_contains({"wrong magic number", "zero dimensions"}));
  }
  SECTION("a file shorter than the magic number") {
    write_bytes(path, {0x00, 0x00}, gzip);
    CHECK_THROWS_MATCHES(fqt::data::read_idx(path), format_error,
                         message_contains({"truncated header", "got 2 bytes"}));
  }
}

TEST_CASE("read_idx rejects IDX types other than unsigned byte", "[data][idx]") {
  const auto type = GENERATE(as<std::uint8_t>{}, 0x09, 0x0B, 0x0C, 0x0D, 0x0E);
  CAPTURE(int{type});
  TempDir dir;
  const fs::path path = dir / "typed";
  write_bytes(path, {0x00, 0x00, type, 0x01, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}, false);
  CHECK_THROWS_MATCHES(fqt::data::read_idx(path), format_error,
                       message_contains({"read_idx", "unsupported type code",
                                         "only 0x08 (unsigned byte) is supported"}));
}

TEST_CASE("read_idx names the float32 type code it does not support", "[data][idx]") {
  TempDir dir;
  write_bytes(dir / "f32", {0x00, 0x00, 0x0D, 0x01, 0, 0, 0, 1, 0, 0, 0x80, 0x3f}, true);
  CHECK_THROWS_MATCHES(fqt::data::read_idx(dir / "f32"), format_error,
                       message_contains({"unsupported type code 0x0d (float32)"}));
}

TEST_CASE("read_idx rejects dimensions that overflow or exceed the size limit", "[data][idx]") {
  const bool gzip = GENERATE(false, true);
  CAPTURE(gzip);
  TempDir dir;
  const fs::path path = dir / "huge";

  SECTION("a product that overflows 64 bits") {
    write_bytes(path, idx_header({0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}), gzip);
    CHECK_THROWS_MATCHES(fqt::data::read_idx(path), format_error,
                         message_contains({"read_idx", "dimensions 4294967295 x 4294967295",
                                           "more than the limit"}));
  }
  SECTION("a product above max_bytes") {
    fqt::data::write_idx(path, small_images(), gzip);
    CHECK_THROWS_MATCHES(fqt::data::read_idx(path, 59), format_error,
                         message_contains({"dimensions 3 x 4 x 5", "limit of 59 bytes"}));
    CHECK(fqt::data::read_idx(path, 60).data.size() == 60);
  }
}

TEST_CASE("read_idx bounds the dimensions of an empty array too", "[data][idx]") {
  const bool gzip = GENERATE(false, true);
  CAPTURE(gzip);
  TempDir dir;
  const fs::path path = dir / "empty-but-huge";
  // No element, but a consumer multiplying the other dimensions (rows x cols) would overflow.
  write_bytes(path, idx_header({0, 0xFFFFFFFF, 0xFFFFFFFF}), gzip);
  CHECK_THROWS_MATCHES(
      fqt::data::read_idx(path), format_error,
      message_contains({"read_idx: " + path.string(), "dimensions 0 x 4294967295 x 4294967295",
                        "non-zero dimensions", "limit of 1073741824 bytes"}));
  write_bytes(path, idx_header({0xFFFFFFFF, 0, 0xFFFFFFFF, 0xFFFFFFFF}), gzip);
  CHECK_THROWS_MATCHES(fqt::data::read_idx(path), format_error,
                       message_contains({"4294967295 x 0 x 4294967295 x 4294967295"}));
  // Within the limit, an empty array of large items is valid.
  write_bytes(path, idx_header({0, 1u << 15, 1u << 15}), gzip);
  CHECK(fqt::data::read_idx(path).dims == std::vector<std::uint32_t>{0, 1u << 15, 1u << 15});
  CHECK_THROWS_MATCHES(fqt::data::read_idx(path, (std::uint64_t{1} << 30) - 1), format_error,
                       message_contains({"dimensions 0 x 32768 x 32768", "non-zero dimensions"}));
}

TEST_CASE("load_mnist refuses images whose pixel count rows x cols overflows", "[data][idx]") {
  const bool gzip = GENERATE(false, true);
  CAPTURE(gzip);
  TempDir dir;
  const std::string suffix = gzip ? ".gz" : "";
  const fs::path images_path = dir / ("t10k-images-idx3-ubyte" + suffix);
  // 0 images of (2^32 - 1) x (2^32 - 1) pixels: rows * cols overflows a signed 64-bit Index.
  write_bytes(images_path, idx_header({0, 0xFFFFFFFF, 0xFFFFFFFF}), gzip);
  fqt::data::write_idx(dir / ("t10k-labels-idx1-ubyte" + suffix), IdxArray{{0}, {}}, gzip);
  CHECK_THROWS_MATCHES(fqt::data::load_mnist(dir.path(), Split::Test), format_error,
                       message_contains({"load_mnist: " + images_path.string(),
                                         "dimensions 0 x 4294967295 x 4294967295"}));
  // 0 images of 28 x 28 are a valid, empty data set.
  fqt::data::write_idx(images_path, IdxArray{{0, 28, 28}, {}}, gzip);
  const fqt::data::MnistData empty = fqt::data::load_mnist(dir.path(), Split::Test);
  CHECK(empty.images.rows() == 0);
  CHECK(empty.images.cols() == 28 * 28);
  CHECK(empty.labels.empty());
}

TEST_CASE("read_idx reports truncated data with the expected and actual sizes", "[data][idx]") {
  const bool gzip = GENERATE(false, true);
  CAPTURE(gzip);
  TempDir dir;
  const fs::path path = dir / "short";

  SECTION("one byte short") {
    write_bytes(path, concat(idx_header({3, 4, 5}), Bytes(59, 1)), gzip);
    CHECK_THROWS_MATCHES(fqt::data::read_idx(path), format_error,
                         message_contains({"read_idx: " + path.string(),
                                           "truncated data: expected 60 bytes, got 59"}));
  }
  SECTION("a header of MNIST's training images with little data behind it") {
    // Must be refused before 47 MB are allocated (for gzip: a 1 kB file cannot hold them).
    write_bytes(path, concat(idx_header({60000, 28, 28}), Bytes(123, 1)), gzip);
    CHECK_THROWS_MATCHES(fqt::data::read_idx(path), format_error,
                         message_contains({"truncated data", "47040000 bytes"}));
  }
  SECTION("a header cut inside the dimensions") {
    write_bytes(path, {0x00, 0x00, 0x08, 0x03, 0, 0, 0, 3, 0, 0}, gzip);
    CHECK_THROWS_MATCHES(fqt::data::read_idx(path), format_error,
                         message_contains({"truncated header", "expected 12 bytes", "got 6"}));
  }
}

TEST_CASE("read_idx checks the declared size against the file before allocating it",
          "[data][idx]") {
  const bool gzip = GENERATE(false, true);
  CAPTURE(gzip);
  TempDir dir;
  const fs::path path = dir / "claims-a-petabyte";
  // 2^50 bytes exceed the address space of an x86-64 process: reading without checking the file
  // first would throw std::bad_alloc instead of reporting the truncation.
  write_bytes(path, concat(idx_header({1u << 25, 1u << 25}), Bytes(100, 1)), gzip);
  CHECK_THROWS_MATCHES(fqt::data::read_idx(path, std::uint64_t{1} << 52), format_error,
                       message_contains({"read_idx", "truncated data", "1125899906842624 bytes"}));
}

TEST_CASE("read_idx reports a gzip file cut short as truncated", "[data][idx]") {
  TempDir dir;
  const fs::path whole = dir / "whole.gz";
  const fs::path cut = dir / "cut.gz";
  IdxArray noise{{1000}, Bytes(1000)};
  std::uint32_t state = 12345;  // a fixed LCG, so that the data does not compress to nothing
  for (auto& byte : noise.data)
    byte = static_cast<std::uint8_t>((state = state * 1664525u + 1013904223u) >> 24);
  fqt::data::write_idx(whole, noise, true);
  const Bytes compressed = read_bytes(whole);
  write_bytes(cut, Bytes(compressed.begin(), compressed.begin() + compressed.size() / 2), false);
  CHECK_THROWS_MATCHES(fqt::data::read_idx(cut), format_error,
                       message_contains({"read_idx", "truncated data: expected 1000 bytes, got"}));
}

TEST_CASE("read_idx reports a corrupt gzip stream", "[data][idx]") {
  TempDir dir;
  const fs::path path = dir / "corrupt.gz";
  fqt::data::write_idx(path, small_images(), true);
  Bytes compressed = read_bytes(path);
  REQUIRE(compressed.size() > 30);
  compressed[compressed.size() - 6] ^= 0xFF;  // inside the CRC-32 of the gzip trailer
  write_bytes(path, compressed, false);
  CHECK_THROWS_MATCHES(fqt::data::read_idx(path), format_error,
                       message_contains({"read_idx", "corrupt gzip stream"}));
}

TEST_CASE("read_idx rejects trailing garbage after the declared data", "[data][idx]") {
  const bool gzip = GENERATE(false, true);
  CAPTURE(gzip);
  TempDir dir;
  const fs::path path = dir / "long";
  write_bytes(path, concat(idx_header({3, 4, 5}), Bytes(63, 1)), gzip);
  CHECK_THROWS_MATCHES(fqt::data::read_idx(path), format_error,
                       message_contains({"read_idx: " + path.string(), "trailing garbage",
                                         "after the 60 data bytes"}));
}

TEST_CASE("load_mnist scales pixels to [0, 1] and keeps labels, plain and gzip", "[data][idx]") {
  const bool gzip = GENERATE(false, true);
  CAPTURE(gzip);
  TempDir dir;
  const std::string suffix = gzip ? ".gz" : "";
  const IdxArray images = small_images();
  fqt::data::write_idx(dir / ("t10k-images-idx3-ubyte" + suffix), images, gzip);
  fqt::data::write_idx(dir / ("t10k-labels-idx1-ubyte" + suffix), small_labels({7, 0, 9}), gzip);

  const fqt::data::MnistData test = fqt::data::load_mnist(dir.path(), Split::Test);
  CHECK(test.image_rows == 4);
  CHECK(test.image_cols == 5);
  REQUIRE(test.images.rows() == 3);
  REQUIRE(test.images.cols() == 20);
  CHECK(test.labels == std::vector<int>{7, 0, 9});
  for (fqt::Index i = 0; i < 3; ++i) {
    for (fqt::Index j = 0; j < 20; ++j) {
      // Exactly the correctly rounded quotient: x / 255 in float.
      CHECK(test.images(i, j) == static_cast<float>(images.data[i * 20 + j]) / 255.0f);
    }
  }
  CHECK(test.images(0, 0) == 0.0f);
  CHECK(test.images(0, 1) == 1.0f);

  const fqt::data::MnistData first_two = fqt::data::load_mnist(dir.path(), Split::Test, 2);
  CHECK(first_two.images.rows() == 2);
  CHECK(first_two.images == test.images.topRows(2));
  CHECK(first_two.labels == std::vector<int>{7, 0});
  CHECK(fqt::data::load_mnist(dir.path(), Split::Test, 0).images.rows() == 0);
  CHECK_THROWS_MATCHES(fqt::data::load_mnist(dir.path(), Split::Test, -1), std::invalid_argument,
                       message_contains({"load_mnist", "max_samples", "-1"}));

  // The training files are other names: absent here.
  CHECK_THROWS_MATCHES(fqt::data::load_mnist(dir.path(), Split::Train), io_error,
                       message_contains({"load_mnist",
                                         "neither train-images-idx3-ubyte.gz nor "
                                         "train-images-idx3-ubyte exists"}));
}

TEST_CASE("load_mnist prefers the .gz file when both exist", "[data][idx]") {
  TempDir dir;
  fqt::data::write_idx(dir / "train-images-idx3-ubyte", small_images(2), false);
  fqt::data::write_idx(dir / "train-labels-idx1-ubyte", small_labels({1, 1}), false);
  fqt::data::write_idx(dir / "train-images-idx3-ubyte.gz", small_images(3), true);
  fqt::data::write_idx(dir / "train-labels-idx1-ubyte.gz", small_labels({2, 2, 2}), true);
  const fqt::data::MnistData train = fqt::data::load_mnist(dir.path(), Split::Train);
  CHECK(train.images.rows() == 3);
  CHECK(train.labels == std::vector<int>{2, 2, 2});
}

TEST_CASE("load_mnist rejects inconsistent files", "[data][idx]") {
  TempDir dir;
  const fs::path images_path = dir / "t10k-images-idx3-ubyte.gz";
  const fs::path labels_path = dir / "t10k-labels-idx1-ubyte.gz";

  SECTION("a missing directory") {
    CHECK_THROWS_MATCHES(fqt::data::load_mnist(dir / "nowhere", Split::Test), io_error,
                         message_contains({"load_mnist", "nowhere", "no such directory"}));
  }
  SECTION("different image and label counts") {
    fqt::data::write_idx(images_path, small_images(3), true);
    fqt::data::write_idx(labels_path, small_labels({1, 2}), true);
    CHECK_THROWS_MATCHES(
        fqt::data::load_mnist(dir.path(), Split::Test), format_error,
        message_contains({"load_mnist", "count mismatch", "3 images", "2 labels"}));
  }
  SECTION("a label out of range") {
    fqt::data::write_idx(images_path, small_images(3), true);
    fqt::data::write_idx(labels_path, small_labels({1, 10, 2}), true);
    CHECK_THROWS_MATCHES(fqt::data::load_mnist(dir.path(), Split::Test), format_error,
                         message_contains({"load_mnist: " + labels_path.string(),
                                           "label 10 of sample 1 is out of range 0..9"}));
  }
  SECTION("labels with the shape of images") {
    fqt::data::write_idx(images_path, small_images(3), true);
    fqt::data::write_idx(labels_path, small_images(3), true);
    CHECK_THROWS_MATCHES(fqt::data::load_mnist(dir.path(), Split::Test), format_error,
                         message_contains({"labels must have 1 dimension", "got 3"}));
  }
  SECTION("images without rows and columns") {
    fqt::data::write_idx(images_path, small_labels({1, 2, 3}), true);
    fqt::data::write_idx(labels_path, small_labels({1, 2, 3}), true);
    CHECK_THROWS_MATCHES(fqt::data::load_mnist(dir.path(), Split::Test), format_error,
                         message_contains({"images must have 3 dimensions", "got 1"}));
  }
  SECTION("a truncated file, reported by load_mnist with the file") {
    write_bytes(images_path, concat(idx_header({3, 4, 5}), Bytes(10, 1)), true);
    fqt::data::write_idx(labels_path, small_labels(), true);
    CHECK_THROWS_MATCHES(fqt::data::load_mnist(dir.path(), Split::Test), format_error,
                         message_contains({"load_mnist: " + images_path.string(),
                                           "truncated data: expected 60 bytes, got 10"}));
  }
}

TEST_CASE("load_mnist reads the Fashion-MNIST test split", "[data][idx]") {
  const fs::path dir = fqt_test::fashion_mnist_dir();
  if (!fqt_test::prerequisite(
          fs::is_directory(dir),
          dir.string() + " does not exist (Debian: apt install dataset-fashion-mnist)")) {
    return;
  }
  const fqt::data::MnistData test = fqt::data::load_mnist(dir, Split::Test);
  // Sizes from the Fashion-MNIST README: 10000 test images of 28×28, 1000 of each of 10 classes.
  CHECK(test.image_rows == 28);
  CHECK(test.image_cols == 28);
  REQUIRE(test.images.rows() == 10000);
  REQUIRE(test.images.cols() == 28 * 28);
  REQUIRE(test.labels.size() == 10000);
  CHECK(test.images.minCoeff() >= 0.0f);
  CHECK(test.images.maxCoeff() <= 1.0f);
  CHECK(test.images.maxCoeff() > 0.0f);
  std::array<int, 10> class_counts{};
  for (const int label : test.labels) {
    REQUIRE(label >= 0);
    REQUIRE(label <= 9);
    ++class_counts[static_cast<std::size_t>(label)];
  }
  for (const int count : class_counts) CHECK(count == 1000);
}
