#pragma once
/// \file
/// \brief The runs of the comparison of the paper (digest §4.2): Exact, QAT, and FQT with PTQ, PSQ
/// and BHQ gradient quantizers at several bit widths, each on the paper's Free grid and on fqt's
/// zero-aligned grid — same seed, data order, initial weights and schedule for every run.
///
/// For each run: the final test accuracy, the time per epoch, and the gradient variance
/// decomposition of nn/profile (Theorem 2) measured twice — at initialisation (the same
/// weights for every run, so it compares the quantizers alone) and at the end of training (the
/// run's own weights) — as the ratio of the quantization variance to the QAT sampling variance,
/// summed over the parameter tensors. FQT trains like QAT while that ratio is small.
///
/// As in the paper's released recipes (digest §1.2, §6.11), "b bits" is the grad-input path; the
/// grad-weight path stays at 8 bits, PTQ in PTQ runs and per-column in PSQ/BHQ runs, and the
/// forward pass quantizes activations and weights to 8 bits.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/quantizers.hpp"
#include "fqt/core/parallel.hpp"
#include "trainer/train.hpp"

namespace fqt_train {

/// \brief One configuration of the comparison.
struct RunSpec {
  std::string name;        ///< e.g. "exact", "qat", "ptq-4-free", "bhq-4-paper-int8"
  nn::QuantPolicy policy;  ///< what the run trains with
  int weight_bits = 32;    ///< 32: fp32 master weights; 16, 8: codes only (TrainOptions)
  int momentum_bits = 32;  ///< 32: fp32 momentum; 16, 8: codes
  /// A row of weights without a master copy (or their reference, when the grid lacks it): not
  /// part of the grid's series (pivot, plots)
  bool storage_row = false;
  /// The master-weight run the rows of weights without a master copy are read against
  bool storage_reference = false;
};

/// \brief Options of the comparison.
struct CompareOptions {
  TrainOptions train;  ///< shared by every run (train.policy supplies the forward and grad-weight
                       ///< bits; its mode and quantizers are set per run)
  std::vector<int> bits = {8, 5, 4, 3, 2};  ///< grad-input bit widths of the FQT runs
  /// the (grad-input quantizer, gradient grid) lines, each run at every bit width
  std::vector<fqt_examples::QuantizerGrid> series = fqt_examples::default_series();
  bool baselines = true;  ///< include the Exact and QAT runs
  /// Rows of FQT without master weights: the configuration `storage_series` at `storage_bits`
  /// grad-input bits, once per width here (16 or 8: weights and momentum stored as codes of that
  /// width), beside the same configuration with train.weight_bits (fp32 master weights by
  /// default; added when the grid above lacks it). Empty: no such rows.
  std::vector<int> storage_weight_bits = {16, 8};
  fqt_examples::QuantizerGrid storage_series = {fqt::QuantizerKind::BlockHouseholder,
                                                fqt::Grid::Paper};
  int storage_bits = 4;      ///< grad-input bits of the weight-storage rows
  VarianceOptions variance;  ///< K and M of the variance profile (batch size and seed: train's)
  int workers = 2;           ///< runs trained at once, each on one thread

