#pragma once
/// \file
/// \brief The report of the comparison: the Markdown table of every run, the pivot of the FQT runs
/// by bit width, and the reading computed from them.

#include <algorithm>
#include <cmath>
#include <limits>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/quantizers.hpp"
#include "trainer/runs.hpp"

namespace fqt_train {

namespace detail {

/// \brief `v` with `digits` decimals, or "n/a" when not finite.
inline std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) return "n/a";
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

/// \brief `v` with `digits` significant digits, or "n/a" when not finite.
inline std::string general(double v, int digits = 3) {
  if (!std::isfinite(v)) return "n/a";
  std::ostringstream s;
  s.precision(digits);
  s << v;
  return s.str();
}

/// \brief The first run of `mode`, or null.
inline const RunResult* find_mode(const std::vector<RunResult>& results, nn::Mode mode) {
  for (const auto& r : results) {
    if (r.spec.policy.mode == mode) return &r;
  }
  return nullptr;
}

/// \brief The final test accuracy, NaN when the run could not be evaluated.
inline double accuracy_or_nan(const RunResult& r) {
  return r.train.final_test_accuracy >= 0 ? r.train.final_test_accuracy
                                          : std::numeric_limits<double>::quiet_NaN();
}

/// \brief A run "collapsed" when it ends at or below twice chance accuracy (or diverged).
inline bool collapsed(const RunResult& r, int classes) {
  const double acc = accuracy_or_nan(r);
  return r.train.diverged || !(acc > 2.0 / classes);
}

/// \brief A (grad-input quantizer, grid) pair: one line of the pivot, the reading and the plots.
using QuantizerGrid = std::pair<fqt::QuantizerKind, fqt::Grid>;

/// \brief The (quantizer, grid) pairs of the FQT runs, in the order they first appear.
inline std::vector<QuantizerGrid> quantizer_grids(const std::vector<RunResult>& results) {
  std::vector<QuantizerGrid> keys;
  for (const auto& r : results) {
    const auto& p = r.spec.policy;
    if (p.mode != nn::Mode::FQT || r.spec.storage_row) continue;
    const auto key = std::make_pair(p.grad_input.kind, p.grad_input.grid);
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
  }
  return keys;
}

/// \brief True for an FQT run of quantizer `q` on `grid` in the grid's series (not a row of
/// weights without a master copy).
inline bool is_fqt_run(const RunResult& r, fqt::QuantizerKind q, fqt::Grid grid) {
  const auto& p = r.spec.policy;
  return p.mode == nn::Mode::FQT && !r.spec.storage_row && p.grad_input.kind == q &&
         p.grad_input.grid == grid;
}

/// \brief "fp32", or "int16"/"int8" with the momentum's storage when it differs.
inline std::string storage_name(const RunSpec& spec) {
  const auto name = [](int bits) {
    return bits == 32 ? std::string("fp32") : "int" + std::to_string(bits);
  };
  if (spec.weight_bits == 32 || spec.momentum_bits == spec.weight_bits) {
    return name(spec.weight_bits);
  }
  return name(spec.weight_bits) + "/" +
         (spec.momentum_bits == 32 ? std::string("fp32") : name(spec.momentum_bits));
}

/// \brief One row of the table of every run.
inline void write_run_row(std::ostream& out, const RunResult& r, double qat_accuracy) {
  const auto& p = r.spec.policy;
  const bool fqt = p.mode == nn::Mode::FQT;
  const double acc = accuracy_or_nan(r);
  out << "| " << r.spec.name << " | " << (fqt ? fqt_examples::kind_name(p.grad_input.kind) : "-")
      << " | " << (fqt ? std::to_string(p.grad_input.bits) : "-") << " | "
      << (fqt ? fqt_examples::grid_name(p.grad_input.grid) : "-") << " | "
      << (fqt ? std::string(fqt_examples::kind_name(p.grad_weight.kind)) + " " +
                    std::to_string(p.grad_weight.bits)
              : std::string("-"))
      << " | " << storage_name(r.spec) << " | "
      << (std::isfinite(acc) ? fixed(100 * acc, 2) + "%" : "n/a")
      << (r.train.diverged ? " (diverged)" : "") << " | "
      << (std::isfinite(acc - qat_accuracy)
              ? (acc >= qat_accuracy ? "+" : "") + fixed(100 * (acc - qat_accuracy), 2)
              : "n/a")
      << " | " << (fqt ? general(r.initial.ratio()) : "0") << " | "
      << (fqt ? general(r.final.ratio()) : "0") << " | " << fixed(r.train.seconds_per_epoch(), 1)
      << " |\n";
}

/// \brief The pivot's cell of quantizer `q` on `grid` at `bits`: "accuracy (ratio at the end)".
inline std::string pivot_cell(const std::vector<RunResult>& results, fqt::QuantizerKind q,
                              fqt::Grid grid, int bits) {
  std::string cell = " ";
  for (const auto& r : results) {
    if (is_fqt_run(r, q, grid) && r.spec.policy.grad_input.bits == bits) {
      const double acc = accuracy_or_nan(r);
      cell = (std::isfinite(acc) ? fixed(100 * acc, 1) : std::string("n/a")) + " (" +
             general(r.final.ratio(), 2) + ")";
    }
  }
  return cell;
}

}  // namespace detail

