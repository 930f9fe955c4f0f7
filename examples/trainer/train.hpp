#pragma once
/// \file
/// \brief The training loop (SGD with momentum, cosine or step learning-rate schedule with
/// linear warm-up), evaluation, and the end-of-training gradient variance profile.
///
/// Randomness: everything is drawn from Philox streams of the seed — the initial weights
/// (seed_stream(seed, Stream::Init)), the order of each epoch (Stream::Order), the gradient
/// quantization noise (Stream::Noise; layer l at step t uses substream(t, l, role)) and the
/// variance profile (Stream::Profile). A run is a pure function of its options: the same seed
/// gives bit-identical results for any number of threads.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn.hpp"
#include "fqt/nn/profile.hpp"
#include "trainer/data.hpp"
#include "trainer/model.hpp"
#include "trainer/progress.hpp"

namespace fqt_train {

/// \brief Learning-rate schedule over the steps of a run.
enum class Schedule {
  Cosine,  ///< cosine annealing to 0 after the warm-up (nn::CosineSchedule)
  Step     ///< ×gamma at each milestone epoch (nn::StepSchedule)
};

/// \brief Parses "cosine" or "step"; throws std::invalid_argument otherwise.
inline Schedule parse_schedule(const std::string& name) {
  if (name == "cosine") return Schedule::Cosine;
  if (name == "step") return Schedule::Step;
  fqt::check(false, "fqt_train::parse_schedule", "unknown schedule '", name,
             "' (expected cosine or step)");
  return Schedule::Cosine;
}

/// \brief The independent random streams of a run, all derived from its seed.
enum class Stream : std::uint64_t {
  Init = 1,     ///< initial weights
  Order = 2,    ///< the shuffle of each epoch
  Noise = 3,    ///< gradient quantization noise
  Profile = 4,  ///< batches and noise of the variance profile
  Rounding = 5  ///< stochastic rounding of coded weights (TrainOptions::weight_bits < 32)
};

/// \brief The stream `which` of a run seeded with `seed`.
inline fqt::Philox seed_stream(std::uint64_t seed, Stream which) {
  return fqt::Philox(seed).substream(static_cast<std::uint64_t>(which));
}

/// \brief Everything a training run needs besides the model and the data.
struct TrainOptions {
  nn::QuantPolicy policy;       ///< mode, forward bits, gradient quantizers, grid
  int epochs = 1;               ///< passes over the training set
  Index batch_size = 128;       ///< samples per step (the last batch of an epoch may be smaller)
  double learning_rate = 0.05;  ///< peak learning rate
  Schedule schedule = Schedule::Cosine;  ///< learning-rate schedule
  double warmup_epochs = 0.0;            ///< linear warm-up, in epochs (may be fractional)
  std::vector<double> milestones;        ///< Step: epochs (may be fractional) at which lr ×= gamma
  double gamma = 0.1;                    ///< Step: decay factor
  double momentum = 0.9;                 ///< SGD momentum
  double weight_decay = 1e-4;            ///< L2 penalty on weights (not on biases)
  std::uint64_t seed = 1;                ///< root of every random stream of the run
  Index eval_batch_size = 1000;          ///< samples per evaluation forward pass
  bool evaluate_every_epoch = true;      ///< test accuracy after each epoch (else only at the end)
  /// What the convs keep for their backward passes: the whole batch's im2col columns, or only X̂
  nn::ConvColumns conv_columns = nn::ConvColumns::Keep;
  /// 32: fp32 master weights (nn::SGD); 16 or 8: the weights stored as codes only, updated by
  /// stochastic rounding (nn::QuantizedSGD)
  int weight_bits = 32;
  /// 32: fp32 momentum; 16 or 8: as codes (with coded weights only)
  int momentum_bits = 32;
  /// Coded weights (weight_bits 16 or 8): the codes to start from instead of rounding the
  /// model's values, e.g. load_model's result or a previous TrainResult::stored_weights. Null,
  /// or one entry per model parameter: codes of the run's width and step granularity for a coded
  /// parameter, std::monostate to round its value as usual (and for parameters kept in float).
  /// The model's values should be the codes' values already (load_model writes them). Only the
  /// weights resume exactly: the momentum restarts at zero, the schedule and the rounding noise
  /// at step 0. Shared, so that copying the options copies no codes.
  std::shared_ptr<const std::vector<nn::QuantizedSGD<float>::Stored>> initial_codes;

