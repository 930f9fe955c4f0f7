// fqt_train: fully quantized training of a small CNN on Fashion-MNIST (or any MNIST-format data
// set), and the paper's comparison of gradient quantizers.
//
//   fqt_train                                    # the comparison on the default (~5 min) budget
//   fqt_train --full                             # the whole grid: bits 8..1, 60000 images
//   fqt_train --mode fqt --grad-input bhq --bits 4 --epochs 5 --save bhq4.fqt
//   fqt_train --load bhq4.fqt --eval-only
//
// Without --mode the program runs the comparison (--compare): Exact, QAT and FQT with PTQ, PSQ
// and BHQ at several grad-input bit widths, on the paper's free grid and fqt's zero-aligned grid,
// and prints a Markdown table, writes a CSV file and, with gnuplot, two PNG plots. With --mode it
// trains one model (and may save it, or load one and only evaluate it). Progress goes to stderr,
// results to stdout. See README.md ("Training on Fashion-MNIST").

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/quantizers.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/nn/backends/int8.hpp"
#include "trainer/gradients.hpp"
#include "trainer/trainer.hpp"
#ifdef FQT_TRAIN_DNNL
#include "fqt/nn/backends/dnnl.hpp"
#endif

namespace {

namespace nn = fqt::nn;
using fqt_train::Index;

// The budget of the comparison: the default fits about 5 minutes on 2 cores, --full is the
// whole grid.
struct Budget {
  Index train_size;
  Index test_size;
  int epochs;
  std::vector<int> bits;
};
const Budget kDefaultBudget{8000, 10000, 3, {8, 5, 4, 3, 2}};
const Budget kFullBudget{60000, 10000, 10, {8, 7, 6, 5, 4, 3, 2, 1}};
// A single run (--mode) trains on everything for a few epochs.
const Budget kSingleRunBudget{fqt::data::all_samples, fqt::data::all_samples, 5, {}};

// Thrown for a bad combination of options (exit status 2, like CLI11's own errors).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Everything the command line sets, the CLI11 options whose presence matters, and what follows
// from them (filled in by resolve()).
struct Options {
  Options() {
    train.batch_size = 64;
    train.learning_rate = 0.05;
  }

  // what to run
  std::string mode_name;
  bool compare_flag = false, full = false;
  // quantization (single run)
  std::string grad_input = "bhq", grad_weight = "auto", grid = "auto";
  std::string backend;  // float or int8; empty: int8 for a single run with oneDNN, else float
  int bits = 8, grad_weight_bits = 8, forward_bits = 8;
  // training
  fqt_train::TrainOptions train;
  int epochs = 0;
  std::string schedule = "cosine";
  std::vector<double> milestones;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // data and model
  std::string data_dir = fqt_train::default_data_dir();
  Index train_size = 0, test_size = 0;
  fqt_train::Architecture architecture;
  std::vector<Index> channels = {architecture.conv1_channels, architecture.conv2_channels};
  // files (single run)
  std::string save_path, load_path;
  bool eval_only = false, profile = false, variance_table = false;
  // comparison
  std::string csv = "fqt_compare.csv", plot_prefix = "fqt_compare";
  std::vector<int> compare_bits;
  int seeds = 2;  // the two lowest bit widths (and QAT) again with seeds seed+1 .. seed+seeds-1
  // Empty: the default series; given, every quantizer on every grid.
  std::vector<std::string> compare_quantizers, compare_grids;
  // The rows of FQT without master weights (bhq-4-paper with int16, int8 codes), or "none".
  std::vector<std::string> compare_weights = {"int16", "int8"};
  fqt_train::VarianceOptions variance;
  std::string progress_name = "auto";

  CLI::Option *mode_opt = nullptr, *compare_opt = nullptr, *full_opt = nullptr;
  CLI::Option *grad_input_opt = nullptr, *bits_opt = nullptr, *grad_weight_opt = nullptr,
              *grid_opt = nullptr;
  CLI::Option *epochs_opt = nullptr, *threads_opt = nullptr;
  CLI::Option *train_size_opt = nullptr, *test_size_opt = nullptr;
  CLI::Option *save_opt = nullptr, *load_opt = nullptr, *profile_opt = nullptr,
              *variance_table_opt = nullptr;
  CLI::Option *csv_opt = nullptr, *plot_opt = nullptr, *compare_bits_opt = nullptr,
              *compare_quantizers_opt = nullptr, *compare_grids_opt = nullptr, *seeds_opt = nullptr,
              *compare_weights_opt = nullptr;

