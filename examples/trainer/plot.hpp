#pragma once
/// \file
/// \brief The comparison's plots, rendered with gnuplot: test accuracy and the variance ratio
/// against the grad-input bit width.

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "common/gnuplot.hpp"
#include "common/path.hpp"
#include "common/quantizers.hpp"
#include "trainer/report.hpp"
#include "trainer/runs.hpp"

namespace fqt_train {

namespace detail {

/// \brief The FQT runs of one quantizer and grid: one line of a plot, sorted by bit width.
struct PlotSeries {
  fqt::QuantizerKind quantizer;        ///< grad-input quantizer
  fqt::Grid grid;                      ///< gradient grid
  std::vector<const RunResult*> runs;  ///< by increasing grad-input bits
};

/// \brief One series per (quantizer, grid) of the FQT runs, in the order they first appear.
inline std::vector<PlotSeries> plot_series(const std::vector<RunResult>& results) {
  std::vector<PlotSeries> series;
  for (const auto& [q, grid] : quantizer_grids(results)) {
    PlotSeries s{q, grid, {}};
    for (const auto& r : results) {
      if (is_fqt_run(r, q, grid)) s.runs.push_back(&r);
    }
    std::sort(s.runs.begin(), s.runs.end(), [](const RunResult* a, const RunResult* b) {
      return a->spec.policy.grad_input.bits < b->spec.policy.grad_input.bits;
    });
    series.push_back(std::move(s));
  }
  return series;
}

/// \brief A positive finite value for a log-scale plot, else gnuplot's NaN.
inline std::string plot_positive(double v) {
  return std::isfinite(v) && v > 0 ? general(v, 6) : std::string("NaN");
}

/// \brief The data blocks $s0, $s1, ...: "bits accuracy%" lines, or with `variance` "bits
/// ratio-at-init ratio-at-end" lines (the end-of-training ratio of a collapsed, dead network says
/// nothing, so it is NaN).
inline std::string plot_data(const std::vector<PlotSeries>& series, bool variance, int classes) {
  std::ostringstream s;
  for (std::size_t i = 0; i < series.size(); ++i) {
    s << "$s" << i << " << EOD\n";
    for (const RunResult* r : series[i].runs) {
      s << r->spec.policy.grad_input.bits << " ";
      if (variance) {
        const bool dead = collapsed(*r, classes);
        s << plot_positive(r->initial.ratio()) << " "
          << (dead ? std::string("NaN") : plot_positive(r->final.ratio())) << "\n";
      } else {
        s << general(100 * accuracy_or_nan(*r), 6) << "\n";
      }
    }
    s << "EOD\n";
  }
  return s.str();
}

/// \brief The line style of a series: a colour and point type per quantizer (by its place among
/// the grad-input kinds), dashed on the Free grid.
inline std::string plot_style(const PlotSeries& series) {
  static const char* const colors[] = {"#d62728", "#1f77b4", "#2ca02c", "#9467bd"};
  const int q =
      static_cast<int>(fqt_examples::position(fqt_examples::grad_input_kinds(), series.quantizer));
  std::ostringstream s;
  s << "lw 2 pt " << 5 + 2 * q << " lc rgb '" << colors[q % 4] << "' dt "
    << (series.grid == fqt::Grid::Free ? 2 : 1);
  return s.str();
}

/// \brief The key of a series, e.g. "BHQ (zero)".
inline std::string plot_title(const PlotSeries& series) {
  return fqt_examples::kind_title(series.quantizer) + " (" + fqt_examples::grid_name(series.grid) +
         ")";
}

/// \brief The plot command's terms of every series for data column `column`, each followed by ",
/// \".
inline std::string plot_lines(const std::vector<PlotSeries>& series, int column) {
  std::ostringstream s;
  for (std::size_t i = 0; i < series.size(); ++i) {
    s << "$s" << i << " using 1:" << column << " with linespoints " << plot_style(series[i])
      << " title " << fqt_examples::gnuplot_quote(plot_title(series[i])) << ", \\\n  ";
  }
  return s.str();
}

/// \brief The script of the accuracy plot, with QAT and Exact as horizontal lines.
inline std::string accuracy_script(const std::vector<RunResult>& results,
                                   const std::vector<PlotSeries>& series, const std::string& png,
                                   const std::string& subtitle, int classes) {
  std::ostringstream s;
  s << "set terminal pngcairo size 960,640 enhanced font 'sans,11'\n"
    << "set output " << fqt_examples::gnuplot_quote(png) << "\n"
    << "set title " << fqt_examples::gnuplot_text("Test accuracy vs grad-input bits\n" + subtitle)
    << " noenhanced\n"
    << "set xlabel 'grad-input bits b'\nset ylabel 'test accuracy (%)'\nset grid\n"
    << "set key bottom right\nset xtics 1\nset offsets 0.2, 0.2, 0, 0\n"
    << plot_data(series, false, classes) << "plot " << plot_lines(series, 2);
  if (const RunResult* qat = find_mode(results, nn::Mode::QAT)) {
    s << general(100 * accuracy_or_nan(*qat), 6)
      << " with lines lw 2 lc rgb 'black' title 'QAT', \\\n  ";
  }
  if (const RunResult* exact = find_mode(results, nn::Mode::Exact)) {
    s << general(100 * accuracy_or_nan(*exact), 6)
      << " with lines lw 1 dt 3 lc rgb 'gray40' title 'Exact', \\\n  ";
  }
  const std::string text = s.str();
  return text.substr(0, text.rfind(", \\\n  ")) + "\n";
}

/// \brief The script of the two variance panels (at initialisation, at the end of training), each
/// with the level 1 of the QAT sampling variance.
inline std::string variance_script(const std::vector<PlotSeries>& series, const std::string& png,
                                   const std::string& subtitle, int classes) {
  std::ostringstream s;
  s << "set terminal pngcairo size 1280,560 enhanced font 'sans,11'\n"
    << "set output " << fqt_examples::gnuplot_quote(png) << "\n"
    << "set multiplot layout 1,2 title "
    << fqt_examples::gnuplot_text("Gradient quantization variance / QAT sampling variance\n" +
                                  subtitle)
    << " noenhanced\n"
    << "set xlabel 'grad-input bits b'\nset ylabel 'variance ratio (log scale)'\n"
    << "set logscale y\nset format y '10^{%L}'\nset grid\nset key top right\nset xtics 1\n"
    << "set offsets 0.2, 0.2, 0, 0\n"
    << plot_data(series, true, classes);
  for (const int column : {2, 3}) {
    s << "set title "
      << (column == 2 ? "'at initialisation (same weights for every run)'"
                      : "'at the end of training (collapsed runs omitted)'")
      << "\nplot " << plot_lines(series, column)
      << "1 with lines lw 2 lc rgb 'black' title 'QAT sampling variance'\n";
  }
  s << "unset multiplot\n";
  return s.str();
}

/// \brief Runs a script (gnuplot's warnings discarded) and says what became of `png`.
inline std::string render(const std::string& script, const std::string& png) {
  const auto run = fqt_examples::run_gnuplot(script, true);
  if (!run.started) return "could not start gnuplot, so " + png + " was not written";
  if (!run.succeeded) {
    return "gnuplot failed (status " + std::to_string(run.status) + "); " + png +
           " may be missing or incomplete";
  }
  return "wrote " + png;
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
  const auto series = detail::plot_series(results);
  if (series.empty()) return {"no FQT runs: nothing to plot"};
  return {detail::render(detail::accuracy_script(results, series, accuracy_png, subtitle, classes),
                         accuracy_png),
          detail::render(detail::variance_script(series, variance_png, subtitle, classes),
                         variance_png)};
}

}  // namespace fqt_train
