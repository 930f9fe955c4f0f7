// Forward + backward of a Linear (batch 128, 1024 → 1024; batch 512, 4096 → 4096) and a Conv2d
// (batch 64, 32 → 64 channels, 3×3, padding 1, 16×16): Exact, QAT and FQT with each grad-input
// quantizer at 4 and 8 bits, on the simulated backend (`<shape>/fqt_<q>_<b>`) and on the int8
// backend (`<shape>/int8_fqt_<q>_<b>`, oneDNN's engine where the build has it); each of the int8
// step's three products alone (`int8_forward`, `int8_grad_input`, `int8_grad_weight`, with their
// quantizers); and, with oneDNN, an fp32 step on oneDNN's f32 matmul (`exact_dnnl`).
// `vs_exact` (wall clock) and `vs_exact_cpu` (process CPU time) are the time per step over the
// Exact step's, `vs_float_fqt` over the same FQT step on the simulated backend, all measured in
// the same iterations.
//
//   bench_nn --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "fqt/nn/backends/int8.hpp"
#include "fqt/nn/functional.hpp"
#include "fqt/quant/catalogue.hpp"
#ifdef FQT_BENCH_DNNL
#include "fqt/nn/backends/dnnl.hpp"
#endif

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

// Which products a benchmark times: the whole step, or one product with its quantizers.
enum class Part { Step, Forward, GradInput, GradWeight };

// One layer's forward and backward with preallocated outputs and a reused cache.
class LinearStep {
 public:
  LinearStep(Index n, Index in, Index out)
      : x_(random_matrix(n, in, 1, 1.0)),
        w_(random_matrix(out, in, 2, 1.0 / std::sqrt(double(in)))),
        b_(Vector<float>::Zero(out)),
        gy_(random_matrix(n, out, 3, 0.01)),
        y_(n, out),
        gx_(n, in),
        gw_(Matrix<float>::Zero(out, in)),
        gb_(Vector<float>::Zero(out)) {}
  void run(const nn::QuantPolicy& policy, std::uint64_t step, Part part = Part::Step) {
    if (part == Part::Step || part == Part::Forward || !cache_.complete) {
      nn::linear_forward(x_, w_, b_, policy, cache_, y_);
    }
    if (part == Part::Forward) return;
    Matrix<float> none;
    Vector<float> no_bias;
    nn::linear_backward(gy_, cache_, nn::gradient_streams(fqt::Philox(7), step, 0),
                        part == Part::GradWeight ? none : gx_, part == Part::GradInput ? none : gw_,
                        part == Part::Step ? gb_ : no_bias);
  }
  double flops() const {
    return 3.0 * 2 * double(x_.rows()) * double(x_.cols()) * double(w_.rows());
  }

  const Matrix<float>& x() const { return x_; }
  const Matrix<float>& w() const { return w_; }
  const Matrix<float>& gy() const { return gy_; }

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
  void run(const nn::QuantPolicy& policy, std::uint64_t step, Part part = Part::Step) {
    if (part == Part::Step || part == Part::Forward || !cache_.complete) {
      nn::conv2d_forward(x_, w_, b_, geometry_, policy, cache_, y_);
    }
    if (part == Part::Forward) return;
    Matrix<float> none;
    Vector<float> no_bias;
    nn::conv2d_backward(gy_, cache_, nn::gradient_streams(fqt::Philox(7), step, 0),
                        part == Part::GradWeight ? none : gx_, part == Part::GradInput ? none : gw_,
                        part == Part::Step ? gb_ : no_bias);
  }
  double flops() const {
    return 3.0 * 2 * 64 * geometry_.output_size() * static_cast<double>(geometry_.patch_size());
  }