  // resolved
  bool compare = false;         // the comparison (no --mode and no --eval-only)
  bool default_budget = false;  // the comparison on its untouched default budget
  fqt_train::ProgressStyle progress_style = fqt_train::ProgressStyle::Auto;
};

// ---- the command line ---------------------------------------------------------------------------

#ifdef FQT_TRAIN_DNNL
constexpr bool kHaveDnnl = true;
#else
constexpr bool kHaveDnnl = false;
#endif

// The backend named "float" (null: the simulated backend) or "int8".
std::shared_ptr<const nn::Backend> backend_named(const std::string& name) {
  if (name == "float") return nullptr;
#ifdef FQT_TRAIN_DNNL
  return nn::dnnl_backend();
#else
  return nn::int8_backend();
#endif
}

std::string join(const std::vector<std::string>& values, const char* separator) {
  std::string joined;
  for (const auto& v : values) joined += (joined.empty() ? "" : separator) + v;
  return joined;
}

// "auto" and then `names`: the values --grad-weight accepts.
std::vector<std::string> with_auto(std::vector<std::string> names) {
  names.insert(names.begin(), "auto");
  return names;
}

// "PTQ/PSQ/BHQ on the paper grid, ADAPTIVE/HADAMARD on the auto grid": the default series.
std::string quantizer_titles() {
  std::string text;
  const auto series = fqt_examples::default_series();
  for (std::size_t i = 0; i < series.size(); ++i) {
    const bool last_of_grid = i + 1 == series.size() || series[i + 1].second != series[i].second;
    text += fqt_examples::kind_title(series[i].first);
    if (last_of_grid) {
      text += std::string(" on the ") + fqt_examples::grid_name(series[i].second) + " grid";
      if (i + 1 < series.size()) text += ", ";
    } else {
      text += "/";
    }
  }
  return text;
}

void add_run_options(CLI::App& app, Options& o) {
  o.mode_opt = app.add_option("--mode", o.mode_name,
                              "train one model: exact, qat or fqt (default: run --compare)")
                   ->check(CLI::IsMember({"exact", "qat", "fqt"}, CLI::ignore_case));
  o.compare_opt = app.add_flag("--compare", o.compare_flag,
                               "compare Exact, QAT and FQT (" + quantizer_titles() +
                                   ", each at every bit width); the default when --mode is not "
                                   "given");
  o.full_opt = app.add_flag("--full", o.full,
                            "the comparison on the whole grid: bits 8..1, all 60000 training "
                            "images, 10 epochs (about 2 hours on 2 cores)");
  o.mode_opt->excludes(o.compare_opt)->excludes(o.full_opt);
}

void add_quantization_options(CLI::App& app, Options& o) {
  const auto grad_input_names = fqt_examples::grad_input_quantizer_names();
  o.grad_input_opt =
      app.add_option("--grad-input", o.grad_input,
                     "grad-input quantizer Q_b1: " + fqt_examples::or_list(grad_input_names))
          ->check(CLI::IsMember(grad_input_names, CLI::ignore_case))
          ->capture_default_str();
  o.bits_opt = app.add_option("--bits,--grad-input-bits", o.bits, "grad-input bits, 1..8")
                   ->check(CLI::Range(1, 8))
                   ->capture_default_str();
  std::vector<std::string> grad_weight_names;
  for (const auto& k : fqt::kQuantizerKinds) {
    if (fqt::can_feed(k.kind, fqt::Contraction::Rows)) grad_weight_names.push_back(k.name);
  }
  o.grad_weight_opt =
      app.add_option("--grad-weight", o.grad_weight,
                     "grad-weight quantizer Q_b2: " + join(grad_weight_names, ", ") +
                         ", or auto (the paper's pairing: ptq with PTQ, per-column with PSQ "
                         "and BHQ; per-channel on the int8 backend)")
          ->check(CLI::IsMember(with_auto(grad_weight_names), CLI::ignore_case))
          ->capture_default_str();
  app.add_option("--grad-weight-bits", o.grad_weight_bits, "grad-weight bits, 1..8")
      ->check(CLI::Range(1, 8))
      ->capture_default_str();
  app.add_option("--forward-bits", o.forward_bits,
                 "bits of the forward quantizer Q_f (activations and weights), 1..8")
      ->check(CLI::Range(1, 8))
      ->capture_default_str();
  app.add_option("--backend", o.backend,
                 "who computes the products: float (float GEMMs on the dequantized values, the "
                 "paper's simulation) or int8 (integer GEMMs on the codes" +
                     std::string(kHaveDnnl ? ", on oneDNN" : ", portable engine") +
                     "; PSQ/BHQ runs pair with per-channel grad-weight). Default: int8 for a "
                     "single run where oneDNN is built in, float for the comparison")
      ->check(CLI::IsMember({"float", "int8"}, CLI::ignore_case));
  o.grid_opt = app.add_option("--grid", o.grid,
                              "gradient grid: auto (per row/column/tensor the lower-variance of "
                              "free and zero), free, zero (exact zeros stay exact) or paper (the "
                              "released code's: zero point for PTQ, free otherwise)")
                   ->check(CLI::IsMember(fqt_examples::grid_names(), CLI::ignore_case))
                   ->capture_default_str();
}

void add_training_options(CLI::App& app, Options& o) {
  fqt_train::TrainOptions& t = o.train;
  o.epochs_opt = app.add_option("--epochs", o.epochs,
                                "epochs (default: 3 for --compare, 10 for --full, 5 for a "
                                "single run)")
                     ->check(CLI::Range(1, 100000));
  app.add_option("--batch-size", t.batch_size, "samples per SGD step")
      ->check(CLI::Range(Index{1}, Index{1} << 20))
      ->capture_default_str();
  app.add_option("--lr", t.learning_rate, "peak learning rate")
      ->check(CLI::Range(1e-9, 100.0))
      ->capture_default_str();
  app.add_option("--schedule", o.schedule, "learning-rate schedule: cosine or step")
      ->check(CLI::IsMember({"cosine", "step"}))
      ->capture_default_str();
  app.add_option("--warmup-epochs", t.warmup_epochs,
                 "linear warm-up, in epochs (fractions allowed)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  app.add_option("--milestones", o.milestones,
                 "step schedule: epochs at which the rate is multiplied by --gamma (default: at "
                 "50% and 75% of training)")
      ->delimiter(',');
  app.add_option("--gamma", t.gamma, "step schedule: decay factor")
      ->check(CLI::Range(1e-9, 1.0))
      ->capture_default_str();
  app.add_option("--weights", t.weight_bits,
                 "weight storage: fp32 (master weights, the default), int16 or int8 (codes only, "
                 "updated by stochastic rounding)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, int>{{"fp32", 32}, {"int16", 16}, {"int8", 8}}, CLI::ignore_case));
  app.add_option("--momentum-bits", t.momentum_bits,
                 "momentum storage with coded weights: 32 (fp32, the default), 16 or 8")
      ->check(CLI::IsMember({32, 16, 8}));
  app.add_option("--conv-columns", t.conv_columns,
                 "what the convs keep for backward: keep (the batch's im2col columns; the "
                 "default) or recompute (only the input: the columns are built again)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, fqt::nn::ConvColumns>{
              {"keep", fqt::nn::ConvColumns::Keep}, {"recompute", fqt::nn::ConvColumns::Recompute}},
          CLI::ignore_case));
  app.add_option("--momentum", t.momentum, "SGD momentum, in [0, 1)")
      ->check(CLI::Range(0.0, 0.999999))
      ->capture_default_str();
  app.add_option("--weight-decay", t.weight_decay, "L2 weight decay (not on biases)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--seed", t.seed,
                 "seed of every random stream (weights, data order, gradient noise)")
      ->capture_default_str();
  o.threads_opt =
      app.add_option("--threads", o.threads,
                     "threads (results do not depend on them): --compare trains this many runs at "
                     "once, one thread each (default: the number of cores); a single run uses "
                     "them inside each step (default: 1, see README.md)")
          ->check(CLI::Range(1, 1024));
}