  /// \brief Throws std::invalid_argument naming the option unless the options are usable.
  void validate() const {
    constexpr const char* kWhere = "fqt_train::TrainOptions";
    policy.validate(kWhere);
    fqt::check(epochs >= 1, kWhere, "epochs must be >= 1, got ", epochs);
    fqt::check(batch_size >= 1, kWhere, "batch size must be >= 1, got ", batch_size);
    fqt::check(std::isfinite(learning_rate) && learning_rate > 0, kWhere,
               "learning rate must be > 0, got ", learning_rate);
    fqt::check(warmup_epochs >= 0 && warmup_epochs < epochs, kWhere,
               "warm-up must be in [0, epochs) = [0, ", epochs, "), got ", warmup_epochs);
    fqt::check(momentum >= 0 && momentum < 1, kWhere, "momentum must be in [0, 1), got ", momentum);
    fqt::check(weight_decay >= 0, kWhere, "weight decay must be >= 0, got ", weight_decay);
    fqt::check(gamma > 0, kWhere, "gamma must be > 0, got ", gamma);
    fqt::check(weight_bits == 32 || weight_bits == 16 || weight_bits == 8, kWhere,
               "weight bits must be 32 (fp32), 16 or 8, got ", weight_bits);
    fqt::check(momentum_bits == 32 || momentum_bits == 16 || momentum_bits == 8, kWhere,
               "momentum bits must be 32 (fp32), 16 or 8, got ", momentum_bits);
    fqt::check(momentum_bits == 32 || weight_bits != 32, kWhere,
               "coded momentum needs coded weights (weight bits 16 or 8), got momentum bits ",
               momentum_bits, " with fp32 weights");
    for (const double m : milestones) {
      fqt::check(m > 0, kWhere, "milestones must be > 0 epochs, got ", m);
    }
    fqt::check(eval_batch_size >= 1, kWhere, "evaluation batch size must be >= 1, got ",
               eval_batch_size);
  }
};

/// \brief What one epoch did.
struct EpochStats {
  int epoch = 0;                 ///< 1-based
  double train_loss = 0;         ///< mean loss over the epoch's batches (weighted by size)
  double train_accuracy = 0;     ///< fraction of the epoch's samples classified right (in training)
  double test_accuracy = -1;     ///< after the epoch; −1 when not evaluated
  double seconds = 0;            ///< wall time of the epoch's training steps (no evaluation)
  double images_per_second = 0;  ///< training throughput
};

/// \brief The outcome of a run.
struct TrainResult {
  std::vector<EpochStats> epochs;   ///< one per completed epoch
  bool diverged = false;            ///< training stopped on a non-finite value
  std::string divergence;           ///< where and why, when diverged
  double final_test_accuracy = -1;  ///< after the last epoch; −1 if not evaluable
  double final_train_loss = std::numeric_limits<double>::quiet_NaN();  ///< of the last epoch
  /// The bytes the layers' caches hold between two training steps (Model::cache_bytes after the
  /// first step of a full batch); 0 when no full batch ran
  std::size_t cache_bytes = 0;
  /// The optimizer's weights, state and workspaces at the end
  nn::OptimizerMemory optimizer_memory;
  /// Coded weights: the exact E‖Q(w′) − w′‖² of the weights' stochastic rounding per step,
  /// divided by that step's η² — the gradient variance that would move the weights as much —
  /// averaged over the last epoch's steps (0 for fp32 weights)
  double rounding_as_gradient_variance = 0;
  /// The same, parameter by parameter (name, value), in the model's parameter order (empty for
  /// fp32 weights)
  std::vector<std::pair<std::string, double>> rounding_by_parameter;
  /// Coded weights: nn::QuantizedSGD::stored_weight of every parameter at the end (codes for the
  /// coded ones, std::monostate for those kept in float), e.g. for save_model; empty for fp32
  /// weights
  std::vector<nn::QuantizedSGD<float>::Stored> stored_weights;

