// Memory of training the trainer's CNN (examples/trainer/model.hpp: conv 5×5 1 → 8, conv 5×5
// 8 → 16, linear 256 → 64 → 10 on 28×28×1 images, 20,522 parameters) on batches of 128, measured
// as heap growth with glibc's mallinfo2() (chunks in use, arenas and mmapped) across the
// construction and the first two training steps, in bytes per parameter:
//
//   meas_model      the model: the parameters' float values and the layers' objects (the same in
//                   every configuration: with coded weights the Variables hold a float view)
//   meas_optimizer  what the optimizer's construction and its steps add: its parameter handles,
//                   momentum, staged updates (nn::SGD) or codes, coded momentum and scratch
//                   buffers (nn::QuantizedSGD), less the float views it frees (no_views: the
//                   figure is then below zero)
//   meas_grads      the gradients (zero_grad() allocates them, backward fills them)
//   meas_caches     what the layers keep between steps: X̂, Ŵ, the conv columns, the quantized
//                   gradients, the backends' buffers (for a batch of 128)
//   meas_total      everything training holds between steps: the sum of the four
//   meas_w_state    model + optimizer: the weights with the optimizer's state, views, workspaces
//   meas_w_state_no_view  the same less the float views of coded weights (cnt_views, subtracted
//                   from the measured model): the weights and the optimizer's state apart from
//                   the copy the Variables keep for float readers (8-bit forward passes multiply
//                   the codes)
//
// Two steps, because nn::SGD allocates its staged momentum only in the second (the first swaps
// the empty buffers in); `meas_later_steps` is the growth over the timed steps after them (0: the
// steady state was measured; in FQT the block Householder quantizer's thread_local scratch moves
// by a few KiB with the OpenMP schedule, about ±0.4 byte per parameter here). Configurations: Exact
// and QAT with fp32 master weights (nn::SGD), FQT with fp32 master weights, and FQT without them
// (nn::QuantizedSGD): 16-bit weights and momentum, 8-bit weights and momentum, and the latter with
// its float views freed (keep_views = false: the model's float values go). `vs_master_*`
// divides by QAT with fp32 master weights, measured in the same benchmark call.
//
// `cnt_*` are the bytes the code counts (OptimizerMemory, cache_bytes(), the gradients' sizes).
// cnt_weights + cnt_state is what OptimizerMemory::per_parameter() reports; the heap also holds
// the float views of coded weights (cnt_views: the model's Variables, measured in meas_model) and
// the workspaces (cnt_workspace: nn::SGD's staged weights and momentum, QuantizedSGD's scratch
// buffers, sized to the largest parameter). meas_* − cnt_* is what the counts leave out — the
// Parameter handles and names, the Variables' nodes, the layer objects — and the allocator's
// overhead (8 bytes of header per chunk, sizes rounded up to 16 bytes, mmapped chunks to pages).
// glibc's per-thread cache would hide small allocations (see main), so the process runs without it.
// The time is that of one training step (zero_grad, forward, loss, backward, step).
//
//   bench_memory --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#if defined(__has_include)
#if __has_include(<malloc.h>)
#include <malloc.h>
#endif
#endif
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
#define FQT_BENCH_MALLINFO2 1
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#endif

#include "fqt/core/random.hpp"
#include "fqt/nn/layers.hpp"
#include "fqt/nn/loss.hpp"
#include "fqt/nn/optim.hpp"
#include "fqt/nn/optim_quantized.hpp"

