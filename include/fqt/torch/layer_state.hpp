#pragma once
/// \file
/// \brief What the libtorch adapter keeps per layer: the policy, the engine that computes the
/// products, the layer's noise stream (seed, layer id, call counter) and a pool of workspaces
/// reused across steps; and the checked Eigen views of tensors it hands to fqt.

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/torch.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/functional.hpp"
#include "fqt/nn/policy.hpp"
#include "fqt/nn/presets.hpp"
#include "fqt/nn/product.hpp"

namespace fqt {
namespace torch {

/// \brief Who computes a quantized layer's products.
enum class Engine {
  /// Fqt when the policy names a backend (e.g. the int8 one), else Torch: the measured fastest
  /// (see the README's libtorch section).
  Auto,
  /// libtorch's own float kernels (mm, convolution) on the operands fqt fake-quantizes; any conv
  /// geometry (groups, dilation) libtorch supports.
  Torch,
  /// fqt's functional ops (fqt::nn::linear_forward, conv2d_forward, ...) on the policy's backend:
  /// the simulated one, or the int8 GEMMs; conv without groups or dilation.
  Fqt
};

/// \brief "auto", "torch" or "fqt".
inline const char* to_string(Engine e) {
  switch (e) {
    case Engine::Auto:
      return "auto";
    case Engine::Torch:
      return "torch";
    case Engine::Fqt:
      return "fqt";
  }
  return "?";
}

/// \brief The quantization of one adapter layer (the second argument of Linear and Conv2d).
struct Quantization {
  nn::QuantPolicy policy;        ///< mode, quantizers, bits, grid and backend (QuantPolicy{})
  Engine engine = Engine::Auto;  ///< who computes the products
  std::uint64_t seed = 0;        ///< key of the layer's Philox stream
  /// The layer's id in its streams; negative: the next of a process-wide counter, in
  /// construction order (the same model built the same way gets the same ids)
  std::int64_t layer = -1;
  /// What an Engine::Fqt convolution keeps for its backward pass (nn::Conv2dCache::columns)
  nn::ConvColumns conv_columns = nn::ConvColumns::Keep;

  Quantization() = default;
  /// \brief The given policy, the other knobs at their defaults.
  Quantization(nn::QuantPolicy p) : policy(std::move(p)) {}  // NOLINT: implicit on purpose

  Quantization& with_engine(Engine e) {
    engine = e;
    return *this;
  }
  Quantization& with_seed(std::uint64_t s) {
    seed = s;
    return *this;
  }
  Quantization& with_layer(std::int64_t id) {
    layer = id;
    return *this;
  }
  /// Engine::Fqt convolutions: keep the whole batch's im2col columns or recompute them in the
  /// backward pass (nn::Conv2dCache::columns)
  Quantization& with_conv_columns(nn::ConvColumns c) {
    conv_columns = c;
    return *this;
  }
};

namespace detail {

inline std::int64_t next_layer_id() {
  static std::atomic<std::int64_t> counter{0};
  return counter.fetch_add(1);
}

/// \brief The workspaces of one forward/backward pair: fqt's stores of the quantized operands
/// (their buffers are reused when the shapes repeat) and the caches of fqt's functional ops.
template <class Scalar>
struct Workspace {
  nn::OperandStore<Scalar> input, weight, grad_for_input, grad_for_weight;
  nn::LinearCache<Scalar> linear;
  nn::Conv2dCache<Scalar> conv;
};

template <class Scalar>
class WorkspacePool;

/// Gives a workspace back to its pool (the deleter of a WorkspaceLease).
template <class Scalar>
struct ReturnToPool {
  std::shared_ptr<WorkspacePool<Scalar>> pool;
  void operator()(Workspace<Scalar>* w) const;
};

/// A workspace on loan from a pool, returned when the lease is destroyed or reset.
template <class Scalar>
using WorkspaceLease = std::unique_ptr<Workspace<Scalar>, ReturnToPool<Scalar>>;

/// \brief A pool of workspaces: a pass takes one and gives it back when its autograd node is
/// released (after backward, or when the graph is dropped), so steady-state steps reuse the same
/// buffers and allocate nothing here. Safe to use from several threads.
template <class Scalar>
class WorkspacePool : public std::enable_shared_from_this<WorkspacePool<Scalar>> {
 public:
  /// \brief A workspace, returned to this pool when the lease ends.
  WorkspaceLease<Scalar> acquire() {
    std::unique_ptr<Workspace<Scalar>> w;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        w = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (!w) {
      w = std::make_unique<Workspace<Scalar>>();
      created_.fetch_add(1);
      std::lock_guard<std::mutex> lock(mutex_);
      free_.reserve(static_cast<std::size_t>(created_.load()));  // so that give_back never grows
    }
    return WorkspaceLease<Scalar>(w.release(), ReturnToPool<Scalar>{this->shared_from_this()});
  }
  /// \brief Workspaces this pool has created (the number of passes alive at once, at most).
  std::int64_t created() const { return created_.load(); }

