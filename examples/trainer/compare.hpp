#pragma once
/// \file
/// \brief The comparison of the paper (digest §4.2): Exact, QAT, and FQT with PTQ, PSQ and BHQ
/// gradient quantizers at several bit widths, each on the paper's Free grid and on fqt's
/// zero-aligned grid — same seed, data order, initial weights and schedule for every run.
///
/// For each run: the final test accuracy, the time per epoch, and the gradient variance
/// decomposition of stats/profile (Theorem 2) measured twice — at initialisation (the same
/// weights for every run, so it compares the quantizers alone) and at the end of training (the
/// run's own weights) — as the ratio of the quantization variance to the QAT sampling variance,
/// summed over the parameter tensors. FQT trains like QAT while that ratio is small.
///
/// As in the paper's released recipes (digest §1.2, §6.11), "b bits" is the grad-input path; the
/// grad-weight path stays at 8 bits, PTQ in PTQ runs and per-column in PSQ/BHQ runs, and the
/// forward pass quantizes activations and weights to 8 bits.

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <ostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/path.hpp"
#include "fqt/core/parallel.hpp"
#include "trainer/train.hpp"

namespace fqt_train {

/// \brief One configuration of the comparison.
struct RunSpec {
  std::string name;        ///< e.g. "exact", "qat", "ptq-4-free"
  nn::QuantPolicy policy;  ///< what the run trains with
};

/// \brief "free" or "zero", the names nn::parse_grid accepts.
inline const char* grid_name(fqt::Grid grid) { return grid == fqt::Grid::Free ? "free" : "zero"; }

/// \brief Options of the comparison.
struct CompareOptions {
  TrainOptions train;  ///< shared by every run (train.policy supplies the forward and grad-weight
                       ///< bits; its mode and quantizers are set per run)
  std::vector<int> bits = {8, 5, 4, 3, 2};  ///< grad-input bit widths of the FQT runs
  std::vector<nn::GradInputQuantizer> quantizers = {nn::GradInputQuantizer::PerTensor,
                                                    nn::GradInputQuantizer::PerSample,
                                                    nn::GradInputQuantizer::BlockHouseholder};
  std::vector<fqt::Grid> grids = {fqt::Grid::Free, fqt::Grid::ZeroAligned};  ///< gradient grids
  bool baselines = true;     ///< include the Exact and QAT runs
  VarianceOptions variance;  ///< K and M of the variance profile (batch size and seed: train's)
  int workers = 2;           ///< runs trained at once, each on one thread