  /// \brief Throws std::invalid_argument naming the problem unless the options are usable.
  void validate() const {
    constexpr const char* kWhere = "fqt_train::CompareOptions";
    train.validate();
    for (const int b : bits)
      fqt::check(b >= 1 && b <= 8, kWhere, "bits must be in [1, 8], got ", b);
    for (const auto& [q, grid] : series) {
      fqt::check(fqt::can_feed(q, fqt::Contraction::Columns), kWhere, "quantizer '",
                 fqt_examples::kind_name(q), "' is no grad-input quantizer (expected ",
                 fqt::quantizer_kind_names(fqt::Contraction::Columns), ")");
      fqt::check(fqt::is_grid(grid), kWhere, "grid ", static_cast<long long>(grid), " is no grid");
    }
    for (const int b : storage_weight_bits) {
      fqt::check(b == 16 || b == 8, kWhere, "weight storage bits must be 16 or 8, got ", b);
    }
    fqt::check(storage_bits >= 1 && storage_bits <= 8, kWhere,
               "weight storage rows: grad-input bits must be in [1, 8], got ", storage_bits);
    fqt::check(fqt::can_feed(storage_series.first, fqt::Contraction::Columns), kWhere,
               "weight storage rows: quantizer '", fqt_examples::kind_name(storage_series.first),
               "' is no grad-input quantizer");
    fqt::check(baselines || (!bits.empty() && !series.empty()), kWhere,
               "nothing to compare: no baselines and no FQT configuration");
    fqt::check(workers >= 1, kWhere, "workers must be >= 1, got ", workers);
    fqt::check(variance.fqt_passes >= 2, kWhere, "profile passes must be >= 2, got ",
               variance.fqt_passes);
  }
};

namespace detail {

/// \brief The FQT run of quantizer `q` on `grid` at `bits` grad-input bits, with the options'
/// weight storage.
inline RunSpec fqt_run(const CompareOptions& options, fqt::QuantizerKind q, fqt::Grid grid,
                       int bits) {
  const nn::QuantPolicy& base = options.train.policy;
  RunSpec r;
  r.policy = base;
  r.policy.mode = nn::Mode::FQT;
  r.policy.grad_input.kind = q;
  r.policy.grad_input.bits = bits;
  r.policy.grad_weight.kind = fqt_examples::paired_grad_weight(q, base.product_backend());
  fqt_examples::set_gradient_grid(r.policy, grid);
  r.name = std::string(fqt_examples::kind_name(q)) + "-" + std::to_string(bits) + "-" +
           fqt_examples::grid_name(grid);
  r.weight_bits = options.train.weight_bits;
  r.momentum_bits = options.train.momentum_bits;
  return r;
}

}  // namespace detail

/// \brief The name of the master-weight run the weight-storage rows are compared with.
inline std::string storage_reference_name(const CompareOptions& options) {
  return detail::fqt_run(options, options.storage_series.first, options.storage_series.second,
                         options.storage_bits)
      .name;
}

/// \brief The runs of the comparison, in table order: Exact, QAT, then for each (quantizer, grid)
/// of the series and each bit width (as listed) an FQT run, then the weight-storage rows (their
/// reference first when the grid lacks it).
inline std::vector<RunSpec> compare_runs(const CompareOptions& options) {
  std::vector<RunSpec> runs;
  const nn::QuantPolicy& base = options.train.policy;
  if (options.baselines) {
    for (const nn::Mode mode : {nn::Mode::Exact, nn::Mode::QAT}) {
      RunSpec r;
      r.name = nn::to_string(mode);
      r.policy = base;
      r.policy.mode = mode;
      r.weight_bits = options.train.weight_bits;
      r.momentum_bits = options.train.momentum_bits;
      runs.push_back(r);
    }
  }
  for (const auto& [q, grid] : options.series) {
    for (const int bits : options.bits) runs.push_back(detail::fqt_run(options, q, grid, bits));
  }
  if (options.storage_weight_bits.empty()) return runs;
  const auto [q, grid] = options.storage_series;
  RunSpec reference = detail::fqt_run(options, q, grid, options.storage_bits);
  reference.storage_reference = true;
  auto present = std::find_if(runs.begin(), runs.end(),
                              [&](const RunSpec& r) { return r.name == reference.name; });
  if (present == runs.end()) {
    reference.storage_row = true;
    runs.push_back(reference);
  } else {
    present->storage_reference = true;
  }
  for (const int bits : options.storage_weight_bits) {
    RunSpec r = reference;
    r.storage_row = true;
    r.storage_reference = false;
    r.weight_bits = r.momentum_bits = bits;
    r.name += bits == 16 ? "-int16" : "-int8";
    runs.push_back(r);
  }
  return runs;
}

/// \brief The outcome of one run of the comparison.
struct RunResult {
  RunSpec spec;            ///< the configuration
  TrainResult train;       ///< accuracy, loss, time per epoch
  VarianceReport initial;  ///< variance at the (shared) initial weights
  VarianceReport final;    ///< variance at the end of training
  double seconds = 0;      ///< wall time of the whole run (training, evaluation, profiles)
};

/// \brief Trains and profiles one run (see the file comment).
inline RunResult run_one(const Architecture& architecture, const RunSpec& spec,
                         const CompareOptions& options, const Dataset& train_set,
                         const Dataset& test, Progress& progress) {
  const auto start = std::chrono::steady_clock::now();
  RunResult result;
  result.spec = spec;
  Model model(architecture, seed_stream(options.train.seed, Stream::Init));
  VarianceOptions variance = options.variance;
  variance.batch_size = options.train.batch_size;
  variance.seed = options.train.seed;
  result.initial = measure_gradient_variance(model, train_set, spec.policy, variance);
  TrainOptions train_options = options.train;
  train_options.policy = spec.policy;
  train_options.weight_bits = spec.weight_bits;
  train_options.momentum_bits = spec.momentum_bits;
  result.train = train(model, train_set, test, train_options, progress);
  if (!result.train.diverged) {
    result.final = measure_gradient_variance(model, train_set, spec.policy, variance);
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

namespace detail {

/// \brief The progress style of concurrent runs: Auto resolved against `log`, and one line per
/// epoch when several runs share it (one '\r' bar cannot show two runs).
inline ProgressStyle runs_progress_style(ProgressStyle style, std::FILE* log, int workers) {
  if (style == ProgressStyle::Auto) {
    style = is_terminal(log) ? ProgressStyle::Bar : ProgressStyle::Lines;
  }
  if (workers > 1 && style != ProgressStyle::None) style = ProgressStyle::Epochs;
  return style;
}

/// \brief The runs of a comparison as a queue that worker threads take runs from; the first failure
/// stops every worker at its next run and is rethrown by run().
class RunQueue {
 public:
  RunQueue(const Architecture& architecture, const CompareOptions& options,
           const std::vector<RunSpec>& runs, const Dataset& train_set, const Dataset& test,
           ProgressStyle style, std::FILE* log)
      : architecture_(architecture),
        options_(options),
        runs_(runs),
        train_set_(train_set),
        test_(test),
        style_(style),
        log_(log),
        total_(static_cast<int>(runs.size())),
        width_(static_cast<int>(std::to_string(total_).size())),
        results_(runs.size()) {}

  /// \brief Trains every run with `workers` threads (the calling thread when 1) and returns the
  /// results in the order of the runs.
  std::vector<RunResult> run(int workers) {
    if (workers <= 1) {
      const int caller_threads = fqt::num_threads();
      work();
      fqt::set_num_threads(caller_threads);
    } else {
      std::vector<std::thread> threads;
      for (int w = 0; w < workers; ++w) threads.emplace_back([this] { work(); });
      for (auto& t : threads) t.join();
    }
    if (failure_) std::rethrow_exception(failure_);
    return std::move(results_);
  }

 private:
  // One worker: single-threaded runs until the queue is empty or a run failed.
  void work() {
    fqt::set_num_threads(1);
    for (int i = next_++; i < total_; i = next_++) {
      {
        std::lock_guard<std::mutex> guard(lock_);
        if (failure_) return;
      }
      const auto index = static_cast<std::size_t>(i);
      char prefix[96];
      std::snprintf(prefix, sizeof(prefix), "[%*d/%d %s] ", width_, i + 1, total_,
                    runs_[index].name.c_str());
      Progress progress(style_, log_, prefix, &lock_);
      try {
        RunResult r = run_one(architecture_, runs_[index], options_, train_set_, test_, progress);
        std::lock_guard<std::mutex> guard(lock_);
        finish(prefix, r);
        results_[index] = std::move(r);
      } catch (...) {
        std::lock_guard<std::mutex> guard(lock_);
        if (!failure_) failure_ = std::current_exception();
        return;
      }
    }
  }

  // Counts a finished run and logs it with the overall ETA; the caller holds lock_.
  void finish(const char* prefix, const RunResult& r) {
    ++finished_;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double eta = elapsed / finished_ * (total_ - finished_);
    if (style_ == ProgressStyle::None) return;
    std::fprintf(log_,
                 "%sdone in %.1f s: test acc %s, variance ratio %.3g (at init %.3g); "
                 "%d/%d runs finished, elapsed %s, ETA %s\n",
                 prefix, r.seconds,
                 r.train.final_test_accuracy >= 0
                     ? detail::percent(r.train.final_test_accuracy).c_str()
                     : "n/a",
                 r.final.ratio(), r.initial.ratio(), finished_, total_,
                 format_duration(elapsed).c_str(), format_duration(eta).c_str());
    std::fflush(log_);
  }

  const Architecture& architecture_;
  const CompareOptions& options_;
  const std::vector<RunSpec>& runs_;
  const Dataset& train_set_;
  const Dataset& test_;
  const ProgressStyle style_;
  std::FILE* const log_;
  const int total_;
  const int width_;
  std::vector<RunResult> results_;
  std::mutex lock_;
  std::atomic<int> next_{0};
  int finished_ = 0;
  std::exception_ptr failure_;
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace detail

/// \brief Runs the comparison: options.workers runs at a time, each single-threaded (fqt's
/// results do not depend on the thread count, so this changes only the wall time). Progress goes
/// to `log`: a line per epoch of each run and one per finished run with the overall ETA.
/// \return one result per compare_runs(options) entry, in that order
inline std::vector<RunResult> run_compare(const Architecture& architecture,
                                          const CompareOptions& options, const Dataset& train_set,
                                          const Dataset& test,
                                          ProgressStyle style = ProgressStyle::Auto,
                                          std::FILE* log = stderr) {
  options.validate();
  const auto runs = compare_runs(options);
  const int workers = std::min(options.workers, static_cast<int>(runs.size()));
  detail::RunQueue queue(architecture, options, runs, train_set, test,
                         detail::runs_progress_style(style, log, workers), log);
  return queue.run(workers);
}

}  // namespace fqt_train