 private:
  friend struct ReturnToPool<Scalar>;
  void give_back(Workspace<Scalar>* w) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.emplace_back(w);
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<Workspace<Scalar>>> free_;
  std::atomic<std::int64_t> created_{0};
};

template <class Scalar>
void ReturnToPool<Scalar>::operator()(Workspace<Scalar>* w) const {
  pool->give_back(w);
}

}  // namespace detail

/// \brief The state of one adapter layer: its quantization, its stream and its workspaces.
///
/// **Streams.** Every forward pass that records a backward (grad mode on, an input or parameter
/// requiring grad) takes the next value c of the call counter, and its backward quantizes with
/// nn::gradient_streams(Philox(seed), c, layer): each pass — each step, each micro-batch of an
/// accumulated step, each use of a layer shared within one graph — draws fresh noise, and nothing
/// needs advancing by hand. The counter (with the layer id) lives in the tensor `stream()`, which
/// the modules register as the buffer "fqt_stream": torch::save / torch::load of a module keep it,
/// so a resumed run continues with the same noise as an uninterrupted one.
class LayerState {
 public:
  explicit LayerState(Quantization q)
      : quantization_(std::move(q)),
        stream_(::torch::zeros({2}, ::torch::kLong)),
        float_pool_(std::make_shared<detail::WorkspacePool<float>>()),
        double_pool_(std::make_shared<detail::WorkspacePool<double>>()) {
    quantization_.policy.validate("torch::LayerState");
    const std::int64_t id =
        quantization_.layer >= 0 ? quantization_.layer : detail::next_layer_id();
    stream_.data_ptr<std::int64_t>()[0] = id;
    quantization_.layer = id;
  }

  /// \brief The layer's quantization (its policy, engine, seed; layer is the id in use).
  const Quantization& quantization() const { return quantization_; }
  /// \brief Replaces the policy and engine (the stream and its counter continue).
  /// \throws std::invalid_argument on an invalid policy; the state is then unchanged
  void set_quantization(Quantization q) {
    q.policy.validate("torch::LayerState::set_quantization");
    q.layer = counters()[0];  // the id stays that of the stream
    quantization_ = std::move(q);
  }
  /// \brief The int64 tensor {layer id, calls so far} (the modules' "fqt_stream" buffer).
  ::torch::Tensor& stream() { return stream_; }
  /// \brief The layer id of the streams.
  std::int64_t layer() { return counters()[0]; }
  /// \brief The number of recorded forward passes so far (the next pass's counter value).
  std::int64_t calls() { return counters()[1]; }
  /// \brief Sets the call counter, e.g. to replay a pass: the next pass uses `calls`.
  void set_calls(std::int64_t calls) {
    check(calls >= 0, "torch::LayerState::set_calls", "calls must be non-negative, got ", calls);
    counters()[1] = calls;
  }

  /// \brief The streams of the next recorded pass; advances the counter (safe when several threads
  /// run the same layer: each pass gets its own call number).
  nn::GradientStreams next_streams() {
    std::lock_guard<std::mutex> lock(counter_mutex_);
    std::int64_t* s = counters();
    const auto call = static_cast<std::uint64_t>(s[1]++);
    return nn::gradient_streams(Philox(quantization_.seed), call, static_cast<std::uint64_t>(s[0]));
  }

  /// \brief The engine that runs the products: Engine::Auto resolved.
  Engine engine() const {
    if (quantization_.engine != Engine::Auto) return quantization_.engine;
    return quantization_.policy.backend ? Engine::Fqt : Engine::Torch;
  }

  /// \brief The pool of workspaces for Scalar.
  template <class Scalar>
  const std::shared_ptr<detail::WorkspacePool<Scalar>>& pool() {
    if constexpr (std::is_same_v<Scalar, float>) {
      return float_pool_;
    } else {
      return double_pool_;
    }
  }
  /// \brief Workspaces created so far (float and double): constant in a steady state.
  std::int64_t workspaces_created() const {
    return float_pool_->created() + double_pool_->created();
  }