void add_data_options(CLI::App& app, Options& o) {
  app.add_option("--data", o.data_dir,
                 "directory of MNIST-format files (train-images-idx3-ubyte[.gz], ...), e.g. "
                 "MNIST or Fashion-MNIST")
      ->capture_default_str();
  o.train_size_opt =
      app.add_option("--train-size", o.train_size,
                     "training images: the first N of the training files (default: 8000 for "
                     "--compare, all for --full and a single run)")
          ->check(CLI::Range(Index{1}, Index{1} << 40));
  o.test_size_opt = app.add_option("--test-size", o.test_size,
                                   "test images: the first N of the test files (default: all)")
                        ->check(CLI::Range(Index{1}, Index{1} << 40));
  app.add_option("--channels", o.channels, "output channels of the two convs, C1,C2")
      ->delimiter(',')
      ->expected(2)
      ->check(CLI::Range(Index{1}, Index{4096}))
      ->capture_default_str();
  app.add_option("--hidden", o.architecture.hidden, "width of the hidden linear layer")
      ->check(CLI::Range(Index{1}, Index{1} << 16))
      ->capture_default_str();
}

void add_file_options(CLI::App& app, Options& o) {
  o.save_opt = app.add_option("--save", o.save_path, "save the trained parameters to FILE");
  o.load_opt = app.add_option("--load", o.load_path,
                              "load parameters from FILE (saved with the same --channels and "
                              "--hidden) before training, or with --eval-only instead of it");
  app.add_flag("--eval-only", o.eval_only,
               "with --load: only evaluate the loaded model on the test set "
               "(forward pass of --mode, default fqt: 8-bit)");
  o.profile_opt = app.add_flag(
      "--profile", o.profile,
      "single run: print the gradient variance decomposition per tensor after training");
  o.variance_table_opt = app.add_flag(
      "--variance-table", o.variance_table,
      "single run: record every layer's output gradient dL/dY on one batch before and after "
      "training, and print each gradient quantizer's exact variance on them at 2, 4 and 8 bits "
      "relative to the paper's configuration");
}

void add_compare_options(CLI::App& app, Options& o) {
  o.csv_opt =
      app.add_option("--csv", o.csv, "comparison: CSV file ('' for none)")->capture_default_str();
  o.plot_opt = app.add_option("--plot-prefix", o.plot_prefix,
                              "comparison: PNG plots PREFIX_accuracy.png and "
                              "PREFIX_variance.png, with gnuplot ('' for none)")
                   ->capture_default_str();
  o.seeds_opt = app.add_option("--seeds", o.seeds,
                               "comparison: seeds of the two lowest bit widths (and of QAT and "
                               "the runs without master weights): the runs again with seed+1, "
                               "..., their accuracy's mean and spread; 1 for none (the tables "
                               "use the first seed)")
                    ->check(CLI::Range(1, 16))
                    ->capture_default_str();
  o.compare_bits_opt =
      app.add_option("--compare-bits", o.compare_bits,
                     "comparison: grad-input bit widths (default 8,5,4,3,2; --full 8,...,1)")
          ->delimiter(',')
          ->check(CLI::Range(1, 8));
  o.compare_quantizers_opt =
      app.add_option("--compare-quantizers", o.compare_quantizers,
                     "comparison: quantizers, each on every --compare-grids grid (default ptq, "
                     "psq, bhq when only --compare-grids is given)")
          ->delimiter(',')
          ->check(CLI::IsMember(fqt_examples::grad_input_quantizer_names(), CLI::ignore_case));
  o.compare_grids_opt =
      app.add_option("--compare-grids", o.compare_grids,
                     "comparison: grids of every --compare-quantizers quantizer (default paper, "
                     "auto when only --compare-quantizers is given)")
          ->delimiter(',')
          ->check(CLI::IsMember(fqt_examples::grid_names(), CLI::ignore_case));
  o.compare_weights_opt =
      app.add_option("--compare-weights", o.compare_weights,
                     "comparison: rows of FQT without master weights, BHQ 4-bit grad-input on "
                     "the paper grid with weights and momentum stored as int16 or int8 codes, "
                     "beside the same run with fp32 master weights ('none' for no rows)")
          ->delimiter(',')
          ->check(CLI::IsMember({"int16", "int8", "none"}))
          ->capture_default_str();
  app.add_option("--profile-passes", o.variance.fqt_passes,
                 "variance profile: K FQT backward passes on one batch")
      ->check(CLI::Range(2, 100000))
      ->capture_default_str();
  app.add_option("--profile-batches", o.variance.sampling_batches,
                 "variance profile: M batches for the QAT sampling variance")
      ->check(CLI::Range(2, 100000))
      ->capture_default_str();
  app.add_option("--progress", o.progress_name,
                 "progress on stderr: auto (a bar on a terminal, lines otherwise), bar, lines, "
                 "epochs or none")
      ->check(CLI::IsMember({"auto", "bar", "lines", "epochs", "none"}))
      ->capture_default_str();
}

// Options of one mode given to the other are mistakes, not silently ignored.
void check_usage(const Options& o) {
  if (o.compare) {
    for (const CLI::Option* opt : {o.grad_input_opt, o.bits_opt, o.grad_weight_opt, o.grid_opt,
                                   o.save_opt, o.load_opt, o.profile_opt, o.variance_table_opt}) {
      if (opt->count() > 0) {
        throw UsageError(opt->get_name() +
                         " applies to a single run: give --mode exact|qat|fqt (the comparison "
                         "sets the quantizers itself; see --compare-quantizers, --compare-bits "
                         "and --compare-grids)");
      }
    }
  } else {
    for (const CLI::Option* opt :
         {o.compare_bits_opt, o.compare_quantizers_opt, o.compare_grids_opt, o.csv_opt, o.plot_opt,
          o.seeds_opt, o.compare_weights_opt}) {
      if (opt->count() > 0) {
        throw UsageError(opt->get_name() + " applies to the comparison only (no --mode)");
      }
    }
  }
  if (o.eval_only && o.load_path.empty()) throw UsageError("--eval-only needs --load FILE");
  if (o.eval_only && (o.compare_opt->count() > 0 || o.full)) {
    throw UsageError(
        "--eval-only evaluates one loaded model; it cannot be combined with "
        "--compare or --full");
  }
}

