#pragma once
/// \file
/// \brief The comparison's CSV file: one row per run.

#include <algorithm>
#include <cmath>
#include <fstream>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/quantizers.hpp"
#include "trainer/report.hpp"
#include "trainer/runs.hpp"

namespace fqt_train {

namespace detail {

/// \brief `v` with 9 significant digits, "nan" when not finite.
inline std::string csv_number(double v) {
  std::ostringstream s;
  s.precision(9);
  if (std::isfinite(v)) {
    s << v;
  } else {
    s << "nan";
  }
  return s.str();
}

/// \brief The names of the parameter tensors of every run, in the order they first appear.
inline std::vector<std::string> tensor_names(const std::vector<RunResult>& results) {
  std::vector<std::string> tensors;
  for (const auto& r : results) {
    for (const auto& t : r.final.tensors.empty() ? r.initial.tensors : r.final.tensors) {
      if (std::find(tensors.begin(), tensors.end(), t.name) == tensors.end()) {
        tensors.push_back(t.name);
      }
    }
  }
  return tensors;
}

/// \brief The header line: the summary columns, then qvar_<name>,svar_<name> per tensor.
inline void write_csv_header(std::ostream& out, const std::vector<std::string>& tensors) {
  out << "run,name,mode,grad_input,grad_input_bits,grad_weight,grad_weight_bits,forward_bits,grid,"
         "seed,epochs,train_size,test_size,batch_size,learning_rate,test_accuracy,"
         "final_train_loss,diverged,quantization_variance,sampling_variance,variance_ratio,"
         "init_quantization_variance,init_sampling_variance,init_variance_ratio,"
         "seconds_per_epoch,run_seconds,weight_bits,momentum_bits,bytes_per_parameter,"
         "rounding_over_lr2";
  for (const auto& t : tensors) out << ",qvar_" << t << ",svar_" << t;
  out << "\n";
}

/// \brief The row of run number `number` (1-based).
inline void write_csv_row(std::ostream& out, std::size_t number, const RunResult& r,
                          const std::vector<std::string>& tensors, const CompareOptions& options,
                          Index train_size, Index test_size) {
  const auto num = csv_number;
  const auto& p = r.spec.policy;
  const bool fqt = p.mode == nn::Mode::FQT;
  out << number << "," << r.spec.name << "," << nn::to_string(p.mode) << ","
      << (fqt ? fqt_examples::kind_name(p.grad_input.kind) : "none") << ","
      << (fqt ? p.grad_input.bits : 32) << ","
      << (fqt ? fqt_examples::kind_name(p.grad_weight.kind) : "none") << ","
      << (fqt ? p.grad_weight.bits : 32) << "," << (p.quantizes_forward() ? p.activation_bits : 32)
      << "," << (fqt ? fqt_examples::grid_name(p.grad_input.grid) : "none") << ","
      << options.train.seed << "," << options.train.epochs << "," << train_size << "," << test_size
      << "," << options.train.batch_size << "," << num(options.train.learning_rate) << ","
      << num(accuracy_or_nan(r)) << "," << num(r.train.final_train_loss) << ","
      << (r.train.diverged ? 1 : 0) << "," << num(r.final.quantization) << ","
      << num(r.final.sampling) << "," << num(r.final.ratio()) << "," << num(r.initial.quantization)
      << "," << num(r.initial.sampling) << "," << num(r.initial.ratio()) << ","
      << num(r.train.seconds_per_epoch()) << "," << num(r.seconds) << "," << r.spec.weight_bits
      << "," << r.spec.momentum_bits << "," << num(r.train.optimizer_memory.per_parameter()) << ","
      << num(r.train.rounding_as_gradient_variance);
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

}  // namespace detail

/// \brief Writes one CSV row per run (header first): the configuration, the budget, test
/// accuracy (a fraction), final training loss, the variance decomposition at the end of training
/// and at initialisation (sums over tensors), the time per epoch and of the run, the weights'
/// storage (weight_bits, momentum_bits: 32 for fp32), the bytes of weights and optimizer state
/// per parameter, the weights' rounding error per step over η² (0 for fp32 weights), then the
/// end-of-training quantization and sampling variance of every parameter tensor
/// (qvar_<name>, svar_<name>). Exact and QAT runs have grad_input "none" and 32 bits (float).
/// Non-finite values are written "nan".
/// \throws std::runtime_error if the file cannot be written
inline void write_csv(const std::string& path, const std::vector<RunResult>& results,
                      const CompareOptions& options, Index train_size, Index test_size) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error(path + ": cannot open the CSV file for writing");
  out.precision(9);
  const auto tensors = detail::tensor_names(results);
  detail::write_csv_header(out, tensors);
  for (std::size_t i = 0; i < results.size(); ++i) {
    detail::write_csv_row(out, i + 1, results[i], tensors, options, train_size, test_size);
  }
  out.close();
  if (!out) throw std::runtime_error(path + ": could not write the CSV file");
}

}  // namespace fqt_train