  const nn::Conv2dGeometry& geometry() const { return geometry_; }
  const Matrix<float>& x() const { return x_; }
  const Matrix<float>& w() const { return w_; }
  const Matrix<float>& gy() const { return gy_; }

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

#ifdef FQT_BENCH_DNNL
// An fp32 step on oneDNN's f32 matmul, the fastest float baseline a user could pick: the same
// products as the Exact step (conv by im2col), each a cached oneDNN primitive.
class DnnlF32 {
 public:
  struct Plan {
    fqt::GemmShape shape;
    bool accumulate = false;
    dnnl::memory a, b, c;
    dnnl::matmul matmul;
  };
  // C (+)= A·B for every batch, strides as fqt::GemmShape.
  void multiply(const fqt::GemmShape& s, const float* a, const float* b, float* c, bool accumulate,
                std::unique_ptr<Plan>& plan) {
    if (!plan || !(plan->shape == s) || plan->accumulate != accumulate) plan = build(s, accumulate);
    plan->a.set_data_handle(const_cast<float*>(a));
    plan->b.set_data_handle(const_cast<float*>(b));
    plan->c.set_data_handle(c);
    plan->matmul.execute(
        stream_, {{DNNL_ARG_SRC, plan->a}, {DNNL_ARG_WEIGHTS, plan->b}, {DNNL_ARG_DST, plan->c}});
    stream_.wait();
  }

 private:
  static dnnl::memory::desc describe(Index batch, Index rows, Index cols,
                                     const fqt::GemmStrides& st) {
    using dims = dnnl::memory::dims;
    return dnnl::memory::desc(dims{st.batch == 0 ? 1 : batch, rows, cols},
                              dnnl::memory::data_type::f32,
                              dims{st.batch == 0 ? rows * cols : st.batch, st.row, st.col});
  }
  std::unique_ptr<Plan> build(const fqt::GemmShape& s, bool accumulate) {
    auto plan = std::make_unique<Plan>();
    plan->shape = s;
    plan->accumulate = accumulate;
    plan->a = dnnl::memory(describe(s.batch, s.m, s.k, s.a), engine_, DNNL_MEMORY_NONE);
    plan->b = dnnl::memory(describe(s.batch, s.k, s.n, s.b), engine_, DNNL_MEMORY_NONE);
    plan->c = dnnl::memory(describe(s.batch, s.m, s.n, s.c), engine_, DNNL_MEMORY_NONE);
    dnnl::primitive_attr attr;
    if (accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.f);
      attr.set_post_ops(ops);
    }
    plan->matmul = dnnl::matmul(dnnl::matmul::primitive_desc(
        dnnl::matmul::desc(plan->a.get_desc(), plan->b.get_desc(), plan->c.get_desc()), attr,
        engine_));
    return plan;
  }
  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream_{engine_};
};

class DnnlLinearStep {
 public:
  explicit DnnlLinearStep(const LinearStep& data)
      : x_(data.x()),
        w_(data.w()),
        gy_(data.gy()),
        y_(x_.rows(), w_.rows()),
        gx_(x_.rows(), x_.cols()),
        gw_(Matrix<float>::Zero(w_.rows(), w_.cols())),
        gb_(Vector<float>::Zero(w_.rows())) {}
  void run() {
    const Index n = x_.rows(), in = x_.cols(), out = w_.rows();
    dnnl_.multiply({1, n, out, in, {0, in, 1}, {0, 1, in}, {0, out, 1}}, x_.data(), w_.data(),
                   y_.data(), false, plans_[0]);
    dnnl_.multiply({1, n, in, out, {0, out, 1}, {0, in, 1}, {0, in, 1}}, gy_.data(), w_.data(),
                   gx_.data(), false, plans_[1]);
    dnnl_.multiply({1, out, in, n, {0, 1, out}, {0, in, 1}, {0, in, 1}}, gy_.data(), x_.data(),
                   gw_.data(), true, plans_[2]);
    gb_ += gy_.colwise().sum().transpose();
  }

