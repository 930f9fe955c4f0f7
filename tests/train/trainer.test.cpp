// Tests of the Fashion-MNIST trainer (examples/trainer/): the data order, reproducible training,
// saving and loading parameters (and refusing bad files), the comparison's CSV, and — unless
// FQT_SKIP_SLOW_TESTS — end-to-end accuracy on Fashion-MNIST.

#include "trainer/trainer.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <sstream>
#include <string>
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

  // The documented layout: magic, version 1, tensor count, total size, ..., CRC-32.
  const std::string bytes = read_text(dir / "model.fqt");
  CHECK(bytes.substr(0, 8) == "FQTPARAM");
  CHECK(fqt_train::detail::get_u32(bytes, 8) == 1);
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
    std::string other_version = bytes;
    other_version[8] = 2;
    write_text(dir / "v2.fqt", other_version);
    CHECK_THROWS_WITH(fqt_train::load_model(target, dir / "v2.fqt"),
                      Contains("unsupported format version 2"));
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
  const auto runs = fqt_train::compare_runs(options);
  REQUIRE(runs.size() == 6);
  CHECK(runs[0].name == "exact");
  CHECK(runs[1].name == "qat");
  CHECK(runs[2].name == "ptq-4-zero");
  CHECK(runs[2].policy.grad_weight.kind == fqt::QuantizerKind::PerTensor);
  CHECK(runs[5].name == "bhq-2-zero");
  CHECK(runs[5].policy.grad_weight.kind == fqt::QuantizerKind::PerColumn);

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
  REQUIRE(header.size() == 26 + 2 * 8);  // 26 summary columns, 2 per parameter tensor
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
  CHECK_THAT(table.str(), Contains("| bhq-2-zero | bhq | 2 | zero | column 8 |"));
  std::ostringstream pivot;
  fqt_train::write_pivot(pivot, results);
  CHECK_THAT(pivot.str(), Contains("| ptq | zero |"));
  CHECK_THAT(fqt_train::reading(results, test.size(), test.classes), Contains("QAT:"));

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
