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
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fqt/core/parallel.hpp"
#include "trainer/trainer.hpp"

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

std::string join(const std::vector<int>& values, const char* separator = ",") {
  std::ostringstream s;
  for (std::size_t i = 0; i < values.size(); ++i) s << (i ? separator : "") << values[i];
  return s.str();
}

// The policy in words; only its forward pass when `forward_only` (evaluation).
std::string policy_text(const nn::QuantPolicy& p, bool forward_only = false) {
  std::ostringstream s;
  s << nn::to_string(p.mode);
  if (p.quantizes_forward()) {
    s << ", forward " << p.activation_bits << "-bit activations / " << p.weight_bits
      << "-bit weights";
  } else {
    s << ", full-precision forward";
  }
  if (p.quantizes_backward() && !forward_only) {
    s << ", grad-input " << nn::to_string(p.grad_input_quantizer) << " " << p.grad_input_bits
      << " bits, grad-weight " << nn::to_string(p.grad_weight_quantizer) << " "
      << p.grad_weight_bits << " bits, " << fqt_train::grid_name(p.gradient_grid) << " grid";
  }
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

// Thrown for a bad combination of options (exit status 2, like CLI11's own errors).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "fqt_train: fully quantized training (FQT) of a small CNN on Fashion-MNIST, and the "
      "comparison of the gradient quantizers PTQ, PSQ and BHQ of Chen et al. (NeurIPS 2020).\n"
      "Without --mode it runs the comparison (--compare) on a budget of about 5 minutes."};

  // ---- what to run
  std::string mode_name;
  auto* mode_opt = app.add_option("--mode", mode_name,
                                  "train one model: exact, qat or fqt (default: run --compare)")
                       ->check(CLI::IsMember({"exact", "qat", "fqt"}, CLI::ignore_case));
  bool compare_flag = false, full = false;
  auto* compare_opt = app.add_flag("--compare", compare_flag,
                                   "compare Exact, QAT and FQT (PTQ/PSQ/BHQ x bits x grids); the "
                                   "default when --mode is not given");
  auto* full_opt = app.add_flag("--full", full,
                                "the comparison on the whole grid: bits 8..1, all 60000 training "
                                "images, 10 epochs (about 2 hours on 2 cores)");
  mode_opt->excludes(compare_opt)->excludes(full_opt);

  // ---- quantization (single run)
  std::string grad_input = "bhq", grad_weight = "auto", grid = "zero";
  int bits = 8, grad_weight_bits = 8, forward_bits = 8;
  auto* grad_input_opt =
      app.add_option("--grad-input", grad_input, "grad-input quantizer Q_b1: ptq, psq or bhq")
          ->check(CLI::IsMember({"ptq", "psq", "bhq"}, CLI::ignore_case))
          ->capture_default_str();
  auto* bits_opt = app.add_option("--bits,--grad-input-bits", bits, "grad-input bits, 1..8")
                       ->check(CLI::Range(1, 8))
                       ->capture_default_str();
  auto* grad_weight_opt =
      app.add_option("--grad-weight", grad_weight,
                     "grad-weight quantizer Q_b2: ptq, column, or auto (the paper's pairing: ptq "
                     "with PTQ, per-column with PSQ and BHQ)")
          ->check(CLI::IsMember({"auto", "ptq", "column"}, CLI::ignore_case))
          ->capture_default_str();
  app.add_option("--grad-weight-bits", grad_weight_bits, "grad-weight bits, 1..8")
      ->check(CLI::Range(1, 8))
      ->capture_default_str();
  app.add_option("--forward-bits", forward_bits,
                 "bits of the forward quantizer Q_f (activations and weights), 1..8")
      ->check(CLI::Range(1, 8))
      ->capture_default_str();
  auto* grid_opt = app.add_option("--grid", grid,
                                  "gradient grid: free (the paper's PSQ/BHQ grid) or zero (fqt's "
                                  "zero-aligned grid, exact zeros stay exact)")
                       ->check(CLI::IsMember({"free", "zero"}, CLI::ignore_case))
                       ->capture_default_str();

  // ---- training
  fqt_train::TrainOptions train;
  train.batch_size = 64;
  train.learning_rate = 0.05;
  int epochs = 0;
  std::string schedule = "cosine";
  std::vector<double> milestones;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  auto* epochs_opt = app.add_option("--epochs", epochs,
                                    "epochs (default: 3 for --compare, 10 for --full, 5 for a "
                                    "single run)")
                         ->check(CLI::Range(1, 100000));
  app.add_option("--batch-size", train.batch_size, "samples per SGD step")
      ->check(CLI::Range(Index{1}, Index{1} << 20))
      ->capture_default_str();
  app.add_option("--lr", train.learning_rate, "peak learning rate")
      ->check(CLI::Range(1e-9, 100.0))
      ->capture_default_str();
  app.add_option("--schedule", schedule, "learning-rate schedule: cosine or step")
      ->check(CLI::IsMember({"cosine", "step"}))
      ->capture_default_str();
  app.add_option("--warmup-epochs", train.warmup_epochs,
                 "linear warm-up, in epochs (fractions allowed)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
  app.add_option("--milestones", milestones,
                 "step schedule: epochs at which the rate is multiplied by --gamma (default: at "
                 "50% and 75% of training)")
      ->delimiter(',');
  app.add_option("--gamma", train.gamma, "step schedule: decay factor")
      ->check(CLI::Range(1e-9, 1.0))
      ->capture_default_str();
  app.add_option("--momentum", train.momentum, "SGD momentum, in [0, 1)")
      ->check(CLI::Range(0.0, 0.999999))
      ->capture_default_str();
  app.add_option("--weight-decay", train.weight_decay, "L2 weight decay (not on biases)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--seed", train.seed,
                 "seed of every random stream (weights, data order, gradient noise)")
      ->capture_default_str();
  auto* threads_opt =
      app.add_option("--threads", threads,
                     "threads (results do not depend on them): --compare trains this many runs at "
                     "once, one thread each (default: the number of cores); a single run uses "
                     "them inside each step (default: 1, see README.md)")
          ->check(CLI::Range(1, 1024));

  // ---- data and model
  std::string data_dir = fqt_train::default_data_dir();
  Index train_size = 0, test_size = 0;
  fqt_train::Architecture architecture;
  std::vector<Index> channels = {architecture.conv1_channels, architecture.conv2_channels};
  app.add_option("--data", data_dir,
                 "directory of MNIST-format files (train-images-idx3-ubyte[.gz], ...), e.g. "
                 "MNIST or Fashion-MNIST")
      ->capture_default_str();
  auto* train_size_opt =
      app.add_option("--train-size", train_size,
                     "training images: the first N of the training files (default: 8000 for "
                     "--compare, all for --full and a single run)")
          ->check(CLI::Range(Index{1}, Index{1} << 40));
  auto* test_size_opt = app.add_option("--test-size", test_size,
                                       "test images: the first N of the test files (default: all)")
                            ->check(CLI::Range(Index{1}, Index{1} << 40));
  app.add_option("--channels", channels, "output channels of the two convs, C1,C2")
      ->delimiter(',')
      ->expected(2)
      ->check(CLI::Range(Index{1}, Index{4096}))
      ->capture_default_str();
  app.add_option("--hidden", architecture.hidden, "width of the hidden linear layer")
      ->check(CLI::Range(Index{1}, Index{1} << 16))
      ->capture_default_str();

  // ---- files (single run)
  std::string save_path, load_path;
  bool eval_only = false, profile = false;
  auto* save_opt = app.add_option("--save", save_path, "save the trained parameters to FILE");
  auto* load_opt = app.add_option("--load", load_path,
                                  "load parameters from FILE (saved with the same --channels and "
                                  "--hidden) before training, or with --eval-only instead of it");
  auto* eval_opt = app.add_flag("--eval-only", eval_only,
                                "with --load: only evaluate the loaded model on the test set "
                                "(forward pass of --mode, default fqt: 8-bit)");
  auto* profile_opt = app.add_flag(
      "--profile", profile,
      "single run: print the gradient variance decomposition per tensor after training");

  // ---- comparison
  std::string csv = "fqt_compare.csv", plot_prefix = "fqt_compare";
  std::vector<int> compare_bits;
  std::vector<std::string> compare_quantizers = {"ptq", "psq", "bhq"};
  std::vector<std::string> compare_grids = {"free", "zero"};
  fqt_train::VarianceOptions variance;
  std::string progress_name = "auto";
  auto* csv_opt =
      app.add_option("--csv", csv, "comparison: CSV file ('' for none)")->capture_default_str();
  auto* plot_opt = app.add_option("--plot-prefix", plot_prefix,
                                  "comparison: PNG plots PREFIX_accuracy.png and "
                                  "PREFIX_variance.png, with gnuplot ('' for none)")
                       ->capture_default_str();
  auto* compare_bits_opt =
      app.add_option("--compare-bits", compare_bits,
                     "comparison: grad-input bit widths (default 8,5,4,3,2; --full 8,...,1)")
          ->delimiter(',')
          ->check(CLI::Range(1, 8));
  auto* compare_quantizers_opt =
      app.add_option("--compare-quantizers", compare_quantizers, "comparison: quantizers")
          ->delimiter(',')
          ->check(CLI::IsMember({"ptq", "psq", "bhq"}, CLI::ignore_case))
          ->capture_default_str();
  auto* compare_grids_opt = app.add_option("--compare-grids", compare_grids, "comparison: grids")
                                ->delimiter(',')
                                ->check(CLI::IsMember({"free", "zero"}, CLI::ignore_case))
                                ->capture_default_str();
  app.add_option("--profile-passes", variance.fqt_passes,
                 "variance profile: K FQT backward passes on one batch")
      ->check(CLI::Range(2, 100000))
      ->capture_default_str();
  app.add_option("--profile-batches", variance.sampling_batches,
                 "variance profile: M batches for the QAT sampling variance")
      ->check(CLI::Range(2, 100000))
      ->capture_default_str();
  app.add_option("--progress", progress_name,
                 "progress on stderr: auto (a bar on a terminal, lines otherwise), bar, lines, "
                 "epochs or none")
      ->check(CLI::IsMember({"auto", "bar", "lines", "epochs", "none"}))
      ->capture_default_str();

  CLI11_PARSE(app, argc, argv);

  const auto start = std::chrono::steady_clock::now();
  try {
    const bool compare = mode_opt->count() == 0 && !eval_only;
    // Options of one mode given to the other are mistakes, not silently ignored.
    if (compare) {
      for (const CLI::Option* o :
           {grad_input_opt, bits_opt, grad_weight_opt, grid_opt, save_opt, load_opt, profile_opt}) {
        if (o->count() > 0) {
          throw UsageError(o->get_name() +
                           " applies to a single run: give --mode exact|qat|fqt (the comparison "
                           "sets the quantizers itself; see --compare-quantizers, --compare-bits "
                           "and --compare-grids)");
        }
      }
    } else {
      for (const CLI::Option* o :
           {compare_bits_opt, compare_quantizers_opt, compare_grids_opt, csv_opt, plot_opt}) {
        if (o->count() > 0) {
          throw UsageError(o->get_name() + " applies to the comparison only (no --mode)");
        }
      }
    }
    if (eval_only && load_path.empty()) throw UsageError("--eval-only needs --load FILE");
    if (eval_only && (compare_opt->count() > 0 || full)) {
      throw UsageError(
          "--eval-only evaluates one loaded model; it cannot be combined with "
          "--compare or --full");
    }
    (void)eval_opt;

    const Budget& budget = compare ? (full ? kFullBudget : kDefaultBudget) : kSingleRunBudget;
    const bool default_budget = compare && !full && epochs_opt->count() == 0 &&
                                train_size_opt->count() == 0 && test_size_opt->count() == 0 &&
                                compare_bits_opt->count() == 0;
    train.epochs = epochs_opt->count() ? epochs : budget.epochs;
    if (train_size_opt->count() == 0) train_size = budget.train_size;
    if (test_size_opt->count() == 0) test_size = budget.test_size;
    if (compare_bits_opt->count() == 0) compare_bits = budget.bits;
    train.schedule = fqt_train::parse_schedule(schedule);
    if (train.schedule == fqt_train::Schedule::Step) {
      train.milestones = milestones.empty()
                             ? std::vector<double>{0.5 * train.epochs, 0.75 * train.epochs}
                             : milestones;
    } else if (!milestones.empty()) {
      throw UsageError("--milestones applies to --schedule step");
    }
    // Two OpenMP threads inside the small steps of this CNN were several times slower than one
    // on the shared 2-core machine (libgomp spin-waits at fine-grained barriers), so a single
    // run defaults to one thread and the comparison uses the cores for concurrent runs.
    if (threads_opt->count() == 0 && !compare) threads = 1;
    architecture.conv1_channels = channels[0];
    architecture.conv2_channels = channels[1];

    nn::QuantPolicy& policy = train.policy;
    policy.mode = compare ? nn::Mode::FQT : nn::parse_mode(mode_name.empty() ? "fqt" : mode_name);
    policy.activation_bits = policy.weight_bits = forward_bits;
    policy.grad_input_quantizer = nn::parse_grad_input_quantizer(grad_input);
    policy.grad_input_bits = bits;
    policy.grad_weight_bits = grad_weight_bits;
    policy.grad_weight_quantizer =
        grad_weight == "auto" ? (policy.grad_input_quantizer == nn::GradInputQuantizer::PerTensor
                                     ? nn::GradWeightQuantizer::PerTensor
                                     : nn::GradWeightQuantizer::PerColumn)
                              : nn::parse_grad_weight_quantizer(grad_weight);
    policy.gradient_grid = nn::parse_grid(grid);
    train.validate();
    const auto progress_style = fqt_train::parse_progress_style(progress_name);

    // ---- data
    const auto load_start = std::chrono::steady_clock::now();
    fqt_train::Dataset train_set, test_set;
    if (!eval_only) {
      train_set = fqt_train::load_split(data_dir, fqt::data::Split::Train, train_size);
    }
    test_set = fqt_train::load_split(data_dir, fqt::data::Split::Test, test_size);
    const double load_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    if (!eval_only && train_set.size() < train_size && train_size_opt->count() > 0) {
      std::fprintf(stderr, "note: --train-size %lld, but %s has only %lld training images\n",
                   static_cast<long long>(train_size), data_dir.c_str(),
                   static_cast<long long>(train_set.size()));
    }
    const fqt_train::Dataset& shape_source = eval_only ? test_set : train_set;
    architecture = fqt_train::architecture_for(shape_source, architecture);
    architecture.validate();

    if (compare) {
      fqt_train::CompareOptions options;
      options.train = train;
      options.train.evaluate_every_epoch = false;  // the test set once per run, at the end
      options.bits = compare_bits;
      options.quantizers.clear();
      for (const auto& q : compare_quantizers) {
        options.quantizers.push_back(nn::parse_grad_input_quantizer(q));
      }
      options.grids.clear();
      for (const auto& g : compare_grids) options.grids.push_back(nn::parse_grid(g));
      options.variance = variance;
      options.workers = threads;
      options.validate();
      const auto runs = fqt_train::compare_runs(options);

      std::string quantizer_list, grid_list;
      for (const auto& q : compare_quantizers) {
        quantizer_list += (quantizer_list.empty() ? "" : ", ") + q;
      }
      for (const auto& g : compare_grids) grid_list += (grid_list.empty() ? "" : " and ") + g;
      std::printf("# fqt_train --compare%s\n\n", full ? " --full" : "");
      std::printf(
          "Exact, QAT and FQT with the grad-input quantizers %s at %s bits on the %s grid%s, "
          "grad-weight at %d bits (PTQ for PTQ runs, per-column for PSQ/BHQ), forward %d bits; "
          "same seed, data order, initial weights and schedule for every run.\n\n",
          quantizer_list.c_str(), join(options.bits).c_str(), grid_list.c_str(),
          compare_grids.size() == 1 ? "" : "s", grad_weight_bits, forward_bits);
      std::printf(
          "%s: %lld training images, %d epoch%s, batch %lld, %lld test images, %s, seed %llu; "
          "%zu runs, %d at a time (one thread each); variance profile with K = %d FQT passes "
          "and M = %d sampling batches at initialisation and at the end. --full runs the whole "
          "grid (bits 8..1, all 60000 training images, 10 epochs, 50 runs; about 2 hours "
          "here).\n\n",
          default_budget ? "default budget" : "budget", static_cast<long long>(train_set.size()),
          train.epochs, train.epochs == 1 ? "" : "s", static_cast<long long>(train.batch_size),
          static_cast<long long>(test_set.size()), schedule_text(train).c_str(),
          static_cast<unsigned long long>(train.seed), runs.size(),
          std::min<int>(threads, static_cast<int>(runs.size())), variance.fqt_passes,
          variance.sampling_batches);
      std::printf(
          "data: %s (loaded in %.1f s); model: %s, %lld parameters\n\n", data_dir.c_str(),
          load_seconds, architecture.describe().c_str(),
          static_cast<long long>(fqt_train::Model(architecture, fqt::Philox(0)).parameter_count()));
      std::fflush(stdout);

      const auto results =
          fqt_train::run_compare(architecture, options, train_set, test_set, progress_style);

      std::ostringstream report;
      report << "## Runs\n\n"
             << "test acc: final test accuracy; vs QAT: difference in points; var ratio: "
                "gradient quantization variance / QAT sampling variance (sums over the parameter "
                "tensors), at the shared initial weights and at the end of training; s/epoch: "
                "training time per epoch with "
             << std::min<int>(threads, static_cast<int>(runs.size()))
             << " run(s) sharing the machine.\n\n";
      fqt_train::write_markdown(report, results);
      report << "\n## Accuracy % (variance ratio at the end) by grad-input bits\n\n";
      fqt_train::write_pivot(report, results);
      report << "\n## Reading (computed from the runs above)\n\n"
             << fqt_train::reading(results, test_set.size(), test_set.classes) << "\n";
      std::fputs(report.str().c_str(), stdout);
      if (!csv.empty()) {
        fqt_train::write_csv(csv, results, options, train_set.size(), test_set.size());
        std::printf("wrote %s\n", csv.c_str());
      }
      if (!plot_prefix.empty()) {
        std::ostringstream subtitle;
        subtitle << train_set.size() << " training images, " << train.epochs << " epoch"
                 << (train.epochs == 1 ? "" : "s") << ", batch " << train.batch_size << ", seed "
                 << train.seed;
        for (const auto& m :
             fqt_train::plot(results, plot_prefix, subtitle.str(), test_set.classes)) {
          std::printf("%s\n", m.c_str());
        }
      }
    } else {
      fqt::set_num_threads(threads);
      fqt_train::Model model(architecture,
                             fqt_train::seed_stream(train.seed, fqt_train::Stream::Init));
      std::printf("fqt_train: %s\n", policy_text(policy, eval_only).c_str());
      if (eval_only) {
        std::printf("data: %s: %lld test images (loaded in %.1f s)\n", data_dir.c_str(),
                    static_cast<long long>(test_set.size()), load_seconds);
      } else {
        std::printf("data: %s: %lld training / %lld test images (loaded in %.1f s)\n",
                    data_dir.c_str(), static_cast<long long>(train_set.size()),
                    static_cast<long long>(test_set.size()), load_seconds);
      }
      std::printf("model: %s, %lld parameters\n", architecture.describe().c_str(),
                  static_cast<long long>(model.parameter_count()));
      if (!load_path.empty()) {
        fqt_train::load_model(model, load_path);
        std::printf("loaded parameters from %s\n", load_path.c_str());
      }
      if (eval_only) {
        const double accuracy = fqt_train::evaluate(model, test_set, policy);
        std::printf("test accuracy: %.2f%% on %lld images\n", 100 * accuracy,
                    static_cast<long long>(test_set.size()));
        return 0;
      }
      std::printf("training: %d epochs, batch %lld, %s, seed %llu, %d thread(s)\n\n", train.epochs,
                  static_cast<long long>(train.batch_size), schedule_text(train).c_str(),
                  static_cast<unsigned long long>(train.seed), threads);
      std::printf("| epoch | train loss | train acc | test acc | seconds | images/s |\n");
      std::printf("|--:|--:|--:|--:|--:|--:|\n");
      std::fflush(stdout);
      fqt_train::Progress progress(progress_style);
      const auto result = fqt_train::train(model, train_set, test_set, train, progress);
      for (const auto& e : result.epochs) {
        std::printf("| %d | %.4f | %.2f%% | %.2f%% | %.1f | %.0f |\n", e.epoch, e.train_loss,
                    100 * e.train_accuracy, 100 * e.test_accuracy, e.seconds, e.images_per_second);
      }
      if (result.diverged) {
        std::printf("\n%s\n", result.divergence.c_str());
        return 1;
      }
      std::printf("\nfinal test accuracy: %.2f%%\n", 100 * result.final_test_accuracy);
      if (profile) {
        variance.batch_size = train.batch_size;
        variance.seed = train.seed;
        const auto v = fqt_train::measure_gradient_variance(model, train_set, policy, variance);
        std::printf("\ngradient variance at the end of training (K = %d passes, M = %d batches):\n",
                    v.fqt_passes, v.sampling_batches);
        std::printf("| tensor | quantization | QAT sampling | ratio |\n|---|--:|--:|--:|\n");
        for (const auto& t : v.tensors) {
          std::printf("| %s | %.4g | %.4g | %.3g |\n", t.name.c_str(), t.quantization, t.sampling,
                      t.sampling > 0 ? t.quantization / t.sampling : 0.0);
        }
        std::printf("| total | %.4g | %.4g | %.3g |\n", v.quantization, v.sampling, v.ratio());
      }
      if (!save_path.empty()) {
        fqt_train::save_model(model, save_path);
        std::printf("saved parameters to %s\n", save_path.c_str());
      }
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