// The budget, the schedule, the thread count and the architecture, from the options given.
void resolve_budget(Options& o) {
  const Budget& budget = o.compare ? (o.full ? kFullBudget : kDefaultBudget) : kSingleRunBudget;
  o.default_budget = o.compare && !o.full && o.epochs_opt->count() == 0 &&
                     o.train_size_opt->count() == 0 && o.test_size_opt->count() == 0 &&
                     o.compare_bits_opt->count() == 0;
  o.train.epochs = o.epochs_opt->count() ? o.epochs : budget.epochs;
  if (o.train_size_opt->count() == 0) o.train_size = budget.train_size;
  if (o.test_size_opt->count() == 0) o.test_size = budget.test_size;
  if (o.compare_bits_opt->count() == 0) o.compare_bits = budget.bits;
  o.train.schedule = fqt_train::parse_schedule(o.schedule);
  if (o.train.schedule == fqt_train::Schedule::Step) {
    o.train.milestones = o.milestones.empty()
                             ? std::vector<double>{0.5 * o.train.epochs, 0.75 * o.train.epochs}
                             : o.milestones;
  } else if (!o.milestones.empty()) {
    throw UsageError("--milestones applies to --schedule step");
  }
  // Two OpenMP threads inside the small steps of this CNN were several times slower than one
  // on the shared 2-core machine (libgomp spin-waits at fine-grained barriers), so a single
  // run defaults to one thread and the comparison uses the cores for concurrent runs.
  if (o.threads_opt->count() == 0 && !o.compare) o.threads = 1;
  o.architecture.conv1_channels = o.channels[0];
  o.architecture.conv2_channels = o.channels[1];
}

// The quantization policy of the run (the comparison's runs override mode and quantizers).
void resolve_policy(Options& o) {
  nn::QuantPolicy& policy = o.train.policy;
  policy.mode =
      o.compare ? nn::Mode::FQT : nn::parse_mode(o.mode_name.empty() ? "fqt" : o.mode_name);
  policy.activation_bits = policy.weight_bits = o.forward_bits;
  policy.grad_input.kind = fqt::parse_quantizer_kind(o.grad_input);
  policy.grad_input.bits = o.bits;
  policy.grad_weight.bits = o.grad_weight_bits;
  policy.grad_weight.kind = o.grad_weight == "auto"
                                ? fqt_examples::paired_grad_weight(policy.grad_input.kind)
                                : fqt::parse_quantizer_kind(o.grad_weight);
  fqt_examples::set_gradient_grid(policy, nn::parse_grid(o.grid));
  if (o.backend.empty()) o.backend = !o.compare && kHaveDnnl ? "int8" : "float";
  for (char& c : o.backend) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  policy.backend = backend_named(o.backend);
  if (policy.backend && o.grad_weight == "auto") {
    policy.grad_weight.kind =
        fqt_examples::paired_grad_weight(policy.grad_input.kind, *policy.backend);
  }
  o.train.validate();
  o.progress_style = fqt_train::parse_progress_style(o.progress_name);
}

// ---- the data -----------------------------------------------------------------------------------

struct Data {
  fqt_train::Dataset train_set, test_set;
  double load_seconds = 0;
};

// Loads the data (no training set for --eval-only) and fits the architecture to its images.
Data load_data(Options& o) {
  Data d;
  const auto load_start = std::chrono::steady_clock::now();
  if (!o.eval_only) {
    d.train_set = fqt_train::load_split(o.data_dir, fqt::data::Split::Train, o.train_size);
  }
  d.test_set = fqt_train::load_split(o.data_dir, fqt::data::Split::Test, o.test_size);
  d.load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  if (!o.eval_only && d.train_set.size() < o.train_size && o.train_size_opt->count() > 0) {
    std::fprintf(stderr, "note: --train-size %lld, but %s has only %lld training images\n",
                 static_cast<long long>(o.train_size), o.data_dir.c_str(),
                 static_cast<long long>(d.train_set.size()));
  }
  o.architecture =
      fqt_train::architecture_for(o.eval_only ? d.test_set : d.train_set, o.architecture);
  o.architecture.validate();
  return d;
}

// ---- text ---------------------------------------------------------------------------------------

std::string join(const std::vector<int>& values, const char* separator = ",") {
  std::ostringstream s;
  for (std::size_t i = 0; i < values.size(); ++i) s << (i ? separator : "") << values[i];
  return s.str();
}

// The policy in words; only its forward pass when `forward_only` (evaluation).
std::string policy_text(const nn::QuantPolicy& p, bool forward_only) {
  std::ostringstream s;
  s << nn::to_string(p.mode);
  if (p.quantizes_forward()) {
    s << ", forward " << p.activation_bits << "-bit activations / " << p.weight_bits
      << "-bit weights";
  } else {
    s << ", full-precision forward";
  }
  if (p.quantizes_backward() && !forward_only) {
    s << ", grad-input " << fqt_examples::kind_name(p.grad_input.kind) << " " << p.grad_input.bits
      << " bits, grad-weight " << fqt_examples::kind_name(p.grad_weight.kind) << " "
      << p.grad_weight.bits << " bits, " << fqt_examples::grid_name(p.grad_input.grid) << " grid";
  }
  if (p.quantizes_forward()) s << ", " << p.product_backend().name() << " backend";
  return s.str();
}

