// Throughput of the gradient quantizers, against the ideal single pass in the same process, and
// their exact variance against the bit width.
//
//   BM_SinglePass/rows:R/cols:C/threads:T      the floor: read each float once, write one byte
//   BM_Quantize/<Q>/rows:R/cols:C/bits:B/threads:T
//       quantize(x, rng, q) to uint8 codes, q's buffers reused from call to call (the steady
//       state of a layer's cache); items/s = elements/s. Counters:
//       vs_single_pass  time of Q / time of the single pass (same shape and threads)
//       vs_psq          BHQ and HADAMARD: time of Q / time of PSQ (same shape, bits, threads)
//       Both are measured right after the benchmark's own loop by alternating the two calls
//       (5 to 31 pairs, about 0.2 s) and taking the median of the per-pair time ratios, so that
//       both sides of a ratio see the same load on a shared machine.
//   BM_VarianceVsBits/<grid>/rows:128/cols:4096/bits:B
//       exact E‖Q(G) − G‖² of every quantizer as counters (the time is that of computing them)
//
// Q is every kind of the catalogue's table (fqt::kQuantizerKinds), by its short name in capitals:
// PTQ, PSQ, COLUMN, CHANNEL (64 channels: blocks of 64 columns), BHQ and HADAMARD (its default
// block of 16 rows), each called through
// fqt::AnyQuantizer (one visit per call). The input is fqt::stats::heavy_tailed_gradient (row
// scales log-uniform over 4 decades, half the entries exact zeros), built once per shape. Threads
// are fqt's (fqt::set_num_threads); times are wall-clock (UseRealTime). Filter with, e.g.,
//   bench_quantizers --benchmark_filter='BM_Quantize/BHQ/rows:512'

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "fqt/quant.hpp"
#include "fqt/stats/variance.hpp"