  /// \brief Mean wall time of the completed epochs' training steps.
  double seconds_per_epoch() const {
    if (epochs.empty()) return 0;
    double total = 0;
    for (const auto& e : epochs) total += e.seconds;
    return total / static_cast<double>(epochs.size());
  }
};

/// \brief Fraction of `data` that `model` classifies right with the forward pass of `policy`
/// (Exact: full precision; QAT/FQT: the 8-bit forward quantizer Q_f).
inline double evaluate(Model& model, const Dataset& data, const nn::QuantPolicy& policy,
                       Index batch_size = 1000) {
  fqt::check(data.size() > 0, "fqt_train::evaluate", "the data set is empty");
  fqt::check(batch_size >= 1, "fqt_train::evaluate", "batch size must be >= 1, got ", batch_size);
  Index correct = 0;
  for (Index first = 0; first < data.size(); first += batch_size) {
    const Index count = std::min(batch_size, data.size() - first);
    const Matrix logits = model.logits(data.images.middleRows(first, count), policy);
    const std::vector<int> labels(data.labels.begin() + first, data.labels.begin() + first + count);
    correct += nn::count_correct(logits, labels);
  }
  return static_cast<double>(correct) / static_cast<double>(data.size());
}

/// \brief The predicted class of every sample of `data` (argmax of the logits).
inline std::vector<int> predict(Model& model, const Dataset& data, const nn::QuantPolicy& policy,
                                Index batch_size = 1000) {
  std::vector<int> classes;
  classes.reserve(static_cast<std::size_t>(data.size()));
  for (Index first = 0; first < data.size(); first += batch_size) {
    const Index count = std::min(batch_size, data.size() - first);
    const Matrix logits = model.logits(data.images.middleRows(first, count), policy);
    for (Index i = 0; i < count; ++i) {
      Index arg;
      logits.row(i).maxCoeff(&arg);
      classes.push_back(static_cast<int>(arg));
    }
  }
  return classes;
}

namespace detail {

/// \brief The learning rate of each step, from the options and the run's length.
class LearningRate {
 public:
  LearningRate(const TrainOptions& o, std::uint64_t steps_per_epoch)
      : cosine_(o.learning_rate, std::max<std::uint64_t>(2, steps_per_epoch * o.epochs),
                std::min(warmup(o, steps_per_epoch),
                         std::max<std::uint64_t>(2, steps_per_epoch * o.epochs) - 1)),
        step_(o.learning_rate, milestones(o, steps_per_epoch), o.gamma, warmup(o, steps_per_epoch)),
        schedule_(o.schedule) {}
  double operator()(std::uint64_t step) const {
    return schedule_ == Schedule::Cosine ? cosine_(step) : step_(step);
  }

 private:
  static std::uint64_t warmup(const TrainOptions& o, std::uint64_t steps_per_epoch) {
    return static_cast<std::uint64_t>(std::llround(o.warmup_epochs * steps_per_epoch));
  }
  static std::vector<std::uint64_t> milestones(const TrainOptions& o,
                                               std::uint64_t steps_per_epoch) {
    std::vector<std::uint64_t> m;
    for (const double e : o.milestones) {
      m.push_back(static_cast<std::uint64_t>(std::llround(e * steps_per_epoch)));
    }
    return m;
  }
  nn::CosineSchedule cosine_;
  nn::StepSchedule step_;
  Schedule schedule_;
};

inline std::string percent(double fraction) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(2);
  s << 100 * fraction << "%";
  return s.str();
}

/// \brief SGD on fp32 master weights, or on weights stored as codes (TrainOptions::weight_bits).
class Optimizer {
 public:
  Optimizer(std::vector<nn::Parameter<float>> parameters, const nn::SgdOptions& sgd,
            const TrainOptions& o) {
    if (o.weight_bits == 32) {
      if (o.initial_codes) check_initial_codes(parameters, *o.initial_codes, nullptr);
      fp32_ = std::make_unique<nn::SGD<float>>(std::move(parameters), sgd);
    } else {
      nn::WeightStorageOptions storage;
      storage.weight_bits = o.weight_bits;
      storage.momentum_bits = o.momentum_bits == 32 ? 0 : o.momentum_bits;
      storage.rng = seed_stream(o.seed, Stream::Rounding);
      // A backend that multiplies codes takes one weight step per tensor (the grad-input
      // product contracts over the weight's rows); the simulated one keeps a step per channel.
      storage.per_row = !o.policy.product_backend().multiplies_codes();
      // 8-bit codes that the 8-bit forward pass multiplies need no float copy while training
      // (the optimizer writes the values back when the run ends).
      storage.keep_views =
          !(o.weight_bits == 8 && o.policy.quantizes_forward() && o.policy.weight_bits == 8);
      // Every entry is checked before the optimizer rounds (and so changes) the model's values.
      if (o.initial_codes) check_initial_codes(parameters, *o.initial_codes, &storage);
      coded_ = std::make_unique<nn::QuantizedSGD<float>>(std::move(parameters), sgd, storage);
      if (o.initial_codes) {
        const auto& codes = *o.initial_codes;
        for (std::size_t i = 0; i < codes.size(); ++i) {
          std::visit(
              [&](const auto& t) {
                if constexpr (!std::is_same_v<std::decay_t<decltype(t)>, std::monostate>) {
                  coded_->load_weight(i, t);
                }
              },
              codes[i]);
        }
      }
    }
  }
  void zero_grad() { fp32_ ? fp32_->zero_grad() : coded_->zero_grad(); }
  void set_learning_rate(double lr) {
    fp32_ ? fp32_->set_learning_rate(lr) : coded_->set_learning_rate(lr);
  }
  void step() { fp32_ ? fp32_->step() : coded_->step(); }
  /// \brief The last step's rounding error of the weights (0 for fp32 weights).
  double last_rounding() const { return coded_ ? coded_->last_rounding().weights : 0.0; }
  /// \brief The last step's rounding error of each parameter's weights (empty for fp32 weights).
  const std::vector<nn::RoundingVariance>* last_rounding_by_parameter() const {
    return coded_ ? &coded_->last_rounding_by_parameter() : nullptr;
  }
  nn::OptimizerMemory memory() const { return fp32_ ? fp32_->memory() : coded_->memory(); }
  /// \brief The stored weight of every parameter (empty for fp32 weights).
  std::vector<nn::QuantizedSGD<float>::Stored> stored_weights() const {
    std::vector<nn::QuantizedSGD<float>::Stored> weights;
    if (coded_) {
      for (std::size_t i = 0; i < coded_->parameters().size(); ++i) {
        weights.push_back(coded_->stored_weight(i));
      }
    }
    return weights;
  }

