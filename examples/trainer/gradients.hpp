#pragma once
/// \file
/// \brief The gradient quantizers on the trainer's real gradients: the output gradient G = dL/dY
/// of every layer (recorded on its way to the products by a backend that wraps the simulated
/// one), and the exact variance of each quantizer on it, relative to the paper's configuration.

#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fqt/nn/backend.hpp"
#include "fqt/nn/backends/simulated.hpp"
#include "fqt/nn/profile.hpp"
#include "fqt/quant.hpp"
#include "trainer/data.hpp"
#include "trainer/model.hpp"
#include "trainer/train.hpp"

namespace fqt_train {

/// \brief The simulated backend, recording the output gradient G of every grad-weight product
/// (one per layer with weights, in backward order: last layer first). Outside Mode::FQT G
/// arrives as values, the full-precision dL/dY.
class RecordingBackend final : public fqt::nn::BackendFor<RecordingBackend> {
 public:
  const char* name() const override { return "recording"; }
  bool multiplies_codes() const override { return false; }
  /// The recorded gradients, in the order of the calls.
  mutable std::vector<Matrix> gradients;

  template <class S>
  void linear_forward_impl(const nn::Operand<S>& x, const nn::Operand<S>& w, fqt::MatrixRef<S> y,
                           std::unique_ptr<nn::BackendState>& state) const {
    nn::simulated_backend().linear_forward(x, w, y, state);
  }
  template <class S>
  void linear_grad_input_impl(const nn::Operand<S>& g, const nn::Operand<S>& w,
                              fqt::MatrixRef<S> dx,
                              std::unique_ptr<nn::BackendState>& state) const {
    nn::simulated_backend().linear_grad_input(g, w, dx, state);
  }
  template <class S>
  void linear_grad_weight_impl(const nn::Operand<S>& g, const nn::Operand<S>& x,
                               fqt::MatrixRef<S> dw,
                               std::unique_ptr<nn::BackendState>& state) const {
    record(g);
    nn::simulated_backend().linear_grad_weight(g, x, dw, state);
  }
  template <class S>
  void conv_forward_impl(const nn::Conv2dGeometry& geo, const nn::Operand<S>& x,
                         const nn::Operand<S>& w, fqt::MatrixRef<S> y, nn::ConvColumns columns,
                         std::unique_ptr<nn::BackendState>& state) const {
    nn::simulated_backend().conv_forward(geo, x, w, y, columns, state);
  }
  template <class S>
  void conv_grad_input_impl(const nn::Conv2dGeometry& geo, const nn::Operand<S>& g,
                            const nn::Operand<S>& w, fqt::MatrixRef<S> dx,
                            std::unique_ptr<nn::BackendState>& state) const {
    nn::simulated_backend().conv_grad_input(geo, g, w, dx, state);
  }
  template <class S>
  void conv_grad_weight_impl(const nn::Conv2dGeometry& geo, const nn::Operand<S>& g,
                             const nn::Operand<S>& x, fqt::MatrixRef<S> dw,
                             std::unique_ptr<nn::BackendState>& state) const {
    record(g);
    nn::simulated_backend().conv_grad_weight(geo, g, x, dw, state);
  }