  /// \brief Throws std::invalid_argument naming the problem unless the options are usable.
  void validate() const {
    constexpr const char* kWhere = "fqt_train::CompareOptions";
    train.validate();
    for (const int b : bits)
      fqt::check(b >= 1 && b <= 8, kWhere, "bits must be in [1, 8], got ", b);
    fqt::check(baselines || (!bits.empty() && !quantizers.empty() && !grids.empty()), kWhere,
               "nothing to compare: no baselines and no FQT configuration");
    fqt::check(workers >= 1, kWhere, "workers must be >= 1, got ", workers);
    fqt::check(variance.fqt_passes >= 2, kWhere, "profile passes must be >= 2, got ",
               variance.fqt_passes);
  }
};

/// \brief The runs of the comparison, in table order: Exact, QAT, then for each quantizer, grid
/// and bit width (as listed) an FQT run.
inline std::vector<RunSpec> compare_runs(const CompareOptions& options) {
  std::vector<RunSpec> runs;
  const nn::QuantPolicy& base = options.train.policy;
  if (options.baselines) {
    for (const nn::Mode mode : {nn::Mode::Exact, nn::Mode::QAT}) {
      RunSpec r;
      r.name = nn::to_string(mode);
      r.policy = base;
      r.policy.mode = mode;
      runs.push_back(r);
    }
  }
  for (const auto q : options.quantizers) {
    for (const auto grid : options.grids) {
      for (const int bits : options.bits) {
        RunSpec r;
        r.policy = base;
        r.policy.mode = nn::Mode::FQT;
        r.policy.grad_input_quantizer = q;
        r.policy.grad_input_bits = bits;
        r.policy.grad_weight_quantizer = q == nn::GradInputQuantizer::PerTensor
                                             ? nn::GradWeightQuantizer::PerTensor
                                             : nn::GradWeightQuantizer::PerColumn;
        r.policy.gradient_grid = grid;
        r.name = std::string(nn::to_string(q)) + "-" + std::to_string(bits) + "-" + grid_name(grid);
        runs.push_back(r);
      }
    }
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
  result.train = train(model, train_set, test, train_options, progress);
  if (!result.train.diverged) {
    result.final = measure_gradient_variance(model, train_set, spec.policy, variance);
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

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
  const int total = static_cast<int>(runs.size());
  const int workers = std::min(options.workers, total);
  if (style == ProgressStyle::Auto) {
    style = is_terminal(log) ? ProgressStyle::Bar : ProgressStyle::Lines;
  }
  // One '\r' bar cannot show two runs; concurrent runs print a line per epoch.
  if (workers > 1 && style != ProgressStyle::None) style = ProgressStyle::Epochs;

  std::vector<RunResult> results(runs.size());
  std::mutex lock;
  std::atomic<int> next{0};
  int finished = 0;
  std::exception_ptr failure;
  const auto start = std::chrono::steady_clock::now();
  const int width = static_cast<int>(std::to_string(total).size());

  auto worker = [&]() {
    fqt::set_num_threads(1);
    for (int i = next++; i < total; i = next++) {
      {
        std::lock_guard<std::mutex> guard(lock);
        if (failure) return;
      }
      char prefix[96];
      std::snprintf(prefix, sizeof(prefix), "[%*d/%d %s] ", width, i + 1, total,
                    runs[static_cast<std::size_t>(i)].name.c_str());
      Progress progress(style, log, prefix, &lock);
      try {
        RunResult r = run_one(architecture, runs[static_cast<std::size_t>(i)], options, train_set,
                              test, progress);
        std::lock_guard<std::mutex> guard(lock);
        ++finished;
        const double elapsed =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double eta = elapsed / finished * (total - finished);
        if (style != ProgressStyle::None) {
          std::fprintf(log,
                       "%sdone in %.1f s: test acc %s, variance ratio %.3g (at init %.3g); "
                       "%d/%d runs finished, elapsed %s, ETA %s\n",
                       prefix, r.seconds,
                       r.train.final_test_accuracy >= 0
                           ? detail::percent(r.train.final_test_accuracy).c_str()
                           : "n/a",
                       r.final.ratio(), r.initial.ratio(), finished, total,
                       format_duration(elapsed).c_str(), format_duration(eta).c_str());
          std::fflush(log);
        }
        results[static_cast<std::size_t>(i)] = std::move(r);
      } catch (...) {
        std::lock_guard<std::mutex> guard(lock);
        if (!failure) failure = std::current_exception();
        return;
      }
    }
  };
  if (workers <= 1) {
    const int caller_threads = fqt::num_threads();
    worker();
    fqt::set_num_threads(caller_threads);
  } else {
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w) threads.emplace_back(worker);
    for (auto& t : threads) t.join();
  }
  if (failure) std::rethrow_exception(failure);
  return results;
}

// ---- reporting ------------------------------------------------------------------------------

namespace detail {

inline std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) return "n/a";
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

inline std::string general(double v, int digits = 3) {
  if (!std::isfinite(v)) return "n/a";
  std::ostringstream s;
  s.precision(digits);
  s << v;
  return s.str();
}

inline const RunResult* find_mode(const std::vector<RunResult>& results, nn::Mode mode) {
  for (const auto& r : results) {
    if (r.spec.policy.mode == mode) return &r;
  }
  return nullptr;
}

inline double accuracy_or_nan(const RunResult& r) {
  return r.train.final_test_accuracy >= 0 ? r.train.final_test_accuracy
                                          : std::numeric_limits<double>::quiet_NaN();
}

/// A run "collapsed" when it ends at or below twice chance accuracy (or diverged).
inline bool collapsed(const RunResult& r, int classes) {
  const double acc = accuracy_or_nan(r);
  return r.train.diverged || !(acc > 2.0 / classes);
}

}  // namespace detail

/// \brief The table of every run, in Markdown: configuration, test accuracy and its difference
/// to QAT (points), the variance ratios at initialisation and at the end, and seconds per epoch.
inline void write_markdown(std::ostream& out, const std::vector<RunResult>& results) {
  const RunResult* qat = detail::find_mode(results, nn::Mode::QAT);
  const double qat_accuracy = qat ? detail::accuracy_or_nan(*qat) : std::nan("");
  out << "| run | grad-input | bits | grid | grad-weight | test acc | vs QAT | var ratio, init "
         "| var ratio, end | s/epoch |\n"
      << "|---|---|--:|---|---|--:|--:|--:|--:|--:|\n";
  for (const auto& r : results) {
    const auto& p = r.spec.policy;
    const bool fqt = p.mode == nn::Mode::FQT;
    const double acc = detail::accuracy_or_nan(r);
    out << "| " << r.spec.name << " | " << (fqt ? nn::to_string(p.grad_input_quantizer) : "-")
        << " | " << (fqt ? std::to_string(p.grad_input_bits) : "-") << " | "
        << (fqt ? grid_name(p.gradient_grid) : "-") << " | "
        << (fqt ? std::string(nn::to_string(p.grad_weight_quantizer)) + " " +
                      std::to_string(p.grad_weight_bits)
                : std::string("-"))
        << " | " << (std::isfinite(acc) ? detail::fixed(100 * acc, 2) + "%" : "n/a")
        << (r.train.diverged ? " (diverged)" : "") << " | "
        << (std::isfinite(acc - qat_accuracy)
                ? (acc >= qat_accuracy ? "+" : "") + detail::fixed(100 * (acc - qat_accuracy), 2)
                : "n/a")
        << " | " << (fqt ? detail::general(r.initial.ratio()) : "0") << " | "
        << (fqt ? detail::general(r.final.ratio()) : "0") << " | "
        << detail::fixed(r.train.seconds_per_epoch(), 1) << " |\n";
  }
}

/// \brief The FQT runs pivoted: one row per quantizer and grid, one column per bit width, each
/// cell "accuracy % (variance ratio at the end)", in Markdown.
inline void write_pivot(std::ostream& out, const std::vector<RunResult>& results) {
  std::vector<int> bits;
  std::vector<std::pair<nn::GradInputQuantizer, fqt::Grid>> rows;
  for (const auto& r : results) {
    const auto& p = r.spec.policy;
    if (p.mode != nn::Mode::FQT) continue;
    if (std::find(bits.begin(), bits.end(), p.grad_input_bits) == bits.end()) {
      bits.push_back(p.grad_input_bits);
    }
    const auto key = std::make_pair(p.grad_input_quantizer, p.gradient_grid);
    if (std::find(rows.begin(), rows.end(), key) == rows.end()) rows.push_back(key);
  }
  if (rows.empty()) return;
  std::sort(bits.rbegin(), bits.rend());
  out << "| quantizer | grid |";
  for (const int b : bits) out << " " << b << " bits |";
  out << "\n|---|---|";
  for (std::size_t i = 0; i < bits.size(); ++i) out << "--:|";
  out << "\n";
  for (const auto& [q, grid] : rows) {
    out << "| " << nn::to_string(q) << " | " << grid_name(grid) << " |";
    for (const int b : bits) {
      std::string cell = " ";
      for (const auto& r : results) {
        const auto& p = r.spec.policy;
        if (p.mode == nn::Mode::FQT && p.grad_input_quantizer == q && p.gradient_grid == grid &&
            p.grad_input_bits == b) {
          const double acc = detail::accuracy_or_nan(r);
          cell = (std::isfinite(acc) ? detail::fixed(100 * acc, 1) : std::string("n/a")) + " (" +
                 detail::general(r.final.ratio(), 2) + ")";
        }
      }
      out << " " << cell << " |";
    }
    out << "\n";
  }
}

/// \brief A short reading of the results, computed from them (not canned): the baselines and the
/// noise level, down to which bit width each quantizer stays within `tolerance` of QAT, whether
/// the variance ordering PTQ > PSQ > BHQ holds, and how the variance ratio sorts the runs into
/// those that train like QAT and those that do not.
/// \param test_size the number of test images (for the binomial standard error)
/// \param tolerance in accuracy (0.01 = one point)
inline std::string reading(const std::vector<RunResult>& results, Index test_size, int classes = 10,
                           double tolerance = 0.01) {
  std::ostringstream out;
  const RunResult* qat = detail::find_mode(results, nn::Mode::QAT);
  const RunResult* exact = detail::find_mode(results, nn::Mode::Exact);
  if (exact) out << "- Exact: " << detail::percent(detail::accuracy_or_nan(*exact)) << ".";
  if (qat) {
    const double a = detail::accuracy_or_nan(*qat);
    const double se = std::sqrt(a * (1 - a) / static_cast<double>(std::max<Index>(test_size, 1)));
    out << (exact ? " " : "- ") << "QAT: " << detail::percent(a) << " (binomial standard error of "
        << detail::fixed(100 * se, 2) << " points on " << test_size
        << " test images; one seed, so differences of about a point are noise).\n";
  } else {
    out << "\n- No QAT run: accuracies are not compared.\n";
  }

  // Per quantizer and grid: the lowest bit width down to which every run stays within tolerance.
  std::vector<std::pair<nn::GradInputQuantizer, fqt::Grid>> keys;
  for (const auto& r : results) {
    const auto& p = r.spec.policy;
    if (p.mode != nn::Mode::FQT) continue;
    const auto key = std::make_pair(p.grad_input_quantizer, p.gradient_grid);
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
  }
  if (qat && !keys.empty()) {
    const double ref = detail::accuracy_or_nan(*qat);
    out << "- Lowest grad-input bit width down to which a quantizer stays within "
        << detail::fixed(100 * tolerance, 1) << " point of QAT (every wider run too):";
    for (const auto& [q, grid] : keys) {
      std::vector<std::pair<int, double>> by_bits;
      for (const auto& r : results) {
        const auto& p = r.spec.policy;
        if (p.mode == nn::Mode::FQT && p.grad_input_quantizer == q && p.gradient_grid == grid) {
          by_bits.emplace_back(p.grad_input_bits, detail::accuracy_or_nan(r));
        }
      }
      std::sort(by_bits.rbegin(), by_bits.rend());
      int lowest = 0;
      for (const auto& [b, acc] : by_bits) {
        if (!(acc >= ref - tolerance)) break;
        lowest = b;
      }
      out << " " << nn::to_string(q) << "/" << grid_name(grid) << " "
          << (lowest > 0 ? std::to_string(lowest) + " bits" : std::string("none")) << ";";
    }
    out << "\n";
  }

  // Variance ordering at each (grid, bits): PTQ above PSQ, PSQ above BHQ.
  for (const bool at_end : {false, true}) {
    auto ratio_of = [&](nn::GradInputQuantizer q, fqt::Grid grid, int bits) {
      for (const auto& r : results) {
        const auto& p = r.spec.policy;
        if (p.mode == nn::Mode::FQT && p.grad_input_quantizer == q && p.gradient_grid == grid &&
            p.grad_input_bits == bits && !(at_end && detail::collapsed(r, classes))) {
          return at_end ? r.final.ratio() : r.initial.ratio();
        }
      }
      return std::numeric_limits<double>::quiet_NaN();
    };
    int ptq_above = 0, ptq_cases = 0, bhq_below = 0, bhq_cases = 0;
    std::vector<double> bhq_over_psq;
    for (const auto& r : results) {
      const auto& p = r.spec.policy;
      if (p.mode != nn::Mode::FQT || p.grad_input_quantizer != nn::GradInputQuantizer::PerSample) {
        continue;
      }
      const double psq = ratio_of(p.grad_input_quantizer, p.gradient_grid, p.grad_input_bits);
      const double ptq =
          ratio_of(nn::GradInputQuantizer::PerTensor, p.gradient_grid, p.grad_input_bits);
      const double bhq =
          ratio_of(nn::GradInputQuantizer::BlockHouseholder, p.gradient_grid, p.grad_input_bits);
      if (std::isfinite(psq) && std::isfinite(ptq)) {
        ++ptq_cases;
        ptq_above += ptq > psq;
      }
      if (std::isfinite(psq) && std::isfinite(bhq) && psq > 0) {
        ++bhq_cases;
        bhq_below += bhq < psq;
        bhq_over_psq.push_back(bhq / psq);
      }
    }
    if (ptq_cases + bhq_cases == 0) continue;
    out << "- Variance ratio "
        << (at_end ? "at the end of training (each run's own weights)"
                   : "at initialisation (the same weights for every run)")
        << ":";
    if (ptq_cases > 0) {
      out << " PTQ above PSQ in " << ptq_above << " of " << ptq_cases << " (grid, bits) cases;";
    }
    if (bhq_cases > 0) {
      std::sort(bhq_over_psq.begin(), bhq_over_psq.end());
      out << " BHQ below PSQ in " << bhq_below << " of " << bhq_cases << ", BHQ/PSQ from "
          << detail::general(bhq_over_psq.front(), 2) << " to "
          << detail::general(bhq_over_psq.back(), 2) << " (median "
          << detail::general(bhq_over_psq[bhq_over_psq.size() / 2], 2) << ")";
    }
    out << "\n";
  }

  // Does the variance ratio sort the runs?
  if (qat) {
    const double ref = detail::accuracy_or_nan(*qat);
    struct Band {
      double low, high;
      int runs = 0;
      double worst = 0;
      std::string worst_name;
    };
    std::vector<Band> bands(3);
    bands[0].low = 0;
    bands[0].high = 0.1;
    bands[1].low = 0.1;
    bands[1].high = 1;
    bands[2].low = 1;
    bands[2].high = std::numeric_limits<double>::infinity();
    std::vector<std::string> collapsed;
    for (const auto& r : results) {
      if (r.spec.policy.mode != nn::Mode::FQT) continue;
      if (detail::collapsed(r, classes)) {
        collapsed.push_back(r.spec.name + " (ratio at init " +
                            detail::general(r.initial.ratio(), 2) + ")");
        continue;
      }
      const double ratio = r.final.ratio();
      for (auto& b : bands) {
        if (ratio >= b.low && ratio < b.high) {
          ++b.runs;
          const double change = detail::accuracy_or_nan(r) - ref;
          if (b.runs == 1 || change < b.worst) {
            b.worst = change;
            b.worst_name = r.spec.name;
          }
        }
      }
    }
    const bool any =
        std::any_of(bands.begin(), bands.end(), [](const Band& b) { return b.runs > 0; });
    if (any) out << "- Variance ratio at the end of training against the accuracy loss:";
    for (const auto& b : bands) {
      if (b.runs == 0) continue;
      out << " ratio "
          << (std::isinf(b.high) ? ">= " + detail::general(b.low)
                                 : detail::general(b.low) + "-" + detail::general(b.high))
          << ": " << b.runs << " run" << (b.runs == 1 ? "" : "s") << ", worst "
          << (b.worst >= 0 ? "+" : "") << detail::fixed(100 * b.worst, 2) << " points vs QAT ("
          << b.worst_name << ");";
    }
    if (any) out << "\n";
    if (!collapsed.empty()) {
      out << "- Collapsed (at most twice chance accuracy, or diverged; the end-of-training "
             "variance of a dead network says nothing, so look at the ratio at init):";
      for (const auto& c : collapsed) out << " " << c << ";";
      out << "\n";
    }
  }
  return out.str();
}

/// \brief Writes one CSV row per run (header first): the configuration, the budget, test
/// accuracy (a fraction), final training loss, the variance decomposition at the end of training
/// and at initialisation (sums over tensors), the time per epoch and of the run, then the
/// end-of-training quantization and sampling variance of every parameter tensor
/// (qvar_<name>, svar_<name>). Exact and QAT runs have grad_input "none" and 32 bits (float).
/// Non-finite values are written "nan".
/// \throws std::runtime_error if the file cannot be written
inline void write_csv(const std::string& path, const std::vector<RunResult>& results,
                      const CompareOptions& options, Index train_size, Index test_size) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error(path + ": cannot open the CSV file for writing");
  out.precision(9);
  auto num = [](double v) {
    std::ostringstream s;
    s.precision(9);
    if (std::isfinite(v)) {
      s << v;
    } else {
      s << "nan";
    }
    return s.str();
  };
  std::vector<std::string> tensors;
  for (const auto& r : results) {
    for (const auto& t : r.final.tensors.empty() ? r.initial.tensors : r.final.tensors) {
      if (std::find(tensors.begin(), tensors.end(), t.name) == tensors.end()) {
        tensors.push_back(t.name);
      }
    }
  }
  out << "run,name,mode,grad_input,grad_input_bits,grad_weight,grad_weight_bits,forward_bits,grid,"
         "seed,epochs,train_size,test_size,batch_size,learning_rate,test_accuracy,"
         "final_train_loss,diverged,quantization_variance,sampling_variance,variance_ratio,"
         "init_quantization_variance,init_sampling_variance,init_variance_ratio,"
         "seconds_per_epoch,run_seconds";
  for (const auto& t : tensors) out << ",qvar_" << t << ",svar_" << t;
  out << "\n";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    const auto& p = r.spec.policy;
    const bool fqt = p.mode == nn::Mode::FQT;
    out << i + 1 << "," << r.spec.name << "," << nn::to_string(p.mode) << ","
        << (fqt ? nn::to_string(p.grad_input_quantizer) : "none") << ","
        << (fqt ? p.grad_input_bits : 32) << ","
        << (fqt ? nn::to_string(p.grad_weight_quantizer) : "none") << ","
        << (fqt ? p.grad_weight_bits : 32) << ","
        << (p.quantizes_forward() ? p.activation_bits : 32) << ","
        << (fqt ? grid_name(p.gradient_grid) : "none") << "," << options.train.seed << ","
        << options.train.epochs << "," << train_size << "," << test_size << ","
        << options.train.batch_size << "," << num(options.train.learning_rate) << ","
        << num(detail::accuracy_or_nan(r)) << "," << num(r.train.final_train_loss) << ","
        << (r.train.diverged ? 1 : 0) << "," << num(r.final.quantization) << ","
        << num(r.final.sampling) << "," << num(r.final.ratio()) << ","
        << num(r.initial.quantization) << "," << num(r.initial.sampling) << ","
        << num(r.initial.ratio()) << "," << num(r.train.seconds_per_epoch()) << ","
        << num(r.seconds);
    for (const auto& name : tensors) {
      double q = std::nan(""), s = std::nan("");
      for (const auto& t : r.final.tensors) {
        if (t.name == name) {
          q = t.quantization;
          s = t.sampling;
        }
      }
      out << "," << num(q) << "," << num(s);
    }
    out << "\n";
  }
  out.close();
  if (!out) throw std::runtime_error(path + ": could not write the CSV file");
}

