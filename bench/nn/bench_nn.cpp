// Forward + backward of one Linear (batch 128, 1024 → 1024) and one Conv2d (batch 64, 32 → 64
// channels, 3×3, padding 1, 16×16) in Exact, QAT and FQT mode with each grad-input quantizer at 4
// and 8 bits. Each benchmark reports `vs_exact` (wall clock) and `vs_exact_cpu` (process CPU
// time): its time per step over the Exact step's, measured in the same iterations.
//
//   bench_nn --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <string>
#include <vector>

#include "fqt/nn/functional.hpp"
#include "fqt/quant/catalogue.hpp"

namespace {

using fqt::Index;
using fqt::Matrix;
using fqt::Vector;
namespace nn = fqt::nn;

Matrix<float> random_matrix(Index rows, Index cols, std::uint64_t seed, double scale) {
  const fqt::Philox rng(seed);
  Matrix<float> m(rows, cols);
  for (Index k = 0; k < m.size(); ++k) {
    m.data()[k] = static_cast<float>(scale * rng.normal(static_cast<std::uint64_t>(k)));
  }
  return m;
}

// One layer's forward and backward with preallocated outputs and a reused cache.
class LinearStep {
 public:
  LinearStep()
      : x_(random_matrix(128, 1024, 1, 1.0)),
        w_(random_matrix(1024, 1024, 2, 0.03)),
        b_(Vector<float>::Zero(1024)),
        gy_(random_matrix(128, 1024, 3, 0.01)),
        y_(128, 1024),
        gx_(128, 1024),
        gw_(Matrix<float>::Zero(1024, 1024)),
        gb_(Vector<float>::Zero(1024)) {}
  void run(const nn::QuantPolicy& policy, std::uint64_t step) {
    nn::linear_forward(x_, w_, b_, policy, cache_, y_);
    nn::linear_backward(gy_, cache_, nn::gradient_streams(fqt::Philox(7), step, 0), gx_, gw_, gb_);
  }
  double flops() const { return 3.0 * 2 * 128 * 1024 * 1024; }

 private:
  Matrix<float> x_, w_;
  Vector<float> b_;
  Matrix<float> gy_, y_, gx_, gw_;
  Vector<float> gb_;
  nn::LinearCache<float> cache_;
};

class ConvStep {
 public:
  ConvStep()
      : geometry_(32, 16, 16, 64, 3, 1, 1),
        x_(random_matrix(64, geometry_.input_size(), 4, 1.0)),
        w_(random_matrix(64, geometry_.patch_size(), 5, 0.08)),
        b_(Vector<float>::Zero(64)),
        gy_(random_matrix(64, geometry_.output_size(), 6, 0.01)),
        y_(64, geometry_.output_size()),
        gx_(64, geometry_.input_size()),
        gw_(Matrix<float>::Zero(64, geometry_.patch_size())),
        gb_(Vector<float>::Zero(64)) {}
  void run(const nn::QuantPolicy& policy, std::uint64_t step) {
    nn::conv2d_forward(x_, w_, b_, geometry_, policy, cache_, y_);
    nn::conv2d_backward(gy_, cache_, nn::gradient_streams(fqt::Philox(7), step, 0), gx_, gw_, gb_);
  }
  double flops() const {
    return 3.0 * 2 * 64 * geometry_.output_size() * static_cast<double>(geometry_.patch_size());
  }

 private:
  nn::Conv2dGeometry geometry_;
  Matrix<float> x_, w_;
  Vector<float> b_;
  Matrix<float> gy_, y_, gx_, gw_;
  Vector<float> gb_;
  nn::Conv2dCache<float> cache_;
};

// Wall-clock and process CPU time, in seconds.
struct Times {
  double wall = 0, cpu = 0;
  static Times now() {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return {
        std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(),
        static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec)};
  }
  Times operator-(const Times& o) const { return {wall - o.wall, cpu - o.cpu}; }
  Times& operator+=(const Times& o) {
    wall += o.wall;
    cpu += o.cpu;
    return *this;
  }
};

// Paired measurement: every iteration runs the configured step (timed by the framework) and,
// with the timer paused, the Exact step on its own buffers. The ratios of the summed times are
// robust to the load of a shared machine drifting during the run.
template <class Step>
void run_benchmark(benchmark::State& state, nn::QuantPolicy policy) {
  Step step, baseline_step;
  const auto exact = nn::QuantPolicy::with_mode(nn::Mode::Exact);
  std::uint64_t counter = 0;
  step.run(policy, counter);  // warm-up: sizes the caches
  baseline_step.run(exact, counter++);
  Times measured, baseline;
  for (auto _ : state) {
    const Times a = Times::now();
    step.run(policy, counter);
    benchmark::ClobberMemory();
    const Times b = Times::now();
    state.PauseTiming();
    const Times c = Times::now();
    baseline_step.run(exact, counter++);
    benchmark::ClobberMemory();
    baseline += Times::now() - c;
    state.ResumeTiming();
    measured += b - a;
  }
  state.counters["vs_exact"] = measured.wall / baseline.wall;
  state.counters["vs_exact_cpu"] = measured.cpu / baseline.cpu;
  state.counters["GFLOPs"] =
      step.flops() * static_cast<double>(state.iterations()) / measured.wall * 1e-9;
}

void register_all() {
  struct Config {
    std::string name;
    nn::QuantPolicy policy;
  };
  std::vector<Config> configs{{"exact", nn::QuantPolicy::with_mode(nn::Mode::Exact)},
                              {"qat", nn::QuantPolicy::with_mode(nn::Mode::QAT)}};
  for (const auto& k : fqt::kQuantizerKinds) {
    if (!fqt::can_feed(k.kind, fqt::Contraction::Columns)) continue;  // not a grad-input quantizer
    for (int bits : {4, 8}) {
      nn::QuantPolicy p;
      p.grad_input.kind = k.kind;
      p.grad_input.bits = bits;
      configs.push_back({std::string("fqt_") + k.name + "_" + std::to_string(bits), p});
    }
  }
  for (const auto& c : configs) {
    benchmark::RegisterBenchmark(
        ("linear_128x1024x1024/" + c.name).c_str(),
        [p = c.policy](benchmark::State& s) { run_benchmark<LinearStep>(s, p); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  for (const auto& c : configs) {
    benchmark::RegisterBenchmark(
        ("conv_64x32x16x16_k3_to64/" + c.name).c_str(),
        [p = c.policy](benchmark::State& s) { run_benchmark<ConvStep>(s, p); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