 private:
  template <class S>
  void record(const nn::Operand<S>& g) const {
    if constexpr (std::is_same_v<S, float>) {
      if (!g.coded()) gradients.emplace_back(g.value());
    }
  }
};

/// \brief One layer's output gradient at one point of training.
struct LayerGradient {
  std::string name;  ///< e.g. "early 3 (conv)"
  Matrix g;          ///< N × (output features), as the quantizers see it
};

/// \brief The output gradients dL/dY of every layer with weights on one batch of `data` (the
/// profile's first batch, see measure_gradient_variance), in QAT mode with `policy`'s forward
/// quantizer. Names are "<tag> <layer id>".
inline std::vector<LayerGradient> layer_gradients(Model& model, const Dataset& data,
                                                  nn::QuantPolicy policy, Index batch_size,
                                                  std::uint64_t seed, const std::string& tag) {
  const auto recorder = std::make_shared<RecordingBackend>();
  policy.mode = nn::Mode::QAT;
  policy.backend = recorder;
  const auto order = epoch_order(data.size(), seed_stream(seed, Stream::Profile), 0);
  fqt::nn::Batch<float> batch;
  batch.shape = model.input_shape();
  gather_batch(data, order, 0, std::min(batch_size, data.size()), batch.inputs, batch.labels);
  fqt::nn::ProfileOptions options;
  fqt::nn::detail::parameter_gradients(model.net(), model.parameters(), batch,
                                       fqt::nn::detail::profile_context(policy, options), 0.0);
  // Backward order is last layer first; the layers with weights are conv 0, conv 3, linear 7,
  // linear 9 of the trainer's CNN.
  const char* names[] = {"9 (linear)", "7 (linear)", "3 (conv)", "0 (conv)"};
  std::vector<LayerGradient> out;
  for (std::size_t k = 0; k < recorder->gradients.size(); ++k)
    out.push_back({tag + " " + (k < 4 ? names[k] : std::to_string(k)), recorder->gradients[k]});
  return out;
}

/// \brief Prints, for every gradient and bit width, the exact variance of fqt's quantizers
/// relative to the best of the paper's three in the released configuration (PTQ, PSQ, BHQ on
/// Grid::Paper), then their geometric means relative to the paper's BHQ.
inline void print_variance_table(const std::vector<LayerGradient>& grads,
                                 const std::vector<int>& bits) {
  using fqt::Grid;
  struct Column {
    const char* title;
    std::function<double(const Matrix&, int)> variance;
  };
  auto column = [](const char* title, auto make) {
    return Column{title,
                  [make](const Matrix& g, int b) { return double(make(b).expected_variance(g)); }};
  };
  using Adaptive = fqt::AdaptiveQuantizer<float>;
  const std::vector<Column> columns = {
      column("PTQ paper", [](int b) { return fqt::PerTensorQuantizer<float>(b, Grid::Paper); }),
      column("PSQ paper", [](int b) { return fqt::PerSampleQuantizer<float>(b, Grid::Paper); }),
      column("BHQ paper",
             [](int b) { return fqt::BlockHouseholderQuantizer<float>(b, Grid::Paper); }),
      column("BHQ zero",
             [](int b) { return fqt::BlockHouseholderQuantizer<float>(b, Grid::ZeroAligned); }),
      column("PTQ auto", [](int b) { return fqt::PerTensorQuantizer<float>(b, Grid::Auto); }),
      column("PSQ auto", [](int b) { return fqt::PerSampleQuantizer<float>(b, Grid::Auto); }),
      column("BHQ auto",
             [](int b) { return fqt::BlockHouseholderQuantizer<float>(b, Grid::Auto); }),
      column("BHQ sel auto",
             [](int b) {
               return fqt::BlockHouseholderQuantizer<float>(b, Grid::Auto,
                                                            fqt::BhqMixing::WhereItHelps);
             }),
      column("Had auto", [](int b) { return fqt::HadamardQuantizer<float>(b, Grid::Auto); }),
      column("adaptive+PTQ",
             [](int b) {
               return Adaptive(b, Grid::Auto,
                               {Adaptive::Kind::PerTensor, Adaptive::Kind::PerSample,
                                Adaptive::Kind::BlockHouseholder, Adaptive::Kind::Hadamard});
             }),
      column("adaptive", [](int b) { return Adaptive(b, Grid::Auto); }),
  };
  constexpr std::size_t kBhq = 2;  // the paper's BHQ
  std::printf(
      "Exact variance E||Q(G) - G||^2 on the trainer's output gradients, relative to the "
      "best of the paper's PTQ/PSQ/BHQ (Grid::Paper) for that gradient:\n\n");
  std::printf("| gradient | N x D | zeros | bits | best paper |");
  for (const auto& c : columns) std::printf(" %s |", c.title);
  std::printf("\n|---|---|---|---|---|");
  for (std::size_t c = 0; c < columns.size(); ++c) std::printf("---|");
  std::printf("\n");
  std::vector<std::vector<double>> log_over_bhq(bits.size(),
                                                std::vector<double>(columns.size(), 0));
  std::vector<double> worst_over_best(bits.size(), 0);
  for (const auto& lg : grads) {
    const double zeros =
        static_cast<double>((lg.g.array() == 0).count()) / static_cast<double>(lg.g.size());
    for (std::size_t bi = 0; bi < bits.size(); ++bi) {
      std::vector<double> v;
      for (const auto& c : columns) v.push_back(c.variance(lg.g, bits[bi]));
      const double best = std::min({v[0], v[1], v[2]});
      std::printf("| %s | %lld x %lld | %.0f%% | %d | %.3g |", lg.name.c_str(),
                  static_cast<long long>(lg.g.rows()), static_cast<long long>(lg.g.cols()),
                  100 * zeros, bits[bi], best);
      for (std::size_t c = 0; c < v.size(); ++c) {
        std::printf(" %.3f |", best > 0 ? v[c] / best : 1.0);
        log_over_bhq[bi][c] += std::log(v[c] / v[kBhq]);
      }
      std::printf("\n");
      worst_over_best[bi] = std::max(worst_over_best[bi], v.back() / best);
    }
  }
  std::printf("\nGeometric mean over the %zu gradients, relative to the paper's BHQ:\n\n",
              grads.size());
  std::printf("| bits |");
  for (const auto& c : columns) std::printf(" %s |", c.title);
  std::printf(" adaptive worst vs best paper |\n|---|");
  for (std::size_t c = 0; c <= columns.size(); ++c) std::printf("---|");
  std::printf("\n");
  for (std::size_t bi = 0; bi < bits.size(); ++bi) {
    std::printf("| %d |", bits[bi]);
    for (std::size_t c = 0; c < columns.size(); ++c)
      std::printf(" %.3f |", std::exp(log_over_bhq[bi][c] / static_cast<double>(grads.size())));
    std::printf(" %.3f |\n", worst_over_best[bi]);
  }
}

}  // namespace fqt_train