 private:
  // Throws std::invalid_argument naming the option and the parameter unless `codes` has one
  // entry per parameter and each codes entry fits `storage` (null: fp32 weights, which take no
  // codes): a coded parameter, the same width, shape and step granularity.
  static void check_initial_codes(const std::vector<nn::Parameter<float>>& parameters,
                                  const std::vector<nn::QuantizedSGD<float>::Stored>& codes,
                                  const nn::WeightStorageOptions* storage) {
    constexpr const char* kWhere = "fqt_train::TrainOptions::initial_codes";
    fqt::check(codes.size() == parameters.size(), kWhere, "has ", codes.size(),
               " entries, the model ", parameters.size(), " parameters");
    for (std::size_t i = 0; i < codes.size(); ++i) {
      std::visit(
          [&](const auto& t) {
            using T = std::decay_t<decltype(t)>;
            if constexpr (!std::is_same_v<T, std::monostate>) {
              const auto& p = parameters[i];
              fqt::check(storage != nullptr, kWhere, "parameter '", p.name, "' has ", T::kBits,
                         "-bit codes but the run keeps fp32 weights: give weight bits ", T::kBits,
                         " to resume from the codes");
              fqt::check(T::kBits == storage->weight_bits, kWhere, "parameter '", p.name, "' has ",
                         T::kBits, "-bit codes but the run stores its weights in ",
                         storage->weight_bits, " bits: give weight bits ", T::kBits);
              fqt::check(p.weight_decay, kWhere, "parameter '", p.name,
                         "' has codes but is kept in float (only weights are stored as codes)");
              const auto& v = p.variable.value();
              fqt::check(t.rows() == v.rows() && t.cols() == v.cols(), kWhere, "parameter '",
                         p.name, "' is ", v.rows(), " x ", v.cols(), ", its codes ", t.rows(),
                         " x ", t.cols());
              fqt::check(t.per_row() == storage->per_row, kWhere, "parameter '", p.name,
                         "' has codes with ", t.per_row() ? "a step per row" : "one step",
                         " but the run's backend stores ",
                         storage->per_row ? "a step per row (it does not multiply codes)"
                                          : "one step per tensor (it multiplies codes)",
                         ": resume on the backend the codes were trained on");
            }
          },
          codes[i]);
    }
  }