// ---- plots ----------------------------------------------------------------------------------

namespace detail {

// gnuplot's single-quoted strings end at a quote; '' is a literal quote.
inline std::string gnuplot_quote(const std::string& text) {
  std::string quoted = "'";
  for (const char c : text) quoted += c == '\'' ? std::string("''") : std::string(1, c);
  return quoted + "'";
}

// A gnuplot double-quoted string: backslash escapes work ("\n" is a line break).
inline std::string gnuplot_text(const std::string& text) {
  std::string quoted = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += c == '\n' ? std::string("\\n") : std::string(1, c);
  }
  return quoted + "\"";
}

inline std::string run_gnuplot(const std::string& script, const std::string& path) {
  // gnuplot's own warnings (e.g. a single bit width gives an empty x range) are noise here; a
  // failure still shows in its exit status.
  FILE* gp = ::popen("gnuplot 2>/dev/null", "w");
  if (!gp) return "could not start gnuplot, so " + path + " was not written";
  const bool written = std::fwrite(script.data(), 1, script.size(), gp) == script.size();
  const int status = ::pclose(gp);
  if (!written || status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return "gnuplot failed (status " + std::to_string(status) + "); " + path +
           " may be missing or incomplete";
  }
  return "wrote " + path;
}

}  // namespace detail

