// Tests of the Fashion-MNIST trainer (examples/trainer/): the data order, reproducible training,
// saving and loading parameters (and refusing bad files), the comparison's CSV, and — unless
// FQT_SKIP_SLOW_TESTS — end-to-end accuracy on Fashion-MNIST.

#include "trainer/trainer.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "fqt/nn/backends/int8.hpp"
#include "support/skip.hpp"

namespace fs = std::filesystem;
namespace nn = fqt::nn;
using Catch::Matchers::Contains;
using fqt_train::Dataset;
using fqt_train::Index;
using fqt_train::Matrix;

namespace {

// A fresh directory under the system temporary directory, removed with its contents at scope exit.
class ScratchDir {
 public:
  ScratchDir() {
    static unsigned counter = 0;
    const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
    for (;;) {
      path_ = fs::temp_directory_path() /
              ("fqt-train-test-" + std::to_string(stamp) + "-" + std::to_string(counter++));
      if (fs::create_directory(path_)) break;
    }
  }
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

// A learnable synthetic set of 16×16 images of 4 classes: class c has a bright 6×6 square in
// quadrant c, plus Gaussian noise (σ = 0.3), pixels in [−1, 1].
Dataset synthetic(Index n, std::uint64_t seed) {
  Dataset d;
  d.height = d.width = 16;
  d.classes = 4;
  d.images = Matrix::Constant(n, 256, -1.0f);
  d.labels.resize(static_cast<std::size_t>(n));
  const fqt::Philox rng(seed);
  for (Index i = 0; i < n; ++i) {
    const int c = static_cast<int>(i % 4);
    d.labels[static_cast<std::size_t>(i)] = c;
    const Index top = (c / 2) * 8 + 1, left = (c % 2) * 8 + 1;
    for (Index y = top; y < top + 6; ++y) {
      for (Index x = left; x < left + 6; ++x) d.images(i, y * 16 + x) = 1.0f;
    }
    for (Index k = 0; k < 256; ++k) {
      const double noise = 0.3 * rng.normal(static_cast<std::uint64_t>(i * 256 + k));
      d.images(i, k) = std::clamp(d.images(i, k) + static_cast<float>(noise), -1.0f, 1.0f);
    }
  }
  return d;
}

fqt_train::Architecture tiny_architecture(const Dataset& data) {
  fqt_train::Architecture a;
  a.conv1_channels = 2;
  a.conv2_channels = 4;
  a.hidden = 8;
  return fqt_train::architecture_for(data, a);
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_text(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::vector<std::string> split(const std::string& line, char separator) {
  std::vector<std::string> fields;
  std::stringstream s(line);
  std::string field;
  while (std::getline(s, field, separator)) fields.push_back(field);
  if (!line.empty() && line.back() == separator) fields.emplace_back();
  return fields;
}

bool parses_as_number(const std::string& text, double& value) {
  if (text.empty()) return false;
  char* end = nullptr;
  value = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size();
}

fqt_train::TrainOptions fast_options(nn::Mode mode) {
  fqt_train::TrainOptions o;
  o.policy = nn::QuantPolicy::with_mode(mode);
  o.epochs = 2;
  o.batch_size = 16;
  o.learning_rate = 0.05;
  o.seed = 7;
  return o;
}

}  // namespace

TEST_CASE("Each epoch visits every sample once, in an order fixed by the seed and the epoch",
          "[train]") {
  const fqt::Philox rng(5);
  const auto first = fqt_train::epoch_order(1000, rng, 0);
  std::vector<Index> sorted = first;
  std::sort(sorted.begin(), sorted.end());
  for (Index i = 0; i < 1000; ++i) REQUIRE(sorted[static_cast<std::size_t>(i)] == i);
  CHECK(fqt_train::epoch_order(1000, rng, 0) == first);
  CHECK(fqt_train::epoch_order(1000, rng, 1) != first);
  CHECK(fqt_train::epoch_order(1000, fqt::Philox(6), 0) != first);
  // Not the identity, nor a rotation: a fixed point count near the expected 1 of a random order.
  Index fixed_points = 0;
  for (Index i = 0; i < 1000; ++i) fixed_points += first[static_cast<std::size_t>(i)] == i;
  CHECK(fixed_points < 10);
  CHECK(fqt_train::epoch_order(0, rng, 0).empty());
  CHECK(fqt_train::epoch_order(1, rng, 0) == std::vector<Index>{0});
}

TEST_CASE("Training is reproducible and independent of the thread count", "[train]") {
  const Dataset data = synthetic(96, 1);
  const auto arch = tiny_architecture(data);
  auto options = fast_options(nn::Mode::FQT);
  options.policy.grad_input.bits = 4;
  fqt_train::Progress quiet(fqt_train::ProgressStyle::None);

  auto train_with = [&](int threads) {
    fqt::set_num_threads(threads);
    fqt_train::Model model(arch, fqt_train::seed_stream(options.seed, fqt_train::Stream::Init));
    const auto result = fqt_train::train(model, data, data, options, quiet);
    REQUIRE_FALSE(result.diverged);
    std::vector<Matrix> weights;
    for (const auto& p : model.parameters()) weights.push_back(p.variable.value());
    return std::make_pair(result, weights);
  };
  const auto [one, weights_one] = train_with(1);
  const auto [two, weights_two] = train_with(2);
  fqt::set_num_threads(1);
  REQUIRE(weights_one.size() == weights_two.size());
  for (std::size_t i = 0; i < weights_one.size(); ++i) CHECK(weights_one[i] == weights_two[i]);
  CHECK(one.final_test_accuracy == two.final_test_accuracy);
  CHECK(one.epochs.size() == 2);
  // The task is easy: two short epochs learn it, a broken backward pass would not.
  CHECK(one.final_test_accuracy > 0.9);
}

TEST_CASE("Saved parameters load back into the same predictions", "[train][checkpoint]") {
  ScratchDir dir;
  const Dataset data = synthetic(64, 2);
  const auto arch = tiny_architecture(data);
  fqt_train::Model trained(arch, fqt::Philox(11));
  fqt_train::Progress quiet(fqt_train::ProgressStyle::None);
  fqt_train::train(trained, data, Dataset{}, fast_options(nn::Mode::QAT), quiet);
  fqt_train::save_model(trained, dir / "model.fqt");

  fqt_train::Model loaded(arch, fqt::Philox(12));  // other initial weights
  const auto policy = nn::QuantPolicy::with_mode(nn::Mode::QAT);
  CHECK(trained.logits(data.images, policy) != loaded.logits(data.images, policy));
  fqt_train::load_model(loaded, dir / "model.fqt");
  const auto params_a = trained.parameters(), params_b = loaded.parameters();
  for (std::size_t i = 0; i < params_a.size(); ++i) {
    CHECK(params_a[i].variable.value() == params_b[i].variable.value());
  }
  CHECK(trained.logits(data.images, policy) == loaded.logits(data.images, policy));
  CHECK(fqt_train::predict(trained, data, policy) == fqt_train::predict(loaded, data, policy));

  // The documented layout: magic, version 2, tensor count, total size, records (the first one's
  // encoding after its name and shape: float32), ..., CRC-32.
  const std::string bytes = read_text(dir / "model.fqt");
  CHECK(bytes.substr(0, 8) == "FQTPARAM");
  CHECK(fqt_train::detail::get_u32(bytes, 8) == 2);
  CHECK(fqt_train::detail::get_u32(bytes, 24 + 4 + params_a[0].name.size() + 4 + 16) == 0);
  CHECK(fqt_train::detail::get_u32(bytes, 12) == params_a.size());
  CHECK(fqt_train::detail::get_u64(bytes, 16) == bytes.size());
  CHECK(fqt_train::detail::get_u32(bytes, bytes.size() - 4) ==
        static_cast<std::uint32_t>(::crc32(0, reinterpret_cast<const Bytef*>(bytes.data()),
                                           static_cast<uInt>(bytes.size() - 4))));
}

TEST_CASE("A corrupted, truncated or mismatched parameter file is refused with a clear error",
          "[train][checkpoint][errors]") {
  ScratchDir dir;
  const Dataset data = synthetic(8, 3);
  const auto arch = tiny_architecture(data);
  fqt_train::Model model(arch, fqt::Philox(21));
  const fs::path good = dir / "model.fqt";
  fqt_train::save_model(model, good);
  const std::string bytes = read_text(good);
  fqt_train::Model target(arch, fqt::Philox(22));
  const Matrix before = target.parameters()[0].variable.value();
  using fqt_train::checkpoint_error;

  SECTION("a flipped byte in the values") {
    std::string bad = bytes;
    bad[bad.size() / 2] = static_cast<char>(bad[bad.size() / 2] ^ 0x10);
    write_text(dir / "flipped.fqt", bad);
    CHECK_THROWS_AS(fqt_train::load_model(target, dir / "flipped.fqt"), checkpoint_error);
    CHECK_THROWS_WITH(fqt_train::load_model(target, dir / "flipped.fqt"),
                      Contains((dir / "flipped.fqt").string()) && Contains("checksum mismatch") &&
                          Contains("corrupted"));
  }
  SECTION("a truncated file") {
    write_text(dir / "short.fqt", bytes.substr(0, bytes.size() - 37));
    CHECK_THROWS_AS(fqt_train::load_model(target, dir / "short.fqt"), checkpoint_error);
    CHECK_THROWS_WITH(fqt_train::load_model(target, dir / "short.fqt"),
                      Contains((dir / "short.fqt").string()) && Contains("truncated"));
    write_text(dir / "header.fqt", bytes.substr(0, 10));
    CHECK_THROWS_WITH(fqt_train::load_model(target, dir / "header.fqt"), Contains("truncated"));
  }
  SECTION("trailing bytes") {
    write_text(dir / "long.fqt", bytes + "extra");
    CHECK_THROWS_WITH(fqt_train::load_model(target, dir / "long.fqt"), Contains("trailing bytes"));
  }
  SECTION("a file of a model of another architecture") {
    auto other_arch = arch;
    other_arch.conv2_channels = 5;
    fqt_train::Model other(other_arch, fqt::Philox(23));
    fqt_train::save_model(other, dir / "other.fqt");
    CHECK_THROWS_AS(fqt_train::load_model(target, dir / "other.fqt"), checkpoint_error);
    CHECK_THROWS_WITH(fqt_train::load_model(target, dir / "other.fqt"),
                      Contains((dir / "other.fqt").string()) && Contains("'3.weight'") &&
                          Contains("5 x 50") && Contains("4 x 50") &&
                          Contains("another architecture"));
    // Another number of tensors.
    fqt_train::save_parameters({model.parameters()[0]}, dir / "one.fqt");
    CHECK_THROWS_WITH(fqt_train::load_model(target, dir / "one.fqt"),
                      Contains("holds 1 parameter tensors but the model has 8"));
  }
  SECTION("not a parameter file, or missing") {
    write_text(dir / "text.fqt", "hello, world: this is not a parameter file at all");
    CHECK_THROWS_WITH(fqt_train::load_model(target, dir / "text.fqt"),
                      Contains("not an fqt parameter file"));
    for (const char version : {'\0', '\3'}) {
      std::string other_version = bytes;
      other_version[8] = version;
      write_text(dir / "version.fqt", other_version);
      CHECK_THROWS_WITH(fqt_train::load_model(target, dir / "version.fqt"),
                        Contains("unsupported format version " + std::to_string(int(version))) &&
                            Contains("reads versions 1 to 2"));
    }
    CHECK_THROWS_AS(fqt_train::load_model(target, dir / "missing.fqt"), checkpoint_error);
    CHECK_THROWS_WITH(fqt_train::load_model(target, dir / "missing.fqt"),
                      Contains("missing.fqt") && Contains("cannot open"));
  }
  // A refused file leaves the model as it was.
  CHECK(target.parameters()[0].variable.value() == before);
}

TEST_CASE("A parameter file is checked against its real size before its contents are read",
          "[train][checkpoint][errors]") {
  ScratchDir dir;
  const Dataset data = synthetic(8, 3);
  fqt_train::Model target(tiny_architecture(data), fqt::Philox(22));
  const Matrix before = target.parameters()[0].variable.value();
  using fqt_train::checkpoint_error;

  SECTION("a device that never ends") {
    // Read to the end first, /dev/zero would grow a string until memory runs out.
    CHECK_THROWS_AS(fqt_train::load_model(target, "/dev/zero"), checkpoint_error);
    CHECK_THROWS_WITH(fqt_train::load_model(target, "/dev/zero"),
                      Contains("/dev/zero") && Contains("not a regular file"));
  }
  SECTION("a directory") {
    CHECK_THROWS_WITH(fqt_train::load_model(target, dir / "."),
                      Contains("is a directory, not a parameter file"));
  }
  SECTION("a huge file whose header declares its size") {
    // A sparse file of 8 GiB with a valid header: refused from its header alone, where reading
    // it whole would exhaust the memory (the model's file takes a few kB).
    const fs::path huge = dir / "huge.fqt";
    std::string header(fqt_train::kCheckpointMagic, sizeof(fqt_train::kCheckpointMagic));
    fqt_train::detail::put_u32(header, fqt_train::kCheckpointVersion);
    fqt_train::detail::put_u32(header, 8);
    const std::uint64_t size = std::uint64_t{1} << 33;
    fqt_train::detail::put_u64(header, size);
    write_text(huge, header);
    std::error_code error;
    fs::resize_file(huge, size, error);
    if (!error) {
      CHECK_THROWS_WITH(fqt_train::load_model(target, huge),
                        Contains(huge.string()) && Contains("8589934592 bytes") &&
                            Contains("a parameter file of this model has") &&
                            Contains("another architecture"));
    } else {
      WARN("skipped: the file system of " << huge << " cannot hold a sparse 8 GiB file");
    }
  }
  CHECK(target.parameters()[0].variable.value() == before);
}

TEST_CASE("Saving refuses parameters that loading would refuse", "[train][checkpoint][errors]") {
  ScratchDir dir;
  const Dataset data = synthetic(8, 3);
  fqt_train::Model model(tiny_architecture(data), fqt::Philox(21));
  const fs::path path = dir / "model.fqt";
  using fqt_train::checkpoint_error;

  SECTION("names of 0 or more than 1024 bytes") {
    for (const std::size_t length : {std::size_t{0}, std::size_t{1025}}) {
      auto parameters = model.parameters();
      parameters[1].name = std::string(length, 'n');
      CAPTURE(length);
      CHECK_THROWS_AS(fqt_train::save_parameters(parameters, path), checkpoint_error);
      CHECK_THROWS_WITH(fqt_train::save_parameters(parameters, path),
                        Contains(path.string()) && Contains("parameter 1") &&
                            Contains("name of " + std::to_string(length) + " bytes") &&
                            Contains("[1, 1024]"));
      CHECK_FALSE(fs::exists(path));
    }
    auto parameters = model.parameters();
    parameters[1].name = std::string(1024, 'n');
    fqt_train::save_parameters(parameters, path);
    fqt_train::load_parameters(parameters, path);
  }
  SECTION("non-finite values") {
    fqt_train::save_model(model, path);
    const std::string good = read_text(path);
    Matrix& value = model.parameters()[2].variable.value();
    value(1, 3) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(fqt_train::save_model(model, path), checkpoint_error);
    CHECK_THROWS_WITH(fqt_train::save_model(model, path),
                      Contains(path.string()) && Contains("'3.weight'") &&
                          Contains("non-finite value inf at element 53"));
    CHECK((read_text(path) == good));  // the previous file is left as it was
  }
}

namespace {

using fqt_train::StoredWeights;
using Stored = nn::QuantizedSGD<float>::Stored;
using Codes8 = nn::QuantizedTensor<std::int8_t>;
using Codes16 = nn::QuantizedTensor<std::int16_t>;

// Codes off the grid the optimizer would fit to their values (small codes, the extremes ±kMaxCode
// in row 0 only, a zero step), for every weight of `parameters`; monostate for the others.
template <class Code>
StoredWeights made_up_codes(const std::vector<nn::Parameter<float>>& parameters, bool per_row) {
  constexpr int kMax = nn::QuantizedTensor<Code>::kMaxCode;
  StoredWeights weights(parameters.size());
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    if (!parameters[i].weight_decay) continue;
    const Index rows = parameters[i].variable.value().rows();
    const Index cols = parameters[i].variable.value().cols();
    std::vector<Code> codes(static_cast<std::size_t>(rows * cols));
    for (std::size_t k = 0; k < codes.size(); ++k) {
      codes[k] = static_cast<Code>(static_cast<int>((k * 7 + i) % 11) - 5);
    }
    codes[0] = static_cast<Code>(kMax);
    codes[1] = static_cast<Code>(-kMax);
    std::vector<float> steps(static_cast<std::size_t>(per_row ? rows : 1));
    for (std::size_t r = 0; r < steps.size(); ++r) steps[r] = 0.004f * float(r + 1) / float(i + 1);
    if (steps.size() > 2) steps[2] = 0.0f;
    weights[i] = nn::QuantizedTensor<Code>(rows, cols, per_row, std::move(codes), std::move(steps));
  }
  return weights;
}

std::vector<Matrix> values_of(const std::vector<nn::Parameter<float>>& parameters) {
  std::vector<Matrix> values;
  for (const auto& p : parameters) values.push_back(p.variable.value());
  return values;
}

// Where a version-2 record's fields start.
struct RecordLayout {
  std::string name;
  std::size_t encoding = 0, steps = 0, data = 0;  // offsets; steps only for codes
};

// The records of a well-formed version-2 file.
std::vector<RecordLayout> v2_layout(const std::string& bytes) {
  using fqt_train::detail::get_u32;
  using fqt_train::detail::get_u64;
  std::vector<RecordLayout> records;
  std::size_t at = 24;
  for (std::uint32_t k = 0; k < get_u32(bytes, 12); ++k) {
    RecordLayout r;
    const std::uint32_t length = get_u32(bytes, at);
    r.name = bytes.substr(at + 4, length);
    at += 4 + length;
    const std::uint32_t rank = get_u32(bytes, at);
    at += 4;
    std::uint64_t count = 1;
    for (std::uint32_t d = 0; d < rank; ++d, at += 8) count *= get_u64(bytes, at);
    r.encoding = at;
    const std::uint32_t encoding = get_u32(bytes, at);
    at += 4;
    if (encoding != 0) {
      const std::uint64_t steps = get_u64(bytes, at + 4);
      r.steps = at + 12;
      at = r.steps + 4 * steps;
    }
    r.data = at;
    at += count * (encoding == 0 ? 4 : encoding == 1 ? 1 : 2);
    records.push_back(r);
  }
  REQUIRE(at + 4 == bytes.size());
  return records;
}

// `bytes` with its CRC-32 recomputed, so that a change reaches the checks after the checksum.
std::string with_crc(std::string bytes) {
  bytes.resize(bytes.size() - 4);
  fqt_train::detail::put_u32(bytes, fqt_train::detail::crc32_of(bytes.data(), bytes.size()));
  return bytes;
}

void put_float_at(std::string& bytes, std::size_t at, float v) {
  std::string encoded;
  fqt_train::detail::put_f32(encoded, v);
  bytes.replace(at, 4, encoded);
}

}  // namespace

TEST_CASE("Coded weights round-trip through a version-2 file bit for bit and resume from there",
          "[train][checkpoint]") {
  ScratchDir dir;
  const Dataset data = synthetic(64, 2);
  const auto arch = tiny_architecture(data);
  const int bits = GENERATE(8, 16);
  CAPTURE(bits);
  auto options = fast_options(nn::Mode::FQT);
  options.epochs = 1;
  options.weight_bits = bits;
  options.momentum_bits = 8;
  fqt_train::Progress quiet(fqt_train::ProgressStyle::None);
  const fs::path path = dir / "codes.fqt";

  SECTION("the stored weights of a run") {
    fqt_train::Model trained(arch, fqt::Philox(11));
    const auto result = fqt_train::train(trained, data, Dataset{}, options, quiet);
    REQUIRE_FALSE(result.diverged);
    const auto parameters = trained.parameters();
    REQUIRE(result.stored_weights.size() == parameters.size());
    for (std::size_t i = 0; i < parameters.size(); ++i) {
      CAPTURE(parameters[i].name);
      // Weights as codes of the run's width, biases in float.
      CHECK(result.stored_weights[i].index() ==
            (parameters[i].weight_decay ? (bits == 8 ? 1u : 2u) : 0u));
    }
    CHECK(fqt_train::stored_bits(result.stored_weights) == bits);
    fqt_train::save_model(trained, result.stored_weights, path);
    const std::string bytes = read_text(path);
    CHECK(fqt_train::detail::get_u32(bytes, 8) == 2);
    const auto layout = v2_layout(bytes);
    REQUIRE(layout.size() == parameters.size());
    CHECK(fqt_train::detail::get_u32(bytes, layout[0].encoding) == (bits == 8 ? 1u : 2u));
    CHECK(fqt_train::detail::get_u32(bytes, layout[1].encoding) == 0u);  // 0.bias: float32
    // Codes take 1 or 2 bytes per weight, the float32 file 4.
    CHECK(bytes.size() < fqt_train::detail::checkpoint_size(parameters));

    fqt_train::Model loaded(arch, fqt::Philox(12));
    const StoredWeights codes = fqt_train::load_model(loaded, path);
    CHECK(codes == result.stored_weights);
    // The model gets the codes' values: the trained model's views, exactly.
    CHECK(values_of(loaded.parameters()) == values_of(parameters));
    const auto policy = options.policy;
    CHECK(fqt_train::predict(trained, data, policy) == fqt_train::predict(loaded, data, policy));
  }
  SECTION("codes the optimizer would not fit to their values") {
    fqt_train::Model model(arch, fqt::Philox(13));
    const auto parameters = model.parameters();
    const StoredWeights made = bits == 8 ? made_up_codes<std::int8_t>(parameters, true)
                                         : made_up_codes<std::int16_t>(parameters, true);
    fqt_train::save_model(model, made, path);
    fqt_train::Model loaded(arch, fqt::Philox(14));
    auto codes = std::make_shared<const StoredWeights>(fqt_train::load_model(loaded, path));
    REQUIRE(*codes == made);
    const auto values = values_of(loaded.parameters());
    for (std::size_t i = 0; i < parameters.size(); ++i) {
      if (!parameters[i].weight_decay) {
        CHECK(values[i] == parameters[i].variable.value());  // float32 record
        continue;
      }
      Matrix expected(values[i].rows(), values[i].cols());
      std::visit(
          [&](const auto& t) {
            if constexpr (!std::is_same_v<std::decay_t<decltype(t)>, std::monostate>) {
              t.read(expected);
            }
          },
          made[i]);
      CHECK(values[i] == expected);  // the dequantized codes
    }

    // An optimizer started from the loaded codes stores exactly them; one started from the
    // values alone rounds them onto grids of its own.
    auto resumed = options;
    resumed.initial_codes = codes;
    {
      fqt_train::detail::Optimizer sgd(loaded.parameters(), fqt_train::detail::sgd_options(resumed),
                                       resumed);
      CHECK(sgd.stored_weights() == made);
    }
    // (With 8-bit codes the optimizer frees the float views while it lives and then writes them
    // back.)
    CHECK(values_of(loaded.parameters()) == values);
    {
      fqt_train::detail::Optimizer sgd(loaded.parameters(), fqt_train::detail::sgd_options(options),
                                       options);
      CHECK_FALSE(sgd.stored_weights() == made);
    }
    // And a run resumed from them trains (the codes' width and granularity fit).
    fqt_train::Model again(arch, fqt::Philox(15));
    fqt_train::load_model(again, path);
    const auto result = fqt_train::train(again, data, Dataset{}, resumed, quiet);
    CHECK_FALSE(result.diverged);
    CHECK(fqt_train::stored_bits(result.stored_weights) == bits);
  }
  SECTION("one step per tensor") {
    fqt_train::Model model(arch, fqt::Philox(16));
    const StoredWeights made = bits == 8 ? made_up_codes<std::int8_t>(model.parameters(), false)
                                         : made_up_codes<std::int16_t>(model.parameters(), false);
    fqt_train::save_model(model, made, path);
    fqt_train::Model loaded(arch, fqt::Philox(17));
    const StoredWeights codes = fqt_train::load_model(loaded, path);
    CHECK(codes == made);
    // The simulated backend keeps a step per row: it cannot resume from these codes.
    auto resumed = options;
    resumed.initial_codes = std::make_shared<const StoredWeights>(codes);
    const auto before = values_of(loaded.parameters());
    CHECK_THROWS_AS(fqt_train::train(loaded, data, Dataset{}, resumed, quiet),
                    std::invalid_argument);
    CHECK_THROWS_WITH(fqt_train::train(loaded, data, Dataset{}, resumed, quiet),
                      Contains("initial_codes") && Contains("'0.weight'") && Contains("one step") &&
                          Contains("a step per row"));
    CHECK(values_of(loaded.parameters()) == before);
  }
}

TEST_CASE("A run refuses initial codes that do not fit its weight storage", "[train][errors]") {
  const Dataset data = synthetic(16, 4);
  const auto arch = tiny_architecture(data);
  fqt_train::Model model(arch, fqt::Philox(31));
  fqt_train::Progress quiet(fqt_train::ProgressStyle::None);
  const auto before = values_of(model.parameters());
  auto options = fast_options(nn::Mode::FQT);
  options.epochs = 1;
  options.initial_codes =
      std::make_shared<const StoredWeights>(made_up_codes<std::int8_t>(model.parameters(), true));

  options.weight_bits = 16;
  CHECK_THROWS_AS(fqt_train::train(model, data, Dataset{}, options, quiet), std::invalid_argument);
  CHECK_THROWS_WITH(fqt_train::train(model, data, Dataset{}, options, quiet),
                    Contains("initial_codes") && Contains("'0.weight' has 8-bit codes") &&
                        Contains("stores its weights in 16 bits") &&
                        Contains("give weight bits 8"));
  options.weight_bits = 32;
  CHECK_THROWS_WITH(fqt_train::train(model, data, Dataset{}, options, quiet),
                    Contains("'0.weight' has 8-bit codes") && Contains("fp32 weights"));
  options.weight_bits = 8;
  auto shorter = *options.initial_codes;
  shorter.pop_back();
  options.initial_codes = std::make_shared<const StoredWeights>(shorter);
  CHECK_THROWS_WITH(fqt_train::train(model, data, Dataset{}, options, quiet),
                    Contains("has 7 entries, the model 8 parameters"));
  // Codes for a bias (kept in float), and codes of another shape.
  auto misplaced = made_up_codes<std::int8_t>(model.parameters(), true);
  misplaced[1] = Codes8(4, 1, true);
  options.initial_codes = std::make_shared<const StoredWeights>(misplaced);
  CHECK_THROWS_WITH(fqt_train::train(model, data, Dataset{}, options, quiet),
                    Contains("'0.bias' has codes but is kept in float"));
  misplaced[1] = std::monostate{};
  misplaced[0] = Codes8(3, 25, true);
  options.initial_codes = std::make_shared<const StoredWeights>(misplaced);
  CHECK_THROWS_WITH(fqt_train::train(model, data, Dataset{}, options, quiet),
                    Contains("'0.weight' is 2 x 25, its codes 3 x 25"));
  // Refused before the optimizer rounds anything: the model is as it was.
  CHECK(values_of(model.parameters()) == before);
}

TEST_CASE("A version-1 parameter file still loads", "[train][checkpoint]") {
  ScratchDir dir;
  const Dataset data = synthetic(8, 3);
  const auto arch = tiny_architecture(data);
  fqt_train::Model model(arch, fqt::Philox(41));
  const auto parameters = model.parameters();
  // Version 1 by hand: the records hold no encoding, only float32 values.
  using fqt_train::detail::put_u32;
  using fqt_train::detail::put_u64;
  std::string v1 = "FQTPARAM";
  put_u32(v1, 1);
  put_u32(v1, static_cast<std::uint32_t>(parameters.size()));
  put_u64(v1, 0);
  for (const auto& p : parameters) {
    const Matrix& value = p.variable.value();
    put_u32(v1, static_cast<std::uint32_t>(p.name.size()));
    v1 += p.name;
    put_u32(v1, 2);
    put_u64(v1, static_cast<std::uint64_t>(value.rows()));
    put_u64(v1, static_cast<std::uint64_t>(value.cols()));
    for (Index j = 0; j < value.size(); ++j) fqt_train::detail::put_f32(v1, value.data()[j]);
  }
  const std::uint64_t total = v1.size() + 4;
  for (int i = 0; i < 8; ++i) v1[16 + i] = static_cast<char>((total >> (8 * i)) & 0xffu);
  put_u32(v1, static_cast<std::uint32_t>(
                  ::crc32(0, reinterpret_cast<const Bytef*>(v1.data()), uInt(v1.size()))));
  write_text(dir / "v1.fqt", v1);

  fqt_train::Model loaded(arch, fqt::Philox(42));
  REQUIRE(values_of(loaded.parameters()) != values_of(parameters));
  const StoredWeights codes = fqt_train::load_model(loaded, dir / "v1.fqt");
  CHECK(values_of(loaded.parameters()) == values_of(parameters));
  REQUIRE(codes.size() == parameters.size());
  for (const auto& c : codes) CHECK(std::holds_alternative<std::monostate>(c));
  CHECK(fqt_train::stored_bits(codes) == 32);
  // Saved again, it is version 2: 4 bytes more per record (the encoding), the same values.
  fqt_train::save_model(loaded, dir / "v2.fqt");
  const std::string v2 = read_text(dir / "v2.fqt");
  CHECK(v2.size() == v1.size() + 4 * parameters.size());
  CHECK(fqt_train::detail::get_u32(v2, 8) == 2);
  fqt_train::Model again(arch, fqt::Philox(43));
  fqt_train::load_model(again, dir / "v2.fqt");
  CHECK(values_of(again.parameters()) == values_of(parameters));

  // A version-1 file is checked as before: a corrupted one is refused.
  std::string bad = v1;
  bad[40] = static_cast<char>(bad[40] ^ 1);
  write_text(dir / "bad.fqt", bad);
  fqt_train::Model target(arch, fqt::Philox(44));
  const auto before = values_of(target.parameters());
  CHECK_THROWS_WITH(fqt_train::load_model(target, dir / "bad.fqt"), Contains("checksum mismatch"));
  CHECK(values_of(target.parameters()) == before);
}

TEST_CASE("A damaged version-2 file with codes is refused with a clear error",
          "[train][checkpoint][errors]") {
  ScratchDir dir;
  const Dataset data = synthetic(8, 3);
  const auto arch = tiny_architecture(data);
  fqt_train::Model model(arch, fqt::Philox(51));
  const bool wide = GENERATE(false, true);
  CAPTURE(wide);
  const StoredWeights made = wide ? made_up_codes<std::int16_t>(model.parameters(), true)
                                  : made_up_codes<std::int8_t>(model.parameters(), true);
  const fs::path good = dir / "good.fqt";
  fqt_train::save_model(model, made, good);
  const std::string bytes = read_text(good);
  const auto layout = v2_layout(bytes);
  // The damage goes into the last coded record ("9.weight"), so that every record before it
  // has been decoded when it is refused: a load that wrote as it went would change the model.
  std::size_t last = 0;
  for (std::size_t i = 0; i < made.size(); ++i) {
    if (!std::holds_alternative<std::monostate>(made[i])) last = i;
  }
  const RecordLayout& r = layout[last];
  REQUIRE(r.name == "9.weight");
  const int max_code = wide ? 32767 : 127;
  fqt_train::Model other(arch, fqt::Philox(53));
  fqt_train::load_model(other, good);  // the undamaged file loads
  fqt_train::Model fresh(arch, fqt::Philox(52));
  const auto before = values_of(fresh.parameters());
  using fqt_train::checkpoint_error;
  const fs::path bad = dir / "bad.fqt";
  auto refused = [&](const std::string& damaged, const std::string& what) {
    write_text(bad, damaged);
    CAPTURE(what);
    CHECK_THROWS_AS(fqt_train::load_model(fresh, bad), checkpoint_error);
    CHECK_THROWS_WITH(fqt_train::load_model(fresh, bad),
                      Contains(bad.string() + ": ") && Contains(what));
  };

  SECTION("an unknown encoding") {
    std::string b = bytes;
    b[r.encoding] = 7;
    refused(with_crc(b), "record 6 ('9.weight'): unknown encoding 7");
  }
  SECTION("an unknown granularity") {
    std::string b = bytes;
    b[r.encoding + 4] = 2;
    refused(with_crc(b), "'9.weight'): granularity 2 is neither 1");
  }
  SECTION("a wrong step count") {
    std::string b = bytes;
    b[r.encoding + 8] = 3;  // 9.weight is 4 x 8: 4 steps
    refused(with_crc(b), "'9.weight'): 3 steps, but a per-row 4 x 8 tensor has 4");
  }
  SECTION("a code out of range") {
    std::string b = bytes;
    const std::size_t at = r.data + (wide ? 2 : 1) * 5;  // code (0, 5)
    b[at] = wide ? '\x00' : '\x80';
    if (wide) b[at + 1] = '\x80';
    refused(with_crc(b), "parameter '9.weight' (" + std::to_string(wide ? 16 : 8) +
                             "-bit codes): code (0, 5) is -" + std::to_string(max_code + 1) +
                             ", outside the symmetric range [-" + std::to_string(max_code) + ", " +
                             std::to_string(max_code) + "]");
  }
  SECTION("a negative, NaN or infinite step") {
    for (const float step :
         {-0.5f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      std::string b = bytes;
      put_float_at(b, r.steps + 4, step);
      refused(with_crc(b),
              "'9.weight' (" + std::to_string(wide ? 16 : 8) + "-bit codes): step 1 is");
      refused(with_crc(b), "expected finite and >= 0");
    }
  }
  SECTION("a step whose values overflow float") {
    std::string b = bytes;
    put_float_at(b, r.steps, std::numeric_limits<float>::max());  // row 0 holds code kMaxCode
    refused(with_crc(b), "overflows float");
  }
  SECTION("a truncated file") {
    refused(bytes.substr(0, r.data + 3), "truncated");
    // With a header and a checksum that agree: the codes run past the end.
    std::string b = bytes.substr(0, r.data + 3) + std::string(4, '\0');
    for (int i = 0; i < 8; ++i) b[16 + i] = static_cast<char>((b.size() >> (8 * i)) & 0xffu);
    refused(with_crc(b), "its codes would run past the end of the data");
  }
  SECTION("a checksum mismatch") {
    std::string b = bytes;
    b[r.data] = static_cast<char>(b[r.data] ^ 1);
    refused(b, "checksum mismatch");
  }
  SECTION("codes of a rank other than 2") {
    // Rank 1: the second dimension removed, the rest of the record intact.
    std::string b = bytes;
    const std::size_t rank_at = r.encoding - 4 - 16;
    b[rank_at] = 1;
    b.erase(r.encoding - 8, 8);
    for (int i = 0; i < 8; ++i) b[16 + i] = static_cast<char>((b.size() >> (8 * i)) & 0xffu);
    refused(with_crc(b), "-bit codes of rank 1, codes have 2 dimensions");
  }
  CHECK(values_of(fresh.parameters()) == before);
}

TEST_CASE("Saving stored weights refuses what loading would refuse",
          "[train][checkpoint][errors]") {
  ScratchDir dir;
  const Dataset data = synthetic(8, 3);
  fqt_train::Model model(tiny_architecture(data), fqt::Philox(61));
  const fs::path path = dir / "model.fqt";
  using fqt_train::checkpoint_error;
  auto stored = made_up_codes<std::int8_t>(model.parameters(), true);

  SECTION("not one entry per parameter") {
    stored.pop_back();
    CHECK_THROWS_AS(fqt_train::save_model(model, stored, path), checkpoint_error);
    CHECK_THROWS_WITH(fqt_train::save_model(model, stored, path),
                      Contains(path.string()) && Contains("8 parameters with 7 stored weights"));
  }
  SECTION("codes of another shape") {
    stored[2] = Codes16(4, 49, true);
    CHECK_THROWS_WITH(fqt_train::save_model(model, stored, path),
                      Contains("'3.weight': its codes are 4 x 49 but the parameter is 4 x 50"));
  }
  SECTION("codes whose values overflow float") {
    std::vector<std::int8_t> codes(50, 1);
    codes[7] = 127;
    stored[0] = Codes8(2, 25, true, codes, {std::numeric_limits<float>::max(), 1.0f});
    CHECK_THROWS_WITH(fqt_train::save_model(model, stored, path), Contains("'0.weight'") &&
                                                                      Contains("value (0, 7)") &&
                                                                      Contains("overflows float"));
  }
  CHECK_FALSE(fs::exists(path));
  // Mixed widths are written as they are, and read back so.
  stored = made_up_codes<std::int8_t>(model.parameters(), true);
  stored[2] = made_up_codes<std::int16_t>(model.parameters(), false)[2];
  fqt_train::save_model(model, stored, path);
  fqt_train::Model loaded(tiny_architecture(data), fqt::Philox(62));
  const StoredWeights codes = fqt_train::load_model(loaded, path);
  CHECK(codes == stored);
  CHECK(fqt_train::stored_bits(codes) == 0);
}

TEST_CASE("Bad training options are refused naming the option", "[train][errors]") {
  auto o = fast_options(nn::Mode::FQT);
  o.epochs = 0;
  CHECK_THROWS_WITH(o.validate(), Contains("epochs must be >= 1, got 0"));
  o = fast_options(nn::Mode::FQT);
  o.momentum = 1;
  CHECK_THROWS_WITH(o.validate(), Contains("momentum must be in [0, 1)"));
  o = fast_options(nn::Mode::FQT);
  o.policy.grad_input.bits = 9;
  CHECK_THROWS_AS(o.validate(), std::invalid_argument);
  CHECK_THROWS_WITH(o.validate(), Contains("grad_input.bits must be in [1, 8], got 9"));
  o = fast_options(nn::Mode::FQT);
  o.warmup_epochs = 2;
  CHECK_THROWS_WITH(o.validate(), Contains("warm-up must be in [0, epochs)"));
  CHECK_THROWS_WITH(fqt_train::parse_schedule("linear"), Contains("unknown schedule 'linear'"));
  CHECK_THROWS_WITH(fqt_train::parse_progress_style("fancy"),
                    Contains("unknown progress style 'fancy'"));
  CHECK_THROWS_WITH(fqt::parse_quantizer_kind("int8"), Contains("'int8'"));
  fqt_train::Architecture too_small;
  too_small.image_height = too_small.image_width = 12;
  CHECK_THROWS_WITH(too_small.validate(), Contains("too small"));
  fqt_train::CompareOptions c;
  c.bits = {8, 0};
  CHECK_THROWS_WITH(c.validate(), Contains("bits must be in [1, 8], got 0"));
  c = fqt_train::CompareOptions{};
  c.series = {{fqt::QuantizerKind::PerColumn, fqt::Grid::Auto}};
  CHECK_THROWS_WITH(c.validate(), Contains("quantizer 'column' is no grad-input quantizer") &&
                                      Contains("(expected ptq, psq, bhq, hadamard, adaptive)"));
  c.series = {{fqt::QuantizerKind::PerSample, static_cast<fqt::Grid>(7)}};
  CHECK_THROWS_WITH(c.validate(), Contains("grid 7 is no grid"));
}

TEST_CASE("The trainer's quantizer lists come from the catalogue's table", "[train][quantizers]") {
  // The names fqt_train accepts and compares by default: the grad-input kinds, and for
  // --grad-weight the kinds the paper's pairing gives them.
  CHECK(fqt_examples::grad_input_quantizer_names() ==
        std::vector<std::string>{"ptq", "psq", "bhq", "hadamard", "adaptive"});
  CHECK(fqt_examples::kind_names(fqt_examples::paired_grad_weight_kinds()) ==
        std::vector<std::string>{"ptq", "column"});
  // The comparison runs the paper's three in its released configuration, then fqt's default (the
  // adaptive quantizer on the auto grid) and Hadamard: the main job's grid does not grow with the
  // table.
  std::vector<std::string> series;
  for (const auto& [q, grid] : fqt_train::CompareOptions{}.series)
    series.push_back(std::string(fqt_examples::kind_name(q)) + "/" + fqt_examples::grid_name(grid));
  CHECK(series == std::vector<std::string>{"ptq/paper", "psq/paper", "bhq/paper", "adaptive/auto",
                                           "hadamard/auto"});
  CHECK(fqt_examples::cross_series(fqt_examples::paper_grad_input_kinds(), {fqt::Grid::Free})
            .size() == 3);
  for (const auto k : fqt_examples::grad_input_kinds()) {
    CAPTURE(fqt::kind_info(k).name);
    const auto paired = fqt_examples::paired_grad_weight(k);
    CHECK(fqt::can_feed(paired, fqt::Contraction::Rows));
    CHECK((paired == k) == (k == fqt::QuantizerKind::PerTensor));
  }
  // On a backend that multiplies codes, the per-column pairing (which a conv's integer GEMM
  // cannot run) becomes per-channel; PTQ keeps PTQ.
  const auto int8 = fqt::nn::int8_backend();
  fqt_train::CompareOptions on_int8;
  on_int8.train.policy.backend = int8;
  for (const auto& run : fqt_train::compare_runs(on_int8)) {
    if (run.policy.mode != fqt::nn::Mode::FQT) continue;
    CAPTURE(run.name);
    const bool ptq = run.policy.grad_input.kind == fqt::QuantizerKind::PerTensor;
    CHECK(run.policy.grad_weight.kind ==
          (ptq ? fqt::QuantizerKind::PerTensor : fqt::QuantizerKind::PerChannel));
    CHECK(run.policy.backend == int8);
    CHECK_NOTHROW(run.policy.validate("test", fqt::Contraction::RowsAndChannels));
  }
  CHECK(fqt_examples::paired_grad_weight(fqt::QuantizerKind::PerSample,
                                         fqt::nn::simulated_backend()) ==
        fqt::QuantizerKind::PerColumn);
  CHECK(fqt_examples::or_list({"ptq", "psq", "bhq"}) == "ptq, psq or bhq");
  CHECK(fqt_examples::or_list({"ptq"}) == "ptq");
}

TEST_CASE("The comparison runs end to end and writes a well-formed CSV", "[train][compare]") {
  ScratchDir dir;
  const Dataset train_set = synthetic(96, 4), test = synthetic(40, 5);
  const auto arch = tiny_architecture(train_set);
  fqt_train::CompareOptions options;
  options.train = fast_options(nn::Mode::FQT);
  options.train.epochs = 1;
  options.bits = {4, 2};
  options.series = {{fqt::QuantizerKind::PerTensor, fqt::Grid::ZeroAligned},
                    {fqt::QuantizerKind::BlockHouseholder, fqt::Grid::ZeroAligned}};
  options.variance.fqt_passes = 3;
  options.variance.sampling_batches = 3;
  options.workers = 2;
  // The rows of weights without a master copy, against bhq-4-zero of the grid.
  options.storage_series = {fqt::QuantizerKind::BlockHouseholder, fqt::Grid::ZeroAligned};
  const auto runs = fqt_train::compare_runs(options);
  REQUIRE(runs.size() == 8);
  CHECK(runs[0].name == "exact");
  CHECK(runs[1].name == "qat");
  CHECK(runs[2].name == "ptq-4-zero");
  CHECK(runs[2].policy.grad_weight.kind == fqt::QuantizerKind::PerTensor);
  CHECK(runs[5].name == "bhq-2-zero");
  CHECK(runs[5].policy.grad_weight.kind == fqt::QuantizerKind::PerColumn);
  CHECK(runs[4].storage_reference);
  CHECK(!runs[4].storage_row);
  CHECK(runs[4].weight_bits == 32);
  CHECK(runs[6].name == "bhq-4-zero-int16");
  CHECK(runs[7].name == "bhq-4-zero-int8");
  CHECK(runs[7].storage_row);
  CHECK(runs[7].weight_bits == 8);
  CHECK(runs[7].momentum_bits == 8);
  CHECK(runs[7].policy.grad_input.bits == 4);
  {
    // A reference the grid lacks is added before the rows.
    fqt_train::CompareOptions other = options;
    other.storage_bits = 3;
    const auto with_reference = fqt_train::compare_runs(other);
    REQUIRE(with_reference.size() == 9);
    CHECK(with_reference[6].name == "bhq-3-zero");
    CHECK(with_reference[6].storage_reference);
    CHECK(with_reference[6].storage_row);
    other.storage_weight_bits = {12};
    CHECK_THROWS_WITH(other.validate(), Contains("weight storage bits must be 16 or 8, got 12"));
  }

  const auto results =
      fqt_train::run_compare(arch, options, train_set, test, fqt_train::ProgressStyle::None);
  REQUIRE(results.size() == runs.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    CHECK(results[i].spec.name == runs[i].name);
    CHECK(results[i].train.epochs.size() == 1);
  }
  CHECK(results[0].final.quantization == 0);  // Exact: no gradient quantization
  CHECK(results[3].initial.quantization >     // 2-bit PTQ is noisier than 4-bit PTQ
        results[2].initial.quantization);

  const std::string csv = (dir / "compare.csv").string();
  fqt_train::write_csv(csv, results, options, train_set.size(), test.size());
  std::ifstream in(csv);
  std::string line;
  REQUIRE(std::getline(in, line));
  const auto header = split(line, ',');
  REQUIRE(header.size() == 30 + 2 * 8);  // 30 summary columns, 2 per parameter tensor
  const std::set<std::string> text_columns = {"name", "mode", "grad_input", "grad_weight", "grid"};
  const auto column = [&](const std::string& name) {
    return static_cast<std::size_t>(std::find(header.begin(), header.end(), name) - header.begin());
  };
  REQUIRE(column("test_accuracy") < header.size());
  std::size_t rows = 0;
  while (std::getline(in, line)) {
    ++rows;
    const auto fields = split(line, ',');
    REQUIRE(fields.size() == header.size());
    for (std::size_t j = 0; j < fields.size(); ++j) {
      if (text_columns.count(header[j])) continue;
      double value;
      INFO("row " << rows << ", column " << header[j] << " = '" << fields[j] << "'");
      CHECK(parses_as_number(fields[j], value));
    }
    double accuracy = -1;
    REQUIRE(parses_as_number(fields[column("test_accuracy")], accuracy));
    CHECK(accuracy >= 0.0);
    CHECK(accuracy <= 1.0);
    CHECK(fields[column("name")] == runs[rows - 1].name);
  }
  CHECK(rows == runs.size());

  std::ostringstream table;
  fqt_train::write_markdown(table, results);
  CHECK_THAT(table.str(), Contains("| bhq-2-zero | bhq | 2 | zero | column 8 | fp32 |"));
  CHECK_THAT(table.str(), Contains("| bhq-4-zero-int8 | bhq | 4 | zero | column 8 | int8 |"));
  std::ostringstream pivot;
  fqt_train::write_pivot(pivot, results);
  CHECK_THAT(pivot.str(), Contains("| ptq | zero |"));
  CHECK_THAT(pivot.str(), !Contains("int8"));
  const std::string read = fqt_train::reading(results, test.size(), test.classes);
  CHECK_THAT(read, Contains("QAT:"));
  CHECK_THAT(read, Contains("Weights without a master copy (bhq-4-zero, fp32 weights") &&
                       Contains(" int16 ") && Contains(" int8 "));
  // Weights and optimizer state: 8 bytes per parameter with fp32 masters; int8 codes and
  // momentum, under half of that even in this tiny model (its float biases and per-row steps).
  CHECK(results[4].train.optimizer_memory.per_parameter() == 8.0);
  CHECK(results[7].train.optimizer_memory.per_parameter() <
        0.5 * results[4].train.optimizer_memory.per_parameter());
  CHECK(results[7].train.rounding_as_gradient_variance > 0);
  CHECK(results[4].train.rounding_as_gradient_variance == 0);

  if (fqt_test::prerequisite(fqt_examples::on_path("gnuplot"),
                             "gnuplot is not on PATH, the plots are not tested (Debian: apt "
                             "install gnuplot-nox)")) {
    const std::string prefix = (dir / "plot").string();
    const auto messages = fqt_train::plot(results, prefix, "test");
    REQUIRE(messages.size() == 2);
    for (const char* suffix : {"_accuracy.png", "_variance.png"}) {
      CHECK(read_text(prefix + suffix).substr(1, 3) == "PNG");
    }
  }
}

#ifndef FQT_SKIP_SLOW_TESTS
TEST_CASE("One short epoch on Fashion-MNIST reaches 75% in Exact mode and 8-bit BHQ FQT matches it",
          "[train][slow]") {
  const fs::path dir = fqt_test::fashion_mnist_dir();
  if (!fqt_test::prerequisite(
          fs::is_directory(dir),
          dir.string() + " does not exist (Debian: apt install dataset-fashion-mnist)")) {
    return;
  }
  fqt::set_num_threads(1);
  const Dataset train_set = fqt_train::load_split(dir, fqt::data::Split::Train, 12000);
  const Dataset test = fqt_train::load_split(dir, fqt::data::Split::Test, 2000);
  const auto arch = fqt_train::architecture_for(train_set, fqt_train::Architecture{});
  fqt_train::TrainOptions options;
  options.epochs = 1;
  options.batch_size = 32;
  options.learning_rate = 0.05;
  options.seed = 1;
  fqt_train::Progress quiet(fqt_train::ProgressStyle::None);

  options.policy = nn::QuantPolicy::with_mode(nn::Mode::Exact);
  fqt_train::Model exact(arch, fqt_train::seed_stream(1, fqt_train::Stream::Init));
  const auto exact_result = fqt_train::train(exact, train_set, test, options, quiet);
  REQUIRE_FALSE(exact_result.diverged);
  INFO("Exact: " << exact_result.final_test_accuracy);
  CHECK(exact_result.final_test_accuracy >= 0.75);

  options.policy = nn::QuantPolicy{};  // FQT, BHQ at 8 bits, the paper's defaults
  options.policy.grad_weight.kind = fqt::QuantizerKind::PerColumn;
  fqt_train::Model fqt_model(arch, fqt_train::seed_stream(1, fqt_train::Stream::Init));
  const auto fqt_result = fqt_train::train(fqt_model, train_set, test, options, quiet);
  REQUIRE_FALSE(fqt_result.diverged);
  INFO("FQT BHQ 8-bit: " << fqt_result.final_test_accuracy);
  CHECK(std::abs(fqt_result.final_test_accuracy - exact_result.final_test_accuracy) <= 0.03);
}
#endif