  std::unique_ptr<nn::SGD<float>> fp32_;
  std::unique_ptr<nn::QuantizedSGD<float>> coded_;
};

/// \brief The SGD options of a run.
inline nn::SgdOptions sgd_options(const TrainOptions& o) {
  nn::SgdOptions sgd;
  sgd.learning_rate = o.learning_rate;
  sgd.momentum = o.momentum;
  sgd.weight_decay = o.weight_decay;
  return sgd;
}

/// \brief The running sums of an epoch's training steps.
struct EpochSums {
  double loss = 0;    ///< Σ batch loss × batch size
  Index correct = 0;  ///< samples classified right
};

/// \brief One training run of train(): the state its epochs share (optimiser, noise context, batch
/// buffers, the step counter).
class TrainingRun {
 public:
  /// \brief Sets up a run; the options must be valid and the training set non-empty.
  TrainingRun(Model& model, const Dataset& train_set, const Dataset& test,
              const TrainOptions& options, Progress& progress)
      : model_(model),
        train_set_(train_set),
        test_(test),
        options_(options),
        progress_(progress),
        n_(train_set.size()),
        batch_(std::min(options.batch_size, n_)),
        learning_rate_(options, static_cast<std::uint64_t>((n_ + batch_ - 1) / batch_)),
        sgd_(model.parameters(), sgd_options(options), options),
        order_rng_(seed_stream(options.seed, Stream::Order)) {
    context_.policy = options.policy;
    context_.rng = seed_stream(options.seed, Stream::Noise);
    context_.training = true;
    model.set_conv_columns(options.conv_columns);
  }

  /// \brief Trains every epoch, or until a non-finite value stops the run.
  TrainResult run() {
    TrainResult result;
    for (int epoch = 1; epoch <= options_.epochs; ++epoch) {
      std::ostringstream label;
      label << "epoch " << epoch << "/" << options_.epochs;
      progress_.begin_epoch(label.str(), n_);
      const auto order = epoch_order(n_, order_rng_, static_cast<std::uint64_t>(epoch - 1));
      const auto start = std::chrono::steady_clock::now();
      rounding_sum_ = 0;
      std::fill(rounding_by_parameter_.begin(), rounding_by_parameter_.end(), 0.0);
      rounding_steps_ = 0;
      EpochSums sums;
      try {
        sums = steps(order);
      } catch (const std::domain_error& e) {
        result.diverged = true;
        std::ostringstream what;
        what << "diverged in epoch " << epoch << " at step " << step_ << ": " << e.what();
        result.divergence = what.str();
        progress_.end_epoch(result.divergence);
        break;
      }
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      result.epochs.push_back(end_epoch(epoch, sums, seconds));
      result.final_train_loss = result.epochs.back().train_loss;
      result.rounding_as_gradient_variance =
          rounding_steps_ > 0 ? rounding_sum_ / double(rounding_steps_) : 0.0;
      result.rounding_by_parameter.clear();
      const auto names = model_.parameters();
      for (std::size_t i = 0; i < rounding_by_parameter_.size() && rounding_steps_ > 0; ++i) {
        result.rounding_by_parameter.emplace_back(
            names[i].name, rounding_by_parameter_[i] / double(rounding_steps_));
      }
    }
    result.final_test_accuracy = final_accuracy(result);
    result.cache_bytes = cache_bytes_;
    result.optimizer_memory = sgd_.memory();
    result.stored_weights = sgd_.stored_weights();
    return result;
  }

 private:
  // The SGD steps of one epoch, visiting the training set in `order`.
  EpochSums steps(const std::vector<Index>& order) {
    EpochSums sums;
    Index done = 0;
    for (Index first = 0; first < n_; first += batch_, ++step_) {
      const Index count = std::min(batch_, n_ - first);
      gather_batch(train_set_, order, first, count, images_, labels_);
      const double lr = learning_rate_(step_);
      sgd_.set_learning_rate(lr);
      sgd_.zero_grad();
      context_.step = step_;
      nn::Tape<float> tape;
      const nn::Variable<float> input(images_, model_.input_shape());
      const auto logits = model_.net().forward(tape, input, context_);
      const auto loss = nn::softmax_cross_entropy(tape, logits, labels_);
      sums.correct += nn::count_correct(logits.value(), labels_);
      tape.backward(loss);
      sgd_.step();
      if (cache_bytes_ == 0 && count == batch_) cache_bytes_ = model_.cache_bytes();
      if (lr > 0) {
        rounding_sum_ += sgd_.last_rounding() / (lr * lr);
        if (const auto* by_parameter = sgd_.last_rounding_by_parameter()) {
          rounding_by_parameter_.resize(by_parameter->size(), 0.0);
          for (std::size_t i = 0; i < by_parameter->size(); ++i)
            rounding_by_parameter_[i] += (*by_parameter)[i].weights / (lr * lr);
        }
        ++rounding_steps_;
      }
      sums.loss += static_cast<double>(loss.value()(0, 0)) * static_cast<double>(count);
      done += count;
      progress_.update(done, sums.loss / static_cast<double>(done),
                       static_cast<double>(sums.correct) / static_cast<double>(done));
    }
    return sums;
  }