/// \brief Renders `<prefix>_accuracy.png` (test accuracy against grad-input bits, one line per
/// quantizer and grid, QAT and Exact as horizontal lines) and `<prefix>_variance.png` (the
/// variance ratio against bits on a log scale, at initialisation and at the end of training, with
/// the level 1 = the QAT sampling variance; collapsed runs — at most twice chance accuracy — are
/// left out of the end-of-training panel) with gnuplot's pngcairo terminal.
/// \return one message per plot ("wrote ...", or why not — e.g. gnuplot is not on PATH)
inline std::vector<std::string> plot(const std::vector<RunResult>& results,
                                     const std::string& prefix, const std::string& subtitle,
                                     int classes = 10) {
  const std::string accuracy_png = prefix + "_accuracy.png";
  const std::string variance_png = prefix + "_variance.png";
  if (!fqt_examples::on_path("gnuplot")) {
    return {"gnuplot is not on PATH, so " + accuracy_png + " and " + variance_png +
            " were not written (Debian: apt install gnuplot-nox); the CSV has the data"};
  }
  struct Series {
    nn::GradInputQuantizer quantizer;
    fqt::Grid grid;
    std::vector<const RunResult*> runs;
  };
  std::vector<Series> series;
  for (const auto& r : results) {
    const auto& p = r.spec.policy;
    if (p.mode != nn::Mode::FQT) continue;
    auto it = std::find_if(series.begin(), series.end(), [&](const Series& s) {
      return s.quantizer == p.grad_input_quantizer && s.grid == p.gradient_grid;
    });
    if (it == series.end()) {
      series.push_back({p.grad_input_quantizer, p.gradient_grid, {}});
      it = series.end() - 1;
    }
    it->runs.push_back(&r);
  }
  if (series.empty()) return {"no FQT runs: nothing to plot"};
  const char* colors[] = {"#d62728", "#1f77b4", "#2ca02c"};
  auto data_blocks = [&](bool variance) {
    std::ostringstream s;
    for (std::size_t i = 0; i < series.size(); ++i) {
      auto runs = series[i].runs;
      std::sort(runs.begin(), runs.end(), [](const RunResult* a, const RunResult* b) {
        return a->spec.policy.grad_input_bits < b->spec.policy.grad_input_bits;
      });
      s << "$s" << i << " << EOD\n";
      for (const RunResult* r : runs) {
        auto positive = [](double v) {
          return std::isfinite(v) && v > 0 ? detail::general(v, 6) : std::string("NaN");
        };
        s << r->spec.policy.grad_input_bits << " ";
        if (variance) {
          // The end-of-training variance of a collapsed (dead) network says nothing: omitted.
          const bool dead = detail::collapsed(*r, classes);
          s << positive(r->initial.ratio()) << " "
            << (dead ? std::string("NaN") : positive(r->final.ratio())) << "\n";
        } else {
          s << detail::general(100 * detail::accuracy_or_nan(*r), 6) << "\n";
        }
      }
      s << "EOD\n";
    }
    return s.str();
  };
  auto style = [&](std::size_t i) {
    const int q = static_cast<int>(series[i].quantizer);
    std::ostringstream s;
    s << "lw 2 pt " << 5 + 2 * q << " lc rgb '" << colors[q % 3] << "' dt "
      << (series[i].grid == fqt::Grid::Free ? 2 : 1);
    return s.str();
  };
  auto title = [&](std::size_t i) {
    std::string t = nn::to_string(series[i].quantizer);
    for (auto& c : t) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return t + " (" + grid_name(series[i].grid) + ")";
  };
  std::vector<std::string> messages;
  {
    std::ostringstream s;
    s << "set terminal pngcairo size 960,640 enhanced font 'sans,11'\n"
      << "set output " << detail::gnuplot_quote(accuracy_png) << "\n"
      << "set title " << detail::gnuplot_text("Test accuracy vs grad-input bits\n" + subtitle)
      << " noenhanced\n"
      << "set xlabel 'grad-input bits b'\nset ylabel 'test accuracy (%)'\nset grid\n"
      << "set key bottom right\nset xtics 1\nset offsets 0.2, 0.2, 0, 0\n"
      << data_blocks(false);
    s << "plot ";
    for (std::size_t i = 0; i < series.size(); ++i) {
      s << "$s" << i << " using 1:2 with linespoints " << style(i) << " title "
        << detail::gnuplot_quote(title(i)) << ", \\\n  ";
    }
    const RunResult* qat = detail::find_mode(results, nn::Mode::QAT);
    const RunResult* exact = detail::find_mode(results, nn::Mode::Exact);
    if (qat) {
      s << detail::general(100 * detail::accuracy_or_nan(*qat), 6)
        << " with lines lw 2 lc rgb 'black' title 'QAT', \\\n  ";
    }
    if (exact) {
      s << detail::general(100 * detail::accuracy_or_nan(*exact), 6)
        << " with lines lw 1 dt 3 lc rgb 'gray40' title 'Exact', \\\n  ";
    }
    std::string text = s.str();
    text = text.substr(0, text.rfind(", \\\n  ")) + "\n";
    messages.push_back(detail::run_gnuplot(text, accuracy_png));
  }
  {
    std::ostringstream s;
    s << "set terminal pngcairo size 1280,560 enhanced font 'sans,11'\n"
      << "set output " << detail::gnuplot_quote(variance_png) << "\n"
      << "set multiplot layout 1,2 title "
      << detail::gnuplot_text("Gradient quantization variance / QAT sampling variance\n" + subtitle)
      << " noenhanced\n"
      << "set xlabel 'grad-input bits b'\nset ylabel 'variance ratio (log scale)'\n"
      << "set logscale y\nset format y '10^{%L}'\nset grid\nset key top right\nset xtics 1\n"
      << "set offsets 0.2, 0.2, 0, 0\n"
      << data_blocks(true);
    for (int column : {2, 3}) {
      s << "set title "
        << (column == 2 ? "'at initialisation (same weights for every run)'"
                        : "'at the end of training (collapsed runs omitted)'")
        << "\nplot ";
      for (std::size_t i = 0; i < series.size(); ++i) {
        s << "$s" << i << " using 1:" << column << " with linespoints " << style(i) << " title "
          << detail::gnuplot_quote(title(i)) << ", \\\n  ";
      }
      s << "1 with lines lw 2 lc rgb 'black' title 'QAT sampling variance'\n";
    }
    s << "unset multiplot\n";
    messages.push_back(detail::run_gnuplot(s.str(), variance_png));
  }
  return messages;
}

}  // namespace fqt_train