namespace {

using fqt::Index;
using fqt::Matrix;
namespace nn = fqt::nn;

struct Config {
  std::string name;
  nn::Mode mode;
  int weight_bits;    // 32: fp32 master weights (nn::SGD); 16 or 8: codes only (nn::QuantizedSGD)
  int momentum_bits;  // with codes: 16 or 8
  bool keep_views = true;  // with codes: keep the float views (WeightStorageOptions::keep_views)
};

const Config kMaster{"qat_fp32_master", nn::Mode::QAT, 32, 32};

#ifdef FQT_BENCH_MALLINFO2
constexpr Index kBatch = 128;
constexpr std::uint64_t kInitSeed = 1, kNoiseSeed = 2, kRoundingSeed = 3, kDataSeed = 4;

// Bytes of the chunks in use: in the arenas (uordblks) and mmapped (hblkhd, large buffers).
std::size_t heap_in_use() {
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

// The trainer's CNN, built from the same layers (examples/trainer/model.hpp).
class Cnn {
 public:
  explicit Cnn(const fqt::Philox& init) {
    convs_[0] = &net_.emplace<nn::Conv2d<float>>(1, 8, 5, 1, 0, init.substream(0));
    net_.emplace<nn::ReLU<float>>();
    net_.emplace<nn::MaxPool2d<float>>(2);
    convs_[1] = &net_.emplace<nn::Conv2d<float>>(8, 16, 5, 1, 0, init.substream(3));
    net_.emplace<nn::ReLU<float>>();
    net_.emplace<nn::MaxPool2d<float>>(2);
    net_.emplace<nn::Flatten<float>>();
    linears_[0] = &net_.emplace<nn::Linear<float>>(16 * 4 * 4, 64, init.substream(7));
    net_.emplace<nn::ReLU<float>>();
    linears_[1] = &net_.emplace<nn::Linear<float>>(64, 10, init.substream(9));
  }
  nn::Sequential<float>& net() { return net_; }
  std::size_t cache_bytes() const {
    return convs_[0]->cache_bytes() + convs_[1]->cache_bytes() + linears_[0]->cache_bytes() +
           linears_[1]->cache_bytes();
  }

 private:
  nn::Sequential<float> net_;
  nn::Conv2d<float>* convs_[2] = {};
  nn::Linear<float>* linears_[2] = {};
};

// True when glibc's per-thread cache is off (see main), so that the measurement is exact.
bool tcache_off = false;

// One training run: the model, its optimizer and the step's context.
class Run {
 public:
  explicit Run(const Config& c) : model_(std::make_unique<Cnn>(fqt::Philox(kInitSeed))) {
    context_.policy = nn::QuantPolicy::with_mode(c.mode);
    context_.rng = fqt::Philox(kNoiseSeed);
    config_ = c;
  }
  // Built apart from the model, so that its allocations can be told apart.
  void make_optimizer() {
    nn::SgdOptions sgd;  // the trainer's defaults
    sgd.learning_rate = 0.05;
    sgd.momentum = 0.9;
    sgd.weight_decay = 1e-4;
    if (config_.weight_bits == 32) {
      fp32_ = std::make_unique<nn::SGD<float>>(model_->net().parameters(), sgd);
    } else {
      nn::WeightStorageOptions storage;
      storage.weight_bits = config_.weight_bits;
      storage.momentum_bits = config_.momentum_bits;
      storage.per_row = !context_.policy.product_backend().multiplies_codes();  // as the trainer
      storage.rng = fqt::Philox(kRoundingSeed);
      storage.keep_views = config_.keep_views;
      coded_ = std::make_unique<nn::QuantizedSGD<float>>(model_->net().parameters(), sgd, storage);
    }
  }
  void zero_grad() { fp32_ ? fp32_->zero_grad() : coded_->zero_grad(); }
  void step() { fp32_ ? fp32_->step() : coded_->step(); }
  // Forward, loss and backward (the tape and the activations are gone on return).
  void forward_backward(const Matrix<float>& images, const std::vector<int>& labels) {
    nn::Tape<float> tape;
    const nn::Variable<float> input(images, nn::FeatureShape{1, 28, 28});
    const auto logits = model_->net().forward(tape, input, context_);
    tape.backward(nn::softmax_cross_entropy(tape, logits, labels));
  }
  void train_step(const Matrix<float>& images, const std::vector<int>& labels) {
    zero_grad();
    forward_backward(images, labels);
    step();
    ++context_.step;
  }
  nn::OptimizerMemory memory() const { return fp32_ ? fp32_->memory() : coded_->memory(); }
  std::size_t cache_bytes() const { return model_->cache_bytes(); }
  std::size_t grad_bytes() {
    std::size_t bytes = 0;
    for (const auto& p : model_->net().parameters())
      bytes += static_cast<std::size_t>(p.variable.grad().size()) * sizeof(float);
    return bytes;
  }

 private:
  Config config_;
  std::unique_ptr<Cnn> model_;
  nn::Context context_;
  std::unique_ptr<nn::SGD<float>> fp32_;
  std::unique_ptr<nn::QuantizedSGD<float>> coded_;
};

struct Batch {
  Matrix<float> images;
  std::vector<int> labels;
};

Batch make_batch() {
  const fqt::Philox rng(kDataSeed);
  Batch b{Matrix<float>(kBatch, 28 * 28), std::vector<int>(kBatch)};
  for (Index k = 0; k < b.images.size(); ++k)
    b.images.data()[k] = static_cast<float>(rng.uniform(static_cast<std::uint64_t>(k)));
  for (Index i = 0; i < kBatch; ++i) b.labels[static_cast<std::size_t>(i)] = int(i % 10);
  return b;
}

// Measured heap growth of each component, in bytes, and the counted bytes.
struct Footprint {
  double model = 0, optimizer = 0, grads = 0, caches = 0, total = 0;
  nn::OptimizerMemory counted;
  std::size_t cache_bytes = 0, grad_bytes = 0;
  double w_state() const { return model + optimizer; }
};

// Builds a run of `c` and takes its first two training steps, reading the heap between the
// phases: nn::SGD allocates its staged momentum only in the second step (the first swaps in the
// empty buffers), so the second step is the steady state. The batch lives outside the
// measurement; the run is returned for timing.
std::unique_ptr<Run> measure(const Config& c, const Batch& batch, Footprint& f) {
  std::size_t last = heap_in_use();
  const std::size_t start = last;
  const auto grow = [&last](double& component) {
    const std::size_t now = heap_in_use();
    component += static_cast<double>(now) - static_cast<double>(last);
    last = now;
  };
  auto run = std::make_unique<Run>(c);
  grow(f.model);
  run->make_optimizer();
  grow(f.optimizer);
  for (int step = 0; step < 2; ++step) {
    run->zero_grad();
    grow(f.grads);
    run->forward_backward(batch.images, batch.labels);
    grow(f.caches);
    run->step();
    grow(f.optimizer);
  }
  f.total = static_cast<double>(last) - static_cast<double>(start);
  f.counted = run->memory();
  f.cache_bytes = run->cache_bytes();
  f.grad_bytes = run->grad_bytes();
  return run;
}
#endif  // FQT_BENCH_MALLINFO2

void bench_memory(benchmark::State& state, const Config& c) {
#ifndef FQT_BENCH_MALLINFO2
  (void)c;
  state.SkipWithError("needs glibc >= 2.33 for mallinfo2(): heap growth cannot be measured here");
  for (auto _ : state) {
  }
#else
  const Batch batch = make_batch();
  // Warm-up: the first step of each kind initialises what lives for the whole process (the
  // OpenMP threads, the backends, static tables), which no configuration owns.
  for (const Config* warm : {&kMaster, &c}) {
    Run run(*warm);
    run.make_optimizer();
    run.train_step(batch.images, batch.labels);
  }
  Footprint master;
  measure(kMaster, batch, master).reset();
  Footprint f;
  std::unique_ptr<Run> run = measure(c, batch, f);
  const std::size_t before = heap_in_use();
  for (auto _ : state) {
    run->train_step(batch.images, batch.labels);
    benchmark::ClobberMemory();
  }
  const double later = static_cast<double>(heap_in_use()) - static_cast<double>(before);

  const double n = static_cast<double>(f.counted.parameters);
  const auto per = [n](double bytes) { return benchmark::Counter(bytes / n); };
  state.counters["params"] = n;
  state.counters["tcache_off"] = tcache_off ? 1 : 0;
  state.counters["meas_model"] = per(f.model);
  state.counters["meas_optimizer"] = per(f.optimizer);
  state.counters["meas_grads"] = per(f.grads);
  state.counters["meas_caches"] = per(f.caches);
  state.counters["meas_total"] = per(f.total);
  state.counters["meas_w_state"] = per(f.w_state());
  state.counters["meas_later_steps"] = per(later);  // 0: the steady state was measured
  state.counters["meas_total_bytes"] =
      benchmark::Counter(f.total, benchmark::Counter::kDefaults, benchmark::Counter::kIs1024);
  state.counters["vs_master_w_state"] = f.w_state() / master.w_state();
  // The same without the float view of coded weights: its bytes, counted exactly, come off the
  // measured model (fp32 weights have no view: the same as vs_master_w_state).
  const double no_view = f.w_state() - double(f.counted.views);
  state.counters["meas_w_state_no_view"] = per(no_view);
  state.counters["vs_master_w_state_no_view"] = no_view / master.w_state();
  state.counters["vs_master_total"] = f.total / master.total;
  const auto& m = f.counted;
  state.counters["cnt_weights"] = per(double(m.weights));
  state.counters["cnt_state"] = per(double(m.state));
  state.counters["cnt_views"] = per(double(m.views));
  state.counters["cnt_workspace"] = per(double(m.workspace));
  state.counters["cnt_grads"] = per(double(f.grad_bytes));
  state.counters["cnt_caches"] = per(double(f.cache_bytes));
  state.counters["cnt_total"] =
      per(double(m.weights + m.state + m.views + m.workspace + f.grad_bytes + f.cache_bytes));
  state.counters["cnt_vs_master_w_state"] = m.per_parameter() / master.counted.per_parameter();
#endif
}

}  // namespace

int main(int argc, char** argv) {
#ifdef FQT_BENCH_MALLINFO2
  // glibc's per-thread cache (tcache) keeps up to 7 freed chunks of each size up to 1 KiB counted
  // as in use by mallinfo2() and hands them out again without changing the count, which hides a
  // few KiB of small allocations (the biases, the handles). The process runs itself again without
  // it unless GLIBC_TUNABLES already sets tcache_count.
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables == nullptr || std::strstr(tunables, "glibc.malloc.tcache_count") == nullptr) {
    const std::string value =
        (tunables ? std::string(tunables) + ":" : std::string()) + "glibc.malloc.tcache_count=0";
    if (setenv("GLIBC_TUNABLES", value.c_str(), 1) == 0) execv("/proc/self/exe", argv);
    // exec failed: go on with the cache (the small components then read a little low)
  } else {
    tcache_off = std::strstr(tunables, "glibc.malloc.tcache_count=0") != nullptr;
  }
#endif
  const std::vector<Config> configs{{"exact_fp32_master", nn::Mode::Exact, 32, 32},
                                    kMaster,
                                    {"fqt_fp32_master", nn::Mode::FQT, 32, 32},
                                    {"fqt_int16_m16", nn::Mode::FQT, 16, 16},
                                    {"fqt_int8_m8", nn::Mode::FQT, 8, 8},
                                    {"fqt_int8_m8_no_views", nn::Mode::FQT, 8, 8, false}};
  for (const auto& c : configs) {
    benchmark::RegisterBenchmark(("memory/" + c.name).c_str(),
                                 [c](benchmark::State& s) { bench_memory(s, c); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