  // The statistics of a finished epoch (with the test accuracy when it is evaluated), shown as
  // the epoch's summary.
  EpochStats end_epoch(int epoch, const EpochSums& sums, double seconds) {
    EpochStats stats;
    stats.epoch = epoch;
    stats.seconds = seconds;
    stats.train_loss = sums.loss / static_cast<double>(n_);
    stats.train_accuracy = static_cast<double>(sums.correct) / static_cast<double>(n_);
    stats.images_per_second = stats.seconds > 0 ? static_cast<double>(n_) / stats.seconds : 0;
    std::ostringstream summary;
    summary.precision(4);
    summary << "loss " << stats.train_loss << ", train acc " << percent(stats.train_accuracy);
    if (test_.size() > 0 && (options_.evaluate_every_epoch || epoch == options_.epochs)) {
      stats.test_accuracy = evaluate(model_, test_, options_.policy, options_.eval_batch_size);
      summary << ", test acc " << percent(stats.test_accuracy);
    }
    summary.precision(3);
    summary << " (" << stats.seconds << " s, " << static_cast<long long>(stats.images_per_second)
            << " img/s)";
    progress_.end_epoch(summary.str());
    return stats;
  }

  // The last epoch's test accuracy; after a divergence, that of the last finite weights (SGD
  // refuses non-finite gradients), or −1 when they are unusable too.
  double final_accuracy(const TrainResult& result) {
    if (!result.epochs.empty() && !result.diverged) return result.epochs.back().test_accuracy;
    if (result.diverged && test_.size() > 0) {
      try {
        return evaluate(model_, test_, options_.policy, options_.eval_batch_size);
      } catch (const std::domain_error&) {
        return -1;
      }
    }
    return -1;
  }

  Model& model_;
  const Dataset& train_set_;
  const Dataset& test_;
  const TrainOptions& options_;
  Progress& progress_;
  const Index n_;
  const Index batch_;
  const LearningRate learning_rate_;
  Optimizer sgd_;
  const fqt::Philox order_rng_;
  nn::Context context_;
  Matrix images_;
  std::vector<int> labels_;
  std::uint64_t step_ = 0;
  std::size_t cache_bytes_ = 0;
  double rounding_sum_ = 0;  // Σ over the epoch's steps of the weights' rounding error / η²
  std::vector<double> rounding_by_parameter_;  // the same, parameter by parameter
  Index rounding_steps_ = 0;
};

}  // namespace detail

/// \brief Trains `model` on `train` for options.epochs epochs of SGD and evaluates it on `test`
/// (after each epoch when options.evaluate_every_epoch, else after the last).
///
/// Each epoch visits the training set in the order epoch_order(N, seed_stream(seed, Order),
/// epoch); step t (counted over the whole run) draws its gradient noise from
/// seed_stream(seed, Noise) with Context::step = t. A non-finite loss, gradient or weight stops
/// the run: the result is marked diverged (no exception).
/// \param test may be empty (no evaluation)
inline TrainResult train(Model& model, const Dataset& train_set, const Dataset& test,
                         const TrainOptions& options, Progress& progress) {
  options.validate();
  fqt::check(train_set.size() > 0, "fqt_train::train", "the training set is empty");
  return detail::TrainingRun(model, train_set, test, options, progress).run();
}

/// \brief Knobs of measure_gradient_variance.
struct VarianceOptions {
  int fqt_passes = 8;          ///< K FQT backward passes on the profiled batch (≥ 2)
  int sampling_batches = 8;    ///< M further batches for the QAT sampling variance (≥ 2)
  Index batch_size = 128;      ///< samples per batch (the training batch size)
  std::uint64_t seed = 1;      ///< the run's seed (batches and noise from Stream::Profile)
  bool split_by_path = false;  ///< also split the quantization variance by path (3·K passes)
};