std::string schedule_text(const fqt_train::TrainOptions& o) {
  std::ostringstream s;
  s << "lr " << o.learning_rate << " "
    << (o.schedule == fqt_train::Schedule::Cosine ? "cosine" : "step");
  if (o.schedule == fqt_train::Schedule::Step) {
    s << " (x" << o.gamma << " at epochs";
    for (const double m : o.milestones) s << " " << m;
    s << ")";
  }
  if (o.warmup_epochs > 0) s << ", warm-up " << o.warmup_epochs << " epochs";
  s << ", momentum " << o.momentum << ", weight decay " << o.weight_decay;
  return s.str();
}

// ---- the comparison -----------------------------------------------------------------------------

fqt_train::CompareOptions compare_options(const Options& o) {
  fqt_train::CompareOptions options;
  options.train = o.train;
  options.train.evaluate_every_epoch = false;  // the test set once per run, at the end
  options.bits = o.compare_bits;
  if (!o.compare_quantizers.empty() || !o.compare_grids.empty()) {
    std::vector<fqt::QuantizerKind> kinds;
    for (const auto& q : o.compare_quantizers) kinds.push_back(fqt::parse_quantizer_kind(q));
    if (kinds.empty()) kinds = fqt_examples::paper_grad_input_kinds();
    std::vector<fqt::Grid> grids;
    for (const auto& g : o.compare_grids) grids.push_back(nn::parse_grid(g));
    if (grids.empty()) grids = {fqt::Grid::Paper, fqt::Grid::Auto};
    options.series = fqt_examples::cross_series(kinds, grids);
  }
  options.storage_weight_bits.clear();
  for (const auto& w : o.compare_weights) {
    if (w != "none") options.storage_weight_bits.push_back(w == "int16" ? 16 : 8);
  }
  options.variance = o.variance;
  options.workers = o.threads;
  options.validate();
  return options;
}

// What the comparison runs, on which budget and data.
void print_compare_header(const Options& o, const fqt_train::CompareOptions& options,
                          std::size_t runs, const Data& d) {
  const fqt_train::TrainOptions& t = o.train;
  std::printf("# fqt_train --compare%s\n\n", o.full ? " --full" : "");
  std::vector<std::string> series;
  for (const auto& [q, grid] : options.series)
    series.push_back(std::string(fqt_examples::kind_name(q)) + "/" + fqt_examples::grid_name(grid));
  std::printf(
      "Exact, QAT and FQT with the grad-input quantizers (quantizer/grid) %s at %s bits, "
      "grad-weight at %d bits on the same grid (PTQ for PTQ runs, %s for the others), forward "
      "%d bits, on the %s backend; same seed, data order, initial weights and schedule for "
      "every run. The paper grid is the configuration of the paper's released code; auto is "
      "fqt's default.\n\n",
      join(series, ", ").c_str(), join(options.bits).c_str(), o.grad_weight_bits,
      o.train.policy.backend ? "per-channel" : "per-column", o.forward_bits,
      o.train.policy.product_backend().name());
  std::printf(
      "%s: %lld training images, %d epoch%s, batch %lld, %lld test images, %s, seed %llu; "
      "%zu runs, %d at a time (one thread each); variance profile with K = %d FQT passes "
      "and M = %d sampling batches at initialisation and at the end. --full runs the whole "
      "grid (bits 8..1, all 60000 training images, 10 epochs, 44 runs; under 2 hours "
      "here).\n\n",
      o.default_budget ? "default budget" : "budget", static_cast<long long>(d.train_set.size()),
      t.epochs, t.epochs == 1 ? "" : "s", static_cast<long long>(t.batch_size),
      static_cast<long long>(d.test_set.size()), schedule_text(t).c_str(),
      static_cast<unsigned long long>(t.seed), runs,
      std::min<int>(o.threads, static_cast<int>(runs)), o.variance.fqt_passes,
      o.variance.sampling_batches);
  std::printf(
      "data: %s (loaded in %.1f s); model: %s, %lld parameters\n\n", o.data_dir.c_str(),
      d.load_seconds, o.architecture.describe().c_str(),
      static_cast<long long>(fqt_train::Model(o.architecture, fqt::Philox(0)).parameter_count()));
  std::fflush(stdout);
}

// The tables and the reading.
void print_compare_report(const Options& o, const std::vector<fqt_train::RunResult>& results,
                          const Data& d) {
  std::ostringstream report;
  report << "## Runs\n\n"
         << "test acc: final test accuracy; vs QAT: difference in points; var ratio: "
            "gradient quantization variance / QAT sampling variance (sums over the parameter "
            "tensors), at the shared initial weights and at the end of training; s/epoch: "
            "training time per epoch with "
         << std::min<int>(o.threads, static_cast<int>(results.size()))
         << " run(s) sharing the machine.\n\n";
  fqt_train::write_markdown(report, results);
  report << "\n## Accuracy % (variance ratio at the end) by grad-input bits\n\n";
  fqt_train::write_pivot(report, results);
  if (!results.empty()) {
    report << "\n## Memory: the baselines and the weights without a master copy\n\n"
           << "Bytes per parameter (" << results.front().train.optimizer_memory.parameters
           << " parameters) of what the optimizer keeps; layer caches: what the layers keep "
              "between two steps for a batch of "
           << o.train.batch_size << ".\n\n";
    fqt_train::write_memory(report, results);
  }
  report << "\n## Reading (computed from the runs above)\n\n"
         << fqt_train::reading(results, d.test_set.size(), d.test_set.classes) << "\n";
  std::fputs(report.str().c_str(), stdout);
}

// The CSV file and the plots, when asked for.
void write_compare_files(const Options& o, const fqt_train::CompareOptions& options,
                         const std::vector<fqt_train::RunResult>& results, const Data& d) {
  if (!o.csv.empty()) {
    fqt_train::write_csv(o.csv, results, options, d.train_set.size(), d.test_set.size());
    std::printf("wrote %s\n", o.csv.c_str());
  }
  if (o.plot_prefix.empty()) return;
  std::ostringstream subtitle;
  subtitle << d.train_set.size() << " training images, " << o.train.epochs << " epoch"
           << (o.train.epochs == 1 ? "" : "s") << ", batch " << o.train.batch_size << ", seed "
           << o.train.seed;
  for (const auto& m :
       fqt_train::plot(results, o.plot_prefix, subtitle.str(), d.test_set.classes)) {
    std::printf("%s\n", m.c_str());
  }
}