 private:
  // The two counters, after turning the buffer back into int64 if Module::to(dtype) converted it
  // (its values are integers far below 2^53, so the conversion kept them).
  std::int64_t* counters() {
    constexpr const char* kWhere = "torch::LayerState";
    check(stream_.defined() && stream_.numel() == 2 && stream_.device().is_cpu(), kWhere,
          "the fqt_stream buffer must be a CPU tensor of 2 elements");
    if (stream_.scalar_type() != ::torch::kLong || !stream_.is_contiguous()) {
      ::torch::NoGradGuard no_grad;
      stream_.set_data(stream_.to(::torch::kLong).contiguous());
    }
    std::int64_t* s = stream_.data_ptr<std::int64_t>();
    check(s[0] >= 0 && s[1] >= 0, kWhere, "the fqt_stream buffer holds a negative layer id or ",
          "call count: ", s[0], ", ", s[1]);
    return s;
  }

  Quantization quantization_;
  ::torch::Tensor stream_;
  std::mutex counter_mutex_;
  std::shared_ptr<detail::WorkspacePool<float>> float_pool_;
  std::shared_ptr<detail::WorkspacePool<double>> double_pool_;
};

namespace detail {

/// \brief Throws std::invalid_argument naming `where` and `what` unless t is a defined CPU tensor
/// of float or double (the same as `like` when given) with `dims` dimensions (any when negative).
inline void check_tensor(const ::torch::Tensor& t, const char* where, const char* what, int dims,
                         const ::torch::Tensor* like = nullptr) {
  // fqt::check evaluates its message arguments eagerly: each is computed only once it is valid.
  const auto dtype = [](const ::torch::Tensor& x) {
    return std::string(c10::toString(x.scalar_type()));
  };
  check(t.defined(), where, what, " is an undefined tensor");
  if (!t.device().is_cpu())
    check(false, where, what, " is on ", t.device().str(), "; fqt's adapter runs on the CPU");
  if (t.scalar_type() != ::torch::kFloat && t.scalar_type() != ::torch::kDouble)
    check(false, where, what, " has dtype ", dtype(t), "; expected float or double");
  if (like && t.scalar_type() != like->scalar_type())
    check(false, where, what, " has dtype ", dtype(t), " but input has ", dtype(*like));
  check(dims < 0 || t.dim() == dims, where, what, " must have ", dims, " dimensions, got ",
        t.dim());
}

/// \brief The contiguous tensor t viewed as a rows × cols row-major matrix (no copy).
template <class Scalar>
Eigen::Map<const Matrix<Scalar>> const_matrix(const ::torch::Tensor& t, Index rows, Index cols) {
  FQT_ASSERT(t.is_contiguous() && t.numel() == rows * cols);
  return Eigen::Map<const Matrix<Scalar>>(t.data_ptr<Scalar>(), rows, cols);
}
template <class Scalar>
Eigen::Map<Matrix<Scalar>> matrix(::torch::Tensor& t, Index rows, Index cols) {
  FQT_ASSERT(t.is_contiguous() && t.numel() == rows * cols);
  return Eigen::Map<Matrix<Scalar>>(t.data_ptr<Scalar>(), rows, cols);
}

/// \brief A tensor of `sizes` over the values of an OperandStore (no copy; the store must outlive
/// it).
template <class Scalar>
::torch::Tensor tensor_over(const nn::OperandStore<Scalar>& store, at::IntArrayRef sizes) {
  return ::torch::from_blob(const_cast<Scalar*>(store.values().data()), sizes,
                            ::torch::TensorOptions().dtype(c10::CppTypeToScalarType<Scalar>()));
}

/// \brief Q_f(x) with `spec` as a tensor of x's sizes over `store` (x itself when the policy's
/// forward pass is not quantized); x is contiguous.
template <class Scalar>
::torch::Tensor forward_operand(const nn::QuantPolicy& policy, const QuantizerSpec& spec,
                                const ::torch::Tensor& x, nn::OperandStore<Scalar>& store,
                                const char* where, const char* what) {
  const Index rows = x.dim() > 0 ? x.size(0) : 1;
  const Index cols = rows > 0 ? x.numel() / rows : 0;
  const auto view = const_matrix<Scalar>(x, rows, cols);
  if (!policy.quantizes_forward()) {
    fqt::nn::detail::check_finite(view, where, what);
    return x;
  }
  // The quantizer's range pass rejects NaN/Inf (std::domain_error, named below).
  fqt::nn::detail::naming_argument(where, what,
                                   [&] { store.quantize(spec, view, Philox(), false); });
  return tensor_over(store, x.sizes());
}

/// \brief The output gradient g (contiguous, N × cols) as the two backward products take it:
/// Q_b1(g) and Q_b2(g) (per `channels` output channels) as tensors over the workspace in Mode::FQT,
/// g itself otherwise; checked for NaN/Inf.
template <class Scalar>
std::pair<::torch::Tensor, ::torch::Tensor> gradient_operands(
    const nn::QuantPolicy& policy, const ::torch::Tensor& g, Index rows, Index cols, Index channels,
    const nn::GradientStreams& streams, bool want_input, bool want_weight, Workspace<Scalar>& ws,
    const char* where) {
  const auto view = const_matrix<Scalar>(g, rows, cols);
  nn::gradient_operands<Scalar>(policy, view, streams, channels, want_input, want_weight,
                                ws.grad_for_input, ws.grad_for_weight, where);
  const bool input = want_input && policy.quantizes_grad_input();
  const bool weight = want_weight && policy.quantizes_grad_weight();
  return {input ? tensor_over(ws.grad_for_input, g.sizes()) : g,
          weight ? tensor_over(ws.grad_for_weight, g.sizes()) : g};
}

/// \brief The part of a layer pass's autograd node that linear and conv2d share: the pass's
/// workspace (returned to the layer's pool when the node releases its variables), its policy,
/// streams and engine, and the operands the Torch engine's backward products need.
template <class Scalar>
struct PassNode : ::torch::autograd::Node {
  WorkspaceLease<Scalar> ws;
  nn::QuantPolicy policy;
  nn::GradientStreams streams;
  Engine engine = Engine::Torch;
  ::torch::Tensor input_operand, weight_operand;  // Torch engine: X̂ and Ŵ (X, W in Exact mode)
  bool has_bias = false;