/// \brief The gradient variance of one parameter tensor.
struct TensorVariance {
  std::string name;         ///< e.g. "3.weight"
  double quantization = 0;  ///< Var[ĝ | batch]: the FQT quantization variance
  double sampling = 0;      ///< the QAT minibatch sampling variance
  double grad_input = std::numeric_limits<double>::quiet_NaN();   ///< Q_b1's share (split only)
  double grad_weight = std::numeric_limits<double>::quiet_NaN();  ///< Q_b2's share (split only)
};

/// \brief The paper's variance decomposition of a model's gradient (Theorem 2), summed over the
/// parameter tensors and per tensor.
struct VarianceReport {
  double quantization = 0;              ///< Σ over tensors of the quantization variance
  double sampling = 0;                  ///< Σ over tensors of the QAT sampling variance
  std::vector<TensorVariance> tensors;  ///< per parameter tensor, in model order
  int fqt_passes = 0;                   ///< K used
  int sampling_batches = 0;             ///< M used (0: no sampling variance)

  /// \brief quantization / sampling: the paper's criterion (FQT trains like QAT while it is
  /// small); NaN without a sampling variance.
  double ratio() const {
    return sampling > 0 ? quantization / sampling : std::numeric_limits<double>::quiet_NaN();
  }
};

/// \brief Measures the gradient variance of `model` under `policy` with nn::profile_gradients:
/// the quantization variance from K FQT passes on one batch, the sampling variance of the QAT
/// gradient over M other batches. Batches are drawn without replacement from `data` in the order
/// epoch_order(N, seed_stream(seed, Profile), 0): batch 0 is profiled, batches 1..M sample.
/// M is reduced when `data` has fewer than M + 1 batches (0 if fewer than 3). For Exact and QAT
/// policies the quantization variance is 0 and only two (identical) passes are run.
inline VarianceReport measure_gradient_variance(Model& model, const Dataset& data,
                                                const nn::QuantPolicy& policy,
                                                const VarianceOptions& options) {
  constexpr const char* kWhere = "fqt_train::measure_gradient_variance";
  fqt::check(options.fqt_passes >= 2, kWhere, "fqt_passes must be >= 2, got ", options.fqt_passes);
  fqt::check(options.sampling_batches >= 0, kWhere, "sampling_batches must be >= 0, got ",
             options.sampling_batches);
  fqt::check(options.batch_size >= 1, kWhere, "batch size must be >= 1, got ", options.batch_size);
  const Index batch = std::min(options.batch_size, data.size());
  fqt::check(batch >= 1, kWhere, "the data set is empty");
  const fqt::Philox rng = seed_stream(options.seed, Stream::Profile);
  const auto order = epoch_order(data.size(), rng, 0);
  const Index available = data.size() / batch;
  int sampling = static_cast<int>(std::min<Index>(options.sampling_batches, available - 1));
  if (sampling < 2) sampling = 0;

  auto make_batch = [&](Index k) {
    fqt::nn::Batch<float> b;
    b.shape = model.input_shape();
    gather_batch(data, order, k * batch, batch, b.inputs, b.labels);
    return b;
  };
  const auto profiled = make_batch(0);
  std::vector<fqt::nn::Batch<float>> sampling_set;
  for (int m = 0; m < sampling; ++m) sampling_set.push_back(make_batch(m + 1));

  fqt::nn::ProfileOptions profile_options;
  profile_options.fqt_passes = policy.quantizes_backward() ? options.fqt_passes : 2;
  profile_options.rng = rng.substream(1);
  profile_options.split_by_path = options.split_by_path && policy.quantizes_backward();
  const auto profile =
      fqt::nn::profile_gradients(model.net(), profiled, sampling_set, policy, profile_options);
  VarianceReport report;
  report.fqt_passes = profile.fqt_passes;
  report.sampling_batches = profile.sampling_batches;
  for (const auto& t : profile.tensors) {
    report.tensors.push_back({t.name, t.quantization_variance, t.sampling_variance,
                              t.grad_input_variance, t.grad_weight_variance});
  }
  report.quantization = profile.quantization_variance();
  report.sampling = profile.sampling_variance();
  return report;
}

}  // namespace fqt_train