// The two lowest bit widths of every series, QAT, and the rows of weights without a master copy
// with their reference, again with seeds seed+1 .. seed+seeds−1
// (the seed draws the initial weights, the data order and the noise): each run's accuracy per
// seed, the mean and the spread (max − min). One seed cannot separate differences of a point.
void print_seed_spread(const Options& o, const fqt_train::CompareOptions& first_options,
                       const std::vector<fqt_train::RunResult>& first, const Data& d) {
  std::vector<int> low = first_options.bits;
  std::sort(low.begin(), low.end());
  low.resize(std::min<std::size_t>(2, low.size()));
  std::vector<std::pair<std::string, std::vector<double>>> rows;
  auto add = [&](const std::vector<fqt_train::RunResult>& results) {
    for (const auto& r : results) {
      const bool fqt = r.spec.policy.mode == nn::Mode::FQT;
      const bool storage = r.spec.storage_row || r.spec.storage_reference;
      if (r.spec.policy.mode == nn::Mode::Exact ||
          (fqt && !storage &&
           std::find(low.begin(), low.end(), r.spec.policy.grad_input.bits) == low.end()))
        continue;
      auto it = std::find_if(rows.begin(), rows.end(),
                             [&](const auto& row) { return row.first == r.spec.name; });
      if (it == rows.end()) it = rows.insert(rows.end(), {r.spec.name, {}});
      it->second.push_back(100 * std::max(0.0, r.train.final_test_accuracy));
    }
  };
  add(first);
  for (int k = 1; k < o.seeds; ++k) {
    fqt_train::CompareOptions options = first_options;
    options.train.seed = first_options.train.seed + static_cast<std::uint64_t>(k);
    options.bits = low;
    options.variance.fqt_passes = 2;  // the spread is about accuracy: no profile to speak of
    options.variance.sampling_batches = 0;
    add(fqt_train::run_compare(o.architecture, options, d.train_set, d.test_set, o.progress_style));
  }
  std::printf("\n## Seeds: the %s-bit runs, QAT%s with seeds %llu..%llu\n\n",
              join(low, " and ").c_str(),
              first_options.storage_weight_bits.empty()
                  ? ""
                  : " and the runs without master weights (with their reference)",
              static_cast<unsigned long long>(first_options.train.seed),
              static_cast<unsigned long long>(first_options.train.seed + o.seeds - 1));
  std::printf(
      "Test accuracy %% per seed (the first is the table's), mean and spread (max - min):\n\n");
  std::printf("| run |");
  for (int k = 0; k < o.seeds; ++k)
    std::printf(" seed %llu |", static_cast<unsigned long long>(first_options.train.seed + k));
  std::printf(" mean | spread |\n|---|");
  for (int k = 0; k < o.seeds + 2; ++k) std::printf("--:|");
  std::printf("\n");
  for (const auto& [name, acc] : rows) {
    std::printf("| %s |", name.c_str());
    double sum = 0, lo = acc.front(), hi = acc.front();
    for (const double a : acc) {
      std::printf(" %.2f |", a);
      sum += a, lo = std::min(lo, a), hi = std::max(hi, a);
    }
    std::printf(" %.2f | %.2f |\n", sum / static_cast<double>(acc.size()), hi - lo);
  }
}

// One epoch of the default recipe (FQT, BHQ 8-bit grad-input, PTQ 8-bit grad-weight, auto grid)
// on each backend, beside an Exact epoch, one run at a time on one thread: what the integer
// path gains on this model.
void print_backend_timing(const Options& o, const Data& d) {
  struct Timed {
    const char* run;
    nn::QuantPolicy policy;
  };
  nn::QuantPolicy fqt_float;
  fqt_float.activation_bits = fqt_float.weight_bits = o.forward_bits;
  nn::QuantPolicy fqt_int8 = fqt_float;
  fqt_int8.backend = backend_named("int8");
  const std::vector<Timed> runs = {{"exact", nn::QuantPolicy::with_mode(nn::Mode::Exact)},
                                   {"fqt bhq-8-auto", fqt_float},
                                   {"fqt bhq-8-auto", fqt_int8}};
  std::printf("\nbackends: one epoch each of %lld images, batch %lld, one thread\n\n",
              static_cast<long long>(d.train_set.size()),
              static_cast<long long>(o.train.batch_size));
  std::printf("| run | backend | s/epoch | vs Exact | test acc |\n|---|---|--:|--:|--:|\n");
  const int saved = fqt::num_threads();
  fqt::set_num_threads(1);
  double exact_seconds = 0;
  for (const Timed& r : runs) {
    fqt_train::TrainOptions t = o.train;
    t.epochs = 1;
    t.policy = r.policy;
    fqt_train::Model model(o.architecture, fqt_train::seed_stream(t.seed, fqt_train::Stream::Init));
    fqt_train::Progress quiet(fqt_train::ProgressStyle::None);
    const auto result = fqt_train::train(model, d.train_set, d.test_set, t, quiet);
    const double seconds = result.seconds_per_epoch();
    if (exact_seconds == 0) exact_seconds = seconds;
    std::printf("| %s | %s | %.2f | %.2f | %.2f%% |\n", r.run, r.policy.product_backend().name(),
                seconds, seconds / exact_seconds, 100 * result.final_test_accuracy);
    std::fflush(stdout);
  }
  fqt::set_num_threads(saved);
}

void run_comparison(const Options& o, const Data& d) {
  const fqt_train::CompareOptions options = compare_options(o);
  print_compare_header(o, options, fqt_train::compare_runs(options).size(), d);
  const auto results =
      fqt_train::run_compare(o.architecture, options, d.train_set, d.test_set, o.progress_style);
  print_compare_report(o, results, d);
  if (o.seeds > 1) print_seed_spread(o, options, results, d);
  print_backend_timing(o, d);
  write_compare_files(o, options, results, d);
}