namespace {

using fqt::Index;
using Matrix = fqt::Matrix<float>;
using Clock = std::chrono::steady_clock;

// The gradient-like input of a shape, generated once (a 4096 × 4096 one takes a moment).
const Matrix& gradient(Index rows, Index cols) {
  static std::map<std::pair<Index, Index>, Matrix> cache;
  auto it = cache.find({rows, cols});
  if (it == cache.end()) {
    it = cache
             .emplace(std::make_pair(rows, cols),
                      fqt::stats::heavy_tailed_gradient<float>(rows, cols, fqt::Philox(2020)))
             .first;
  }
  return it->second;
}

double seconds_of(const std::function<void()>& f) {
  const auto start = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Median over alternating pairs of calls (a, b) of time(a)/time(b), after one warm-up pair:
// between 5 and 31 pairs, about 0.2 s. Pairing makes the ratio robust to a load that changes
// while the benchmarks run (other processes on a shared machine).
double paired_ratio(const std::function<void()>& a, const std::function<void()>& b) {
  a();
  b();
  std::vector<double> ratios;
  int pairs = 5;
  for (int k = 0; k < pairs; ++k) {
    const double ta = seconds_of(a), tb = seconds_of(b);
    ratios.push_back(ta / tb);
    if (k == 0) pairs = std::clamp(static_cast<int>(0.2 / std::max(ta + tb, 1e-9)), 5, 31);
  }
  const auto middle = ratios.begin() + static_cast<std::ptrdiff_t>(ratios.size() / 2);
  std::nth_element(ratios.begin(), middle, ratios.end());
  return *middle;
}

// The ideal single pass: one read of each float, one byte written, no range pass and no noise —
// what any quantizer to uint8 costs at least. The loop vectorizes (fma, min, max, convert, pack);
// its bounds and constants are locals of the row function, or the byte stores could alias them.
void single_pass_row(const float* in, std::uint8_t* codes, Index n) {
  const float inv_scale = 16.0f, zero = 127.5f;
  for (Index j = 0; j < n; ++j) {
    const float y = std::min(std::max(in[j] * inv_scale + zero, 0.0f), 255.0f);
    codes[j] = static_cast<std::uint8_t>(static_cast<int>(y));
  }
}

void single_pass(const Matrix& x, fqt::Matrix<std::uint8_t>& out) {
  fqt::parallel_for(x.rows(), x.cols(), [&](Index i) {
    single_pass_row(x.row(i).data(), out.row(i).data(), x.cols());
  });
}

void BM_SinglePass(benchmark::State& state) {
  const Index rows = state.range(0), cols = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  fqt::set_num_threads(threads);
  const Matrix& x = gradient(rows, cols);
  fqt::Matrix<std::uint8_t> out(rows, cols);
  for (auto _ : state) {
    single_pass(x, out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * rows * cols);
  state.SetBytesProcessed(state.iterations() * rows * cols * 5);  // 4 bytes read, 1 written
}

// The quantizer of `kind` at `bits` on `grid`; per channel with 64 channels (the 4096 columns as
// blocks of 64, a conv gradient of 64 output channels on 8 × 8 maps).
fqt::AnyQuantizer<float> quantizer_of(fqt::QuantizerKind kind, int bits, fqt::Grid grid) {
  fqt::QuantizerSpec spec{kind, bits, grid};
  if (kind == fqt::QuantizerKind::PerChannel) spec.channels = 64;
  return fqt::AnyQuantizer<float>(spec);
}

// The short name of `kind` in capitals, e.g. "BHQ": benchmark names and counters.
std::string title_of(fqt::QuantizerKind kind) {
  std::string title = fqt::kind_info(kind).name;
  for (auto& c : title) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return title;
}

void BM_Quantize(benchmark::State& state, fqt::QuantizerKind kind, fqt::Grid grid) {
  const Index rows = state.range(0), cols = state.range(1);
  const int bits = static_cast<int>(state.range(2)), threads = static_cast<int>(state.range(3));
  fqt::set_num_threads(threads);
  const Matrix& x = gradient(rows, cols);
  const auto quantizer = quantizer_of(kind, bits, grid);
  const fqt::Philox rng(7);
  // The steady state of training: the codes' buffers are reused from call to call, as the layers'
  // caches reuse theirs (and as the single pass reuses its output).
  fqt::Quantized<float, std::uint8_t> q, q_other;
  const auto quantize = [&] {
    quantizer.quantize(x, rng, q);
    benchmark::DoNotOptimize(q.codes.data());
    benchmark::ClobberMemory();
  };
  for (auto _ : state) quantize();
  state.SetItemsProcessed(state.iterations() * rows * cols);
  state.SetBytesProcessed(state.iterations() * rows * cols * 5);  // 4 bytes read, 1 written

  fqt::Matrix<std::uint8_t> out(rows, cols);
  state.counters["vs_single_pass"] = paired_ratio(quantize, [&] {
    single_pass(x, out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  });
  if (grid == fqt::Grid::Auto) {
    // What choosing the grid costs: the same quantizer on the zero-aligned grid.
    const auto zero = quantizer_of(kind, bits, fqt::Grid::ZeroAligned);
    state.counters["vs_zero"] = paired_ratio(quantize, [&] {
      zero.quantize(x, rng, q_other);
      benchmark::DoNotOptimize(q_other.codes.data());
      benchmark::ClobberMemory();
    });
  }
  if (kind == fqt::QuantizerKind::BlockHouseholder || kind == fqt::QuantizerKind::Hadamard ||
      kind == fqt::QuantizerKind::Adaptive) {
    const auto psq = quantizer_of(fqt::QuantizerKind::PerSample, bits, grid);
    state.counters["vs_psq"] = paired_ratio(quantize, [&] {
      psq.quantize(x, rng, q_other);
      benchmark::DoNotOptimize(q_other.codes.data());
      benchmark::ClobberMemory();
    });
  }
}

void BM_VarianceVsBits(benchmark::State& state, fqt::Grid grid) {
  const Index rows = state.range(0), cols = state.range(1);
  const int bits = static_cast<int>(state.range(2));
  const Matrix& x = gradient(rows, cols);
  std::vector<fqt::AnyQuantizer<float>> quantizers;
  for (const auto& k : fqt::kQuantizerKinds) quantizers.push_back(quantizer_of(k.kind, bits, grid));
  std::vector<double> variance(quantizers.size());
  for (auto _ : state) {
    for (std::size_t i = 0; i < quantizers.size(); ++i) {
      variance[i] = quantizers[i].expected_variance(x);
    }
    benchmark::DoNotOptimize(variance.data());
  }
  for (std::size_t i = 0; i < quantizers.size(); ++i) {
    state.counters[title_of(fqt::kQuantizerKinds[i].kind)] = variance[i];
  }
  const auto of = [&](fqt::QuantizerKind kind) { return variance[static_cast<std::size_t>(kind)]; };
  const double v_ptq = of(fqt::QuantizerKind::PerTensor), v_psq = of(fqt::QuantizerKind::PerSample);
  const double v_bhq = of(fqt::QuantizerKind::BlockHouseholder);
  state.counters["PTQ/BHQ"] = v_ptq / v_bhq;
  state.counters["PSQ/BHQ"] = v_psq / v_bhq;
  state.counters["PSQ/HADAMARD"] = v_psq / of(fqt::QuantizerKind::Hadamard);
  state.counters["PSQ/ADAPTIVE"] = v_psq / of(fqt::QuantizerKind::Adaptive);
  state.counters["bits_saved"] = std::log(v_ptq / v_bhq) / std::log(4.0);
}

const std::vector<std::vector<std::int64_t>> kShapesBitsThreads = {
    {128, 512, 4096}, {4096}, {4, 8}, {1, 2}};

void register_quantizer(fqt::QuantizerKind kind, fqt::Grid grid) {
  benchmark::RegisterBenchmark(
      ("BM_Quantize/" + title_of(kind) + "/" + fqt::to_string(grid)).c_str(), BM_Quantize, kind,
      grid)
      ->ArgNames({"rows", "cols", "bits", "threads"})
      ->ArgsProduct(kShapesBitsThreads)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

[[maybe_unused]] const bool kRegistered = [] {
  benchmark::RegisterBenchmark("BM_SinglePass", BM_SinglePass)
      ->ArgNames({"rows", "cols", "threads"})
      ->ArgsProduct({{128, 512, 4096}, {4096}, {1, 2}})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  for (const auto& k : fqt::kQuantizerKinds) {
    for (const fqt::Grid grid : {fqt::Grid::ZeroAligned, fqt::Grid::Auto})
      register_quantizer(k.kind, grid);
  }
  for (const fqt::Grid grid :
       {fqt::Grid::Free, fqt::Grid::ZeroAligned, fqt::Grid::Paper, fqt::Grid::Auto}) {
    const std::string name = std::string("BM_VarianceVsBits/") + fqt::to_string(grid);
    benchmark::RegisterBenchmark(name.c_str(), BM_VarianceVsBits, grid)
        ->ArgNames({"rows", "cols", "bits"})
        ->ArgsProduct({{128}, {4096}, benchmark::CreateDenseRange(2, 8, 1)})
        ->Unit(benchmark::kMillisecond);
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