/// \brief The table of every run, in Markdown: configuration (with the weights' storage: fp32
/// master weights, or int16 / int8 codes with momentum of the same width unless shown), test
/// accuracy and its difference to QAT (points), the variance ratios at initialisation and at the
/// end, and seconds per epoch.
inline void write_markdown(std::ostream& out, const std::vector<RunResult>& results) {
  const RunResult* qat = detail::find_mode(results, nn::Mode::QAT);
  const double qat_accuracy = qat ? detail::accuracy_or_nan(*qat) : std::nan("");
  out << "| run | grad-input | bits | grid | grad-weight | weights | test acc | vs QAT | var "
         "ratio, "
         "init | var ratio, end | s/epoch |\n"
      << "|---|---|--:|---|---|---|--:|--:|--:|--:|--:|\n";
  for (const auto& r : results) detail::write_run_row(out, r, qat_accuracy);
}

/// \brief The FQT runs pivoted: one row per quantizer and grid, one column per bit width, each
/// cell "accuracy % (variance ratio at the end)", in Markdown.
inline void write_pivot(std::ostream& out, const std::vector<RunResult>& results) {
  const auto rows = detail::quantizer_grids(results);
  if (rows.empty()) return;
  std::vector<int> bits;
  for (const auto& r : results) {
    const int b = r.spec.policy.grad_input.bits;
    if (r.spec.policy.mode == nn::Mode::FQT && !r.spec.storage_row &&
        std::find(bits.begin(), bits.end(), b) == bits.end())
      bits.push_back(b);
  }
  std::sort(bits.rbegin(), bits.rend());
  out << "| quantizer | grid |";
  for (const int b : bits) out << " " << b << " bits |";
  out << "\n|---|---|";
  for (std::size_t i = 0; i < bits.size(); ++i) out << "--:|";
  out << "\n";
  for (const auto& [q, grid] : rows) {
    out << "| " << fqt_examples::kind_name(q) << " | " << fqt_examples::grid_name(grid) << " |";
    for (const int b : bits) out << " " << detail::pivot_cell(results, q, grid, b) << " |";
    out << "\n";
  }
}

/// \brief The memory of the baselines and of the rows of weights without a master copy (with
/// their reference), in Markdown: per parameter, the weights and the optimizer state (momentum),
/// the float views of coded weights, the optimizer's update workspace, and the layers' caches
/// between two steps (operands kept for the backward pass, workspaces), in MB.
inline void write_memory(std::ostream& out, const std::vector<RunResult>& results) {
  out << "| run | weights | weights + state, bytes/param | views | update workspace | layer "
         "caches, MB |\n"
      << "|---|---|--:|--:|--:|--:|\n";
  for (const auto& r : results) {
    const bool shown =
        r.spec.policy.mode != nn::Mode::FQT || r.spec.storage_row || r.spec.storage_reference;
    const nn::OptimizerMemory& m = r.train.optimizer_memory;
    if (!shown || m.parameters == 0) continue;
    const double n = static_cast<double>(m.parameters);
    out << "| " << r.spec.name << " | " << detail::storage_name(r.spec) << " | "
        << detail::fixed(m.per_parameter(), 2) << " | " << detail::fixed(double(m.views) / n, 2)
        << " | " << detail::fixed(double(m.workspace) / n, 2) << " | "
        << detail::fixed(double(r.train.cache_bytes) / 1e6, 2) << " |\n";
  }
}