// ---- a single run -------------------------------------------------------------------------------

// How a single run ended.
enum class Outcome { Trained, Evaluated, Diverged };

void print_single_header(const Options& o, const Data& d, const fqt_train::Model& model) {
  std::printf("fqt_train: %s\n", policy_text(o.train.policy, o.eval_only).c_str());
  if (o.eval_only) {
    std::printf("data: %s: %lld test images (loaded in %.1f s)\n", o.data_dir.c_str(),
                static_cast<long long>(d.test_set.size()), d.load_seconds);
  } else {
    std::printf("data: %s: %lld training / %lld test images (loaded in %.1f s)\n",
                o.data_dir.c_str(), static_cast<long long>(d.train_set.size()),
                static_cast<long long>(d.test_set.size()), d.load_seconds);
  }
  std::printf("model: %s, %lld parameters\n", o.architecture.describe().c_str(),
              static_cast<long long>(model.parameter_count()));
}

// Trains with the options `t` (o.train, perhaps with loaded codes), the table of epochs on
// stdout, into `result`; false when training diverged.
bool train_and_print(const Options& o, const fqt_train::TrainOptions& t, const Data& d,
                     fqt_train::Model& model, fqt_train::TrainResult& result) {
  std::printf("training: %d epochs, batch %lld, %s, seed %llu, %d thread(s)\n\n", t.epochs,
              static_cast<long long>(t.batch_size), schedule_text(t).c_str(),
              static_cast<unsigned long long>(t.seed), o.threads);
  std::printf("| epoch | train loss | train acc | test acc | seconds | images/s |\n");
  std::printf("|--:|--:|--:|--:|--:|--:|\n");
  std::fflush(stdout);
  fqt_train::Progress progress(o.progress_style);
  result = fqt_train::train(model, d.train_set, d.test_set, t, progress);
  for (const auto& e : result.epochs) {
    std::printf("| %d | %.4f | %.2f%% | %.2f%% | %.1f | %.0f |\n", e.epoch, e.train_loss,
                100 * e.train_accuracy, 100 * e.test_accuracy, e.seconds, e.images_per_second);
  }
  if (result.diverged) {
    std::printf("\n%s\n", result.divergence.c_str());
    return false;
  }
  std::printf("\nfinal test accuracy: %.2f%%\n", 100 * result.final_test_accuracy);
  std::printf("layer caches between steps (conv columns: %s): %.2f MB\n",
              fqt::nn::to_string(t.conv_columns), static_cast<double>(result.cache_bytes) / 1e6);
  const fqt::nn::OptimizerMemory& m = result.optimizer_memory;
  std::printf(
      "weights and optimizer state (weights %s, momentum %d bits): %.2f MB weights + %.2f MB "
      "state = %.2f bytes per parameter (fp32 weights and momentum: 8); forward views %.2f MB, "
      "update workspace %.2f MB\n",
      t.weight_bits == 32 ? "fp32" : (t.weight_bits == 16 ? "int16" : "int8"), t.momentum_bits,
      double(m.weights) / 1e6, double(m.state) / 1e6, m.per_parameter(), double(m.views) / 1e6,
      double(m.workspace) / 1e6);
  if (t.weight_bits != 32) {
    std::printf(
        "weights' stochastic rounding, last epoch: E|Q(w') - w'|^2 / lr^2 = %.4g per step (the "
        "gradient variance that would move the weights as much)\n",
        result.rounding_as_gradient_variance);
  }
  return true;
}

// The gradient variance decomposition per tensor (--profile), with coded weights beside the
// variance their stochastic rounding added per step (`rounding`, over lr^2, the last epoch's
// mean).
void print_profile(const Options& o, const Data& d, fqt_train::Model& model,
                   const std::vector<std::pair<std::string, double>>& rounding) {
  fqt_train::VarianceOptions variance = o.variance;
  variance.batch_size = o.train.batch_size;
  variance.seed = o.train.seed;
  variance.split_by_path = true;
  const auto v = fqt_train::measure_gradient_variance(model, d.train_set, o.train.policy, variance);
  std::printf(
      "\ngradient variance at the end of training (K = %d passes, M = %d batches; the "
      "quantization variance also with only the grad-input or only the grad-weight quantizer, K "
      "passes each):\n",
      v.fqt_passes, v.sampling_batches);
  const bool coded = !rounding.empty();
  if (coded) {
    std::printf(
        "weight rounding: the exact E|Q(w') - w'|^2 of the weights' stochastic rounding per "
        "step, over lr^2 (the gradient variance that would move the weights as much), the last "
        "epoch's mean; 0 for tensors kept in float\n");
  }
  std::printf(
      "| tensor | quantization | grad-input path | grad-weight path | QAT sampling | ratio |%s\n"
      "|---|--:|--:|--:|--:|--:|%s\n",
      coded ? " weight rounding | rounding / sampling |" : "", coded ? "--:|--:|" : "");
  double input = 0, weight = 0, rounded = 0;
  for (const auto& t : v.tensors) {
    std::printf("| %s | %.4g | %.4g | %.4g | %.4g | %.3g |", t.name.c_str(), t.quantization,
                t.grad_input, t.grad_weight, t.sampling,
                t.sampling > 0 ? t.quantization / t.sampling : 0.0);
    input += t.grad_input;
    weight += t.grad_weight;
    if (coded) {
      double r = 0;
      for (const auto& [name, value] : rounding) {
        if (name == t.name) r = value;
      }
      rounded += r;
      std::printf(" %.4g | %.3g |", r, t.sampling > 0 ? r / t.sampling : 0.0);
    }
    std::printf("\n");
  }
  std::printf("| total | %.4g | %.4g | %.4g | %.4g | %.3g |", v.quantization, input, weight,
              v.sampling, v.ratio());
  if (coded) std::printf(" %.4g | %.3g |", rounded, v.sampling > 0 ? rounded / v.sampling : 0.0);
  std::printf("\n");
}