  /// Throws std::invalid_argument naming `where` when the graph was already released.
  void check_alive(const char* where) const {
    check(ws != nullptr, where,
          "the graph of this pass was already freed; use retain_graph to call backward twice");
  }
  void release_variables() override {
    ws.reset();
    input_operand.reset();
    weight_operand.reset();
  }
};

/// \brief Fills the shared part of `node` for one pass of `state`'s layer (taking the next
/// streams) and makes it y's grad_fn, with edges to input, weight and bias.
template <class Scalar, class Node>
void record_pass(const std::shared_ptr<Node>& node, WorkspaceLease<Scalar> ws, LayerState& state,
                 ::torch::Tensor x_operand, ::torch::Tensor w_operand, const ::torch::Tensor& input,
                 const ::torch::Tensor& weight, const ::torch::Tensor& bias, ::torch::Tensor& y) {
  node->ws = std::move(ws);
  node->policy = state.quantization().policy;
  node->streams = state.next_streams();
  node->engine = state.engine();
  node->input_operand = std::move(x_operand);
  node->weight_operand = std::move(w_operand);
  node->has_bias = bias.defined();
  node->set_next_edges(::torch::autograd::collect_next_edges(input, weight, bias));
  ::torch::autograd::set_history(y, node);
}

/// \brief Module::clone for an adapter layer: the same options and quantization, the same layer
/// id and call counter, deep copies of weight and bias.
template <class Impl, class Options>
std::shared_ptr<::torch::nn::Module> clone_layer(const Impl& self, const Options& options,
                                                 LayerState& state,
                                                 const c10::optional<::torch::Device>& device,
                                                 const char* where) {
  check(!device || device->is_cpu(), where, "fqt's adapter runs on the CPU");
  Quantization q = state.quantization();
  q.layer = state.layer();
  auto copy = std::make_shared<Impl>(options, q);
  ::torch::NoGradGuard no_grad;
  copy->weight.copy_(self.weight);
  if (self.bias.defined()) copy->bias.copy_(self.bias);
  copy->state().stream().copy_(state.stream());
  return copy;
}

/// \brief f<float>() or f<double>() by the dtype of t.
template <class F>
decltype(auto) dispatch(const ::torch::Tensor& t, F&& f) {
  if (t.scalar_type() == ::torch::kDouble) return f(double{});
  return f(float{});
}

}  // namespace detail
}  // namespace torch
}  // namespace fqt