namespace detail {

/// \brief The reading's first line: Exact and QAT, with the binomial standard error of QAT's
/// accuracy.
inline void read_baselines(std::ostream& out, const RunResult* exact, const RunResult* qat,
                           Index test_size) {
  if (exact) out << "- Exact: " << percent(accuracy_or_nan(*exact)) << ".";
  if (qat) {
    const double a = accuracy_or_nan(*qat);
    const double se = std::sqrt(a * (1 - a) / static_cast<double>(std::max<Index>(test_size, 1)));
    out << (exact ? " " : "- ") << "QAT: " << percent(a) << " (binomial standard error of "
        << fixed(100 * se, 2) << " points on " << test_size
        << " test images; one seed, so differences of about a point are noise).\n";
  } else {
    out << "\n- No QAT run: accuracies are not compared.\n";
  }
}

/// \brief The lowest bit width down to which every run of `q` on `grid` stays within `tolerance` of
/// `reference` (0: none).
inline int lowest_bits_within(const std::vector<RunResult>& results, fqt::QuantizerKind q,
                              fqt::Grid grid, double reference, double tolerance) {
  std::vector<std::pair<int, double>> by_bits;
  for (const auto& r : results) {
    if (is_fqt_run(r, q, grid))
      by_bits.emplace_back(r.spec.policy.grad_input.bits, accuracy_or_nan(r));
  }
  std::sort(by_bits.rbegin(), by_bits.rend());
  int lowest = 0;
  for (const auto& [b, acc] : by_bits) {
    if (!(acc >= reference - tolerance)) break;
    lowest = b;
  }
  return lowest;
}

/// \brief The reading's line of the lowest bit width of each quantizer and grid that matches QAT.
inline void read_lowest_bits(std::ostream& out, const std::vector<RunResult>& results,
                             const RunResult& qat, double tolerance) {
  const auto keys = quantizer_grids(results);
  if (keys.empty()) return;
  const double ref = accuracy_or_nan(qat);
  out << "- Lowest grad-input bit width down to which a quantizer stays within "
      << fixed(100 * tolerance, 1) << " point of QAT (every wider run too):";
  for (const auto& [q, grid] : keys) {
    const int lowest = lowest_bits_within(results, q, grid, ref, tolerance);
    out << " " << fqt_examples::kind_name(q) << "/" << fqt_examples::grid_name(grid) << " "
        << (lowest > 0 ? std::to_string(lowest) + " bits" : std::string("none")) << ";";
  }
  out << "\n";
}

/// \brief The variance ratio of the FQT run (q, grid, bits), at the end or at initialisation; NaN
/// when there is none (or, at the end, when it collapsed).
inline double ratio_of(const std::vector<RunResult>& results, fqt::QuantizerKind q, fqt::Grid grid,
                       int bits, bool at_end, int classes) {
  for (const auto& r : results) {
    if (is_fqt_run(r, q, grid) && r.spec.policy.grad_input.bits == bits &&
        !(at_end && collapsed(r, classes))) {
      return at_end ? r.final.ratio() : r.initial.ratio();
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

/// \brief How the variance ratios of PTQ and BHQ compare with PSQ's over the (grid, bits) cases.
struct VarianceOrder {
  int ptq_above = 0, ptq_cases = 0;  ///< cases with PTQ above PSQ, of those with both
  int bhq_below = 0, bhq_cases = 0;  ///< cases with BHQ below PSQ, of those with both
  std::vector<double> bhq_over_psq;  ///< BHQ/PSQ of each case, sorted
};

/// \brief Compares the ratios of PTQ and BHQ with PSQ's at each (grid, bits) of a PSQ run.
inline VarianceOrder variance_order(const std::vector<RunResult>& results, bool at_end,
                                    int classes) {
  using Q = fqt::QuantizerKind;
  VarianceOrder order;
  for (const auto& r : results) {
    const auto& p = r.spec.policy;
    if (p.mode != nn::Mode::FQT || r.spec.storage_row || p.grad_input.kind != Q::PerSample)
      continue;
    const auto ratio = [&](Q q) {
      return ratio_of(results, q, p.grad_input.grid, p.grad_input.bits, at_end, classes);
    };
    const double psq = ratio(Q::PerSample), ptq = ratio(Q::PerTensor);
    const double bhq = ratio(Q::BlockHouseholder);
    if (std::isfinite(psq) && std::isfinite(ptq)) {
      ++order.ptq_cases;
      order.ptq_above += ptq > psq;
    }
    if (std::isfinite(psq) && std::isfinite(bhq) && psq > 0) {
      ++order.bhq_cases;
      order.bhq_below += bhq < psq;
      order.bhq_over_psq.push_back(bhq / psq);
    }
  }
  std::sort(order.bhq_over_psq.begin(), order.bhq_over_psq.end());
  return order;
}

/// \brief The reading's line on the variance ordering PTQ > PSQ > BHQ, at the end or at
/// initialisation.
inline void read_variance_order(std::ostream& out, const std::vector<RunResult>& results,
                                bool at_end, int classes) {
  const VarianceOrder o = variance_order(results, at_end, classes);
  if (o.ptq_cases + o.bhq_cases == 0) return;
  out << "- Variance ratio "
      << (at_end ? "at the end of training (each run's own weights)"
                 : "at initialisation (the same weights for every run)")
      << ":";
  if (o.ptq_cases > 0) {
    out << " PTQ above PSQ in " << o.ptq_above << " of " << o.ptq_cases << " (grid, bits) cases;";
  }
  if (o.bhq_cases > 0) {
    const auto& v = o.bhq_over_psq;
    out << " BHQ below PSQ in " << o.bhq_below << " of " << o.bhq_cases << ", BHQ/PSQ from "
        << general(v.front(), 2) << " to " << general(v.back(), 2) << " (median "
        << general(v[v.size() / 2], 2) << ")";
  }
  out << "\n";
}

/// \brief The FQT runs whose end-of-training variance ratio is in [low, high), and the worst of
/// them.
struct RatioBand {
  double low, high;        ///< the band of ratios
  int runs = 0;            ///< runs in the band
  double worst = 0;        ///< the largest accuracy loss against QAT (a difference, ≤ 0 is loss)
  std::string worst_name;  ///< the run with that loss
};

/// \brief Sorts the FQT runs that did not collapse into ratio bands [0, 0.1), [0.1, 1), [1, ∞);
/// `collapsed_runs` receives the others, with their ratio at initialisation.
inline std::vector<RatioBand> ratio_bands(const std::vector<RunResult>& results, double reference,
                                          int classes, std::vector<std::string>& collapsed_runs) {
  std::vector<RatioBand> bands = {{0, 0.1, 0, 0, {}},
                                  {0.1, 1, 0, 0, {}},
                                  {1, std::numeric_limits<double>::infinity(), 0, 0, {}}};
  for (const auto& r : results) {
    if (r.spec.policy.mode != nn::Mode::FQT || r.spec.storage_row) continue;
    if (collapsed(r, classes)) {
      collapsed_runs.push_back(r.spec.name + " (ratio at init " + general(r.initial.ratio(), 2) +
                               ")");
      continue;
    }
    const double ratio = r.final.ratio();
    for (auto& b : bands) {
      if (!(ratio >= b.low && ratio < b.high)) continue;
      ++b.runs;
      const double change = accuracy_or_nan(r) - reference;
      if (b.runs == 1 || change < b.worst) {
        b.worst = change;
        b.worst_name = r.spec.name;
      }
    }
  }
  return bands;
}

/// \brief The reading's lines on whether the variance ratio sorts the runs by their accuracy loss.
inline void read_ratio_bands(std::ostream& out, const std::vector<RunResult>& results,
                             const RunResult& qat, int classes) {
  std::vector<std::string> collapsed_runs;
  const auto bands = ratio_bands(results, accuracy_or_nan(qat), classes, collapsed_runs);
  const bool any =
      std::any_of(bands.begin(), bands.end(), [](const RatioBand& b) { return b.runs > 0; });
  if (any) out << "- Variance ratio at the end of training against the accuracy loss:";
  for (const auto& b : bands) {
    if (b.runs == 0) continue;
    out << " ratio "
        << (std::isinf(b.high) ? ">= " + general(b.low) : general(b.low) + "-" + general(b.high))
        << ": " << b.runs << " run" << (b.runs == 1 ? "" : "s") << ", worst "
        << (b.worst >= 0 ? "+" : "") << fixed(100 * b.worst, 2) << " points vs QAT ("
        << b.worst_name << ");";
  }
  if (any) out << "\n";
  if (!collapsed_runs.empty()) {
    out << "- Collapsed (at most twice chance accuracy, or diverged; the end-of-training "
           "variance of a dead network says nothing, so look at the ratio at init):";
    for (const auto& c : collapsed_runs) out << " " << c << ";";
    out << "\n";
  }
}

/// \brief The reading's line on the rows of weights without a master copy: each one's accuracy
/// against its master-weight reference, the bytes of weights and optimizer state per parameter,
/// and the variance its weights' stochastic rounding adds per step (divided by η², so in units
/// of gradient variance) against the gradient's own quantization and sampling variance at the end.
inline void read_weight_storage(std::ostream& out, const std::vector<RunResult>& results) {
  const RunResult* reference = nullptr;
  for (const auto& r : results) {
    if (r.spec.storage_reference) reference = &r;
  }
  if (!reference) return;
  const double ref = accuracy_or_nan(*reference);
  out << "- Weights without a master copy (" << reference->spec.name << ", "
      << storage_name(reference->spec) << " weights: " << percent(ref) << ", "
      << fixed(reference->train.optimizer_memory.per_parameter(), 2)
      << " bytes of weights and optimizer state per parameter):";
  for (const auto& r : results) {
    if (!r.spec.storage_row || r.spec.storage_reference) continue;
    const double acc = accuracy_or_nan(r);
    const double rounding = r.train.rounding_as_gradient_variance;
    out << " " << storage_name(r.spec) << " " << percent(acc) << " (" << (acc >= ref ? "+" : "")
        << fixed(100 * (acc - ref), 2) << " points, "
        << fixed(r.train.optimizer_memory.per_parameter(), 2) << " bytes per parameter";
    if (r.final.quantization > 0 && r.final.sampling > 0) {
      out << ", rounding / lr^2 " << general(rounding, 2)
          << " per step = " << general(rounding / r.final.quantization, 2)
          << "x the gradient quantization and " << general(rounding / r.final.sampling, 2)
          << "x the QAT sampling variance at the end";
    }
    out << ");";
  }
  out << " one seed each\n";
}

}  // namespace detail

/// \brief A short reading of the results, computed from them (not canned): the baselines and the
/// noise level, down to which bit width each quantizer stays within `tolerance` of QAT, whether
/// the variance ordering PTQ > PSQ > BHQ holds, how the variance ratio sorts the runs into
/// those that train like QAT and those that do not, and what weights without a master copy cost.
/// \param test_size the number of test images (for the binomial standard error)
/// \param tolerance in accuracy (0.01 = one point)
inline std::string reading(const std::vector<RunResult>& results, Index test_size, int classes = 10,
                           double tolerance = 0.01) {
  std::ostringstream out;
  const RunResult* qat = detail::find_mode(results, nn::Mode::QAT);
  detail::read_baselines(out, detail::find_mode(results, nn::Mode::Exact), qat, test_size);
  if (qat) detail::read_lowest_bits(out, results, *qat, tolerance);
  for (const bool at_end : {false, true})
    detail::read_variance_order(out, results, at_end, classes);
  if (qat) detail::read_ratio_bands(out, results, *qat, classes);
  detail::read_weight_storage(out, results);
  return out.str();
}

}  // namespace fqt_train