// How a parameter file or a run holds the weights (fqt_train::stored_bits): "int8 codes", "int16
// codes", "float32 values" (32), "int8 and int16 codes" (0); with `file` false, the --weights
// name: int8, int16, fp32.
const char* storage_text(int bits, bool file = true) {
  if (bits == 0) return "int8 and int16 codes";
  if (bits == 8) return file ? "int8 codes" : "int8";
  if (bits == 16) return file ? "int16 codes" : "int16";
  return file ? "float32 values" : "fp32";
}

// For its scope, points the layers' weight slots at loaded 8-bit codes, so that an 8-bit forward
// pass multiplies the codes themselves as its quantized weights, as it did in training
// (nn::StoredWeight), instead of quantizing their dequantized values again on its own grid.
// Codes with a step per row stay out on a backend that multiplies codes (it takes one step per
// tensor): the pass quantizes their values then.
class AttachedCodes {
 public:
  AttachedCodes(std::vector<nn::Parameter<float>> parameters, const fqt_train::StoredWeights& codes,
                const nn::QuantPolicy& policy)
      : parameters_(std::move(parameters)) {
    const bool one_step = policy.product_backend().multiplies_codes();
    for (std::size_t i = 0; i < parameters_.size() && i < codes.size(); ++i) {
      const auto* t = std::get_if<nn::QuantizedTensor<std::int8_t>>(&codes[i]);
      if (t != nullptr && parameters_[i].stored && !(one_step && t->per_row())) {
        parameters_[i].stored->codes = t;
      }
    }
  }
  ~AttachedCodes() {
    for (auto& p : parameters_) {
      if (p.stored) p.stored->codes = nullptr;
    }
  }
  AttachedCodes(const AttachedCodes&) = delete;
  AttachedCodes& operator=(const AttachedCodes&) = delete;

 private:
  std::vector<nn::Parameter<float>> parameters_;
};

Outcome run_single(const Options& o, const Data& d) {
  fqt::set_num_threads(o.threads);
  fqt_train::Model model(o.architecture,
                         fqt_train::seed_stream(o.train.seed, fqt_train::Stream::Init));
  print_single_header(o, d, model);
  fqt_train::TrainOptions train = o.train;
  fqt_train::StoredWeights codes;
  if (!o.load_path.empty()) {
    // The model gets the file's values (a codes record's dequantized values); training resumes
    // from the codes themselves.
    codes = fqt_train::load_model(model, o.load_path);
    const int bits = fqt_train::stored_bits(codes);
    std::printf("loaded parameters from %s (%s)\n", o.load_path.c_str(), storage_text(bits));
    if (!o.eval_only && bits != 32) {
      if (bits == 0) {
        throw std::runtime_error(o.load_path +
                                 ": holds weights as codes of mixed widths (8 and 16 bits); a "
                                 "run stores every weight with one width (--eval-only evaluates "
                                 "them)");
      }
      if (bits != train.weight_bits) {
        throw UsageError("--load " + o.load_path + " holds " + storage_text(bits) +
                         ": resume from them with --weights " + storage_text(bits, false) +
                         " (got --weights " + storage_text(train.weight_bits, false) + ")");
      }
      train.initial_codes = std::make_shared<const fqt_train::StoredWeights>(std::move(codes));
    }
  }
  if (o.eval_only) {
    const AttachedCodes attached(model.parameters(), codes, o.train.policy);
    const double accuracy = fqt_train::evaluate(model, d.test_set, o.train.policy);
    std::printf("test accuracy: %.2f%% on %lld images\n", 100 * accuracy,
                static_cast<long long>(d.test_set.size()));
    return Outcome::Evaluated;
  }
  std::vector<fqt_train::LayerGradient> gradients;
  if (o.variance_table) {
    gradients = fqt_train::layer_gradients(model, d.train_set, o.train.policy, o.train.batch_size,
                                           o.train.seed, "early");
  }
  fqt_train::TrainResult result;
  if (!train_and_print(o, train, d, model, result)) return Outcome::Diverged;
  const fqt_train::StoredWeights& stored = result.stored_weights;
  // What follows runs the forward pass on the trained codes, as training did.
  const AttachedCodes attached(model.parameters(), stored, o.train.policy);
  if (o.profile) print_profile(o, d, model, result.rounding_by_parameter);
  if (o.variance_table) {
    for (auto& g : fqt_train::layer_gradients(model, d.train_set, o.train.policy,
                                              o.train.batch_size, o.train.seed, "late"))
      gradients.push_back(std::move(g));
    std::printf("\n");
    fqt_train::print_variance_table(gradients, {2, 4, 8});
  }
  if (!o.save_path.empty()) {
    // Coded weights are saved as their codes (exactly), the others as float32 values.
    fqt_train::save_model(model, stored, o.save_path);
    std::printf("saved parameters to %s (%s)\n", o.save_path.c_str(),
                storage_text(fqt_train::stored_bits(stored)));
  }
  return Outcome::Trained;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "fqt_train: fully quantized training (FQT) of a small CNN on Fashion-MNIST, and the "
      "comparison of the gradient quantizers PTQ, PSQ and BHQ of Chen et al. (NeurIPS 2020).\n"
      "Without --mode it runs the comparison (--compare) on a budget of about 5 minutes."};
  Options o;
  add_run_options(app, o);
  add_quantization_options(app, o);
  add_training_options(app, o);
  add_data_options(app, o);
  add_file_options(app, o);
  add_compare_options(app, o);
  CLI11_PARSE(app, argc, argv);

  const auto start = std::chrono::steady_clock::now();
  try {
    o.compare = o.mode_opt->count() == 0 && !o.eval_only;
    check_usage(o);
    resolve_budget(o);
    resolve_policy(o);
    const Data data = load_data(o);
    if (o.compare) {
      run_comparison(o, data);
    } else {
      const Outcome outcome = run_single(o, data);
      if (outcome != Outcome::Trained) return outcome == Outcome::Evaluated ? 0 : 1;
    }
  } catch (const UsageError& e) {
    std::fprintf(stderr, "error: %s\nRun with --help for more information.\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  const double total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("total wall time: %s (%.1f s)\n", fqt_train::format_duration(total).c_str(), total);
  return 0;
}