 private:
  Matrix<float> x_, w_, gy_, y_, gx_, gw_;
  Vector<float> gb_;
  DnnlF32 dnnl_;
  std::unique_ptr<DnnlF32::Plan> plans_[3];
};

class DnnlConvStep {
 public:
  explicit DnnlConvStep(const ConvStep& data)
      : g_(data.geometry()),
        x_(data.x()),
        w_(data.w()),
        gy_(data.gy()),
        y_(x_.rows(), g_.output_size()),
        gx_(x_.rows(), g_.input_size()),
        gw_(Matrix<float>::Zero(w_.rows(), w_.cols())) {}
  void run() {
    const Index n = x_.rows(), k = g_.out_channels, patch = g_.patch_size(), plane = g_.out_plane(),
                wide = n * plane;
    columns_.resize(patch, wide);
    one_.resize(patch, plane);
    for (Index s = 0; s < n; ++s) {
      nn::detail::im2col(x_.data() + s * x_.cols(), g_, one_.data());
      columns_.middleCols(s * plane, plane) = one_;
    }
    dnnl_.multiply({n, k, plane, patch, {0, patch, 1}, {plane, wide, 1}, {k * plane, plane, 1}},
                   w_.data(), columns_.data(), y_.data(), false, plans_[0]);
    dcols_.resize(n, patch * plane);
    dnnl_.multiply(
        {n, patch, plane, k, {0, 1, patch}, {k * plane, plane, 1}, {patch * plane, plane, 1}},
        w_.data(), gy_.data(), dcols_.data(), false, plans_[1]);
    gx_.setZero();
    for (Index s = 0; s < n; ++s)
      nn::detail::col2im_add(dcols_.data() + s * patch * plane, g_, gx_.data() + s * gx_.cols());
    channel_major_.resize(k, wide);
    for (Index s = 0; s < n; ++s)
      for (Index c = 0; c < k; ++c)
        channel_major_.row(c).segment(s * plane, plane) = gy_.row(s).segment(c * plane, plane);
    dnnl_.multiply({1, k, patch, wide, {0, wide, 1}, {0, 1, wide}, {0, patch, 1}},
                   channel_major_.data(), columns_.data(), gw_.data(), true, plans_[2]);
  }

 private:
  nn::Conv2dGeometry g_;
  Matrix<float> x_, w_, gy_, y_, gx_, gw_, columns_, one_, dcols_, channel_major_;
  DnnlF32 dnnl_;
  std::unique_ptr<DnnlF32::Plan> plans_[3];
};
#endif

// Paired measurement: every iteration runs the measured step (timed by the framework) and, with
// the timer paused, the Exact step and (if given) the simulated FQT step, each on its own
// buffers. The ratios of the summed times are robust to the load of a shared machine drifting
// during the run.
using StepFn = std::function<void(std::uint64_t)>;
void paired(benchmark::State& state, const StepFn& measured, const StepFn& exact,
            const StepFn& float_fqt, double flops) {
  std::uint64_t counter = 0;
  measured(counter);  // warm-up: sizes the caches
  exact(counter);
  if (float_fqt) float_fqt(counter);
  ++counter;
  Times time, exact_time, float_time;
  for (auto _ : state) {
    const Times a = Times::now();
    measured(counter);
    benchmark::ClobberMemory();
    const Times b = Times::now();
    state.PauseTiming();
    const Times c = Times::now();
    exact(counter);
    benchmark::ClobberMemory();
    const Times d = Times::now();
    if (float_fqt) float_fqt(counter);
    benchmark::ClobberMemory();
    float_time += Times::now() - d;
    exact_time += d - c;
    ++counter;
    state.ResumeTiming();
    time += b - a;
  }
  state.counters["vs_exact"] = time.wall / exact_time.wall;
  state.counters["vs_exact_cpu"] = time.cpu / exact_time.cpu;
  if (float_fqt) state.counters["vs_float_fqt"] = time.wall / float_time.wall;
  state.counters["GFLOPs"] = flops * static_cast<double>(state.iterations()) / time.wall * 1e-9;
}

std::shared_ptr<const nn::Backend> integer_backend() {
#ifdef FQT_BENCH_DNNL
  return nn::dnnl_backend();
#else
  return nn::int8_backend();
#endif
}

// The benchmarks of one shape: make() builds a fresh step (its own buffers).
template <class Step, class Make>
void register_shape(const std::string& shape, Make make) {
  struct Config {
    std::string name;
    nn::QuantPolicy policy;
    Part part = Part::Step;
  };
  std::vector<Config> configs{{"exact", nn::QuantPolicy::with_mode(nn::Mode::Exact)},
                              {"qat", nn::QuantPolicy::with_mode(nn::Mode::QAT)}};
  for (const auto& k : fqt::kQuantizerKinds) {
    if (!fqt::can_feed(k.kind, fqt::Contraction::Columns)) continue;  // not a grad-input quantizer
    for (int bits : {4, 8}) {
      nn::QuantPolicy p;
      p.grad_input.kind = k.kind;
      p.grad_input.bits = p.grad_weight.bits = bits;
      p.grad_weight.kind = fqt::QuantizerKind::PerTensor;  // PTQ grad-weight in every config
      configs.push_back({std::string("fqt_") + k.name + "_" + std::to_string(bits), p});
      p.backend = integer_backend();
      configs.push_back({std::string("int8_fqt_") + k.name + "_" + std::to_string(bits), p});
    }
  }
  nn::QuantPolicy int8;  // BHQ 8-bit grad-input, PTQ 8-bit grad-weight
  int8.grad_weight.kind = fqt::QuantizerKind::PerTensor;
  int8.backend = integer_backend();
  configs.push_back({"int8_forward", int8, Part::Forward});
  configs.push_back({"int8_grad_input", int8, Part::GradInput});
  configs.push_back({"int8_grad_weight", int8, Part::GradWeight});
  for (const auto& c : configs) {
    benchmark::RegisterBenchmark(
        (shape + "/" + c.name).c_str(),
        [c, make](benchmark::State& s) {
          auto step = make(), exact = make();
          std::shared_ptr<Step> simulated = c.policy.backend ? make() : nullptr;
          nn::QuantPolicy float_policy = c.policy;
          float_policy.backend = nullptr;
          const auto exact_policy = nn::QuantPolicy::with_mode(nn::Mode::Exact);
          paired(
              s, [&](std::uint64_t i) { step->run(c.policy, i, c.part); },
              [&](std::uint64_t i) { exact->run(exact_policy, i); },
              simulated ? StepFn([&](std::uint64_t i) { simulated->run(float_policy, i, c.part); })
                        : StepFn(),
              c.part == Part::Step ? step->flops() : step->flops() / 3);
        })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
#ifdef FQT_BENCH_DNNL
  benchmark::RegisterBenchmark(
      (shape + "/exact_dnnl").c_str(),
      [make](benchmark::State& s) {
        auto data = make(), exact = make();
        using Dnnl =
            std::conditional_t<std::is_same_v<Step, LinearStep>, DnnlLinearStep, DnnlConvStep>;
        Dnnl step(*data);
        const auto exact_policy = nn::QuantPolicy::with_mode(nn::Mode::Exact);
        paired(
            s, [&](std::uint64_t) { step.run(); },
            [&](std::uint64_t i) { exact->run(exact_policy, i); }, StepFn(), data->flops());
      })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
#endif
}

void register_all() {
  register_shape<LinearStep>("linear_128x1024x1024",
                             [] { return std::make_shared<LinearStep>(128, 1024, 1024); });
  register_shape<LinearStep>("linear_512x4096x4096",
                             [] { return std::make_shared<LinearStep>(512, 4096, 4096); });
  register_shape<ConvStep>("conv_64x32x16x16_k3_to64", [] { return std::make_shared<ConvStep>(); });
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
