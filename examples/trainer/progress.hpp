#pragma once
/// \file
/// \brief A per-epoch progress display on a FILE stream (stderr by default): a `\r`-updated bar
/// on a terminal, a few plain lines otherwise (logs, CI), or nothing.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <utility>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"

namespace fqt_train {

/// \brief How progress is shown.
enum class ProgressStyle {
  Auto,    ///< Bar on a terminal, Lines otherwise
  Bar,     ///< one line redrawn with '\r' (at most 10 times a second)
  Lines,   ///< plain lines at a third, two thirds and the end of each epoch
  Epochs,  ///< one line at the end of each epoch (used when several runs train at once)
  None     ///< nothing
};

/// \brief Parses "auto", "bar", "lines", "epochs" or "none"; throws std::invalid_argument
/// otherwise.
inline ProgressStyle parse_progress_style(const std::string& name) {
  if (name == "auto") return ProgressStyle::Auto;
  if (name == "bar") return ProgressStyle::Bar;
  if (name == "lines") return ProgressStyle::Lines;
  if (name == "epochs") return ProgressStyle::Epochs;
  if (name == "none") return ProgressStyle::None;
  fqt::check(false, "fqt_train::parse_progress_style", "unknown progress style '", name,
             "' (expected auto, bar, lines, epochs or none)");
  return ProgressStyle::Auto;
}

/// \brief A duration for people: "42s" below a minute, else "3m07s".
inline std::string format_duration(double seconds) {
  char text[32];
  if (seconds < 60) {
    std::snprintf(text, sizeof(text), "%.0fs", seconds);
  } else {
    std::snprintf(text, sizeof(text), "%dm%02ds", static_cast<int>(seconds / 60),
                  static_cast<int>(seconds) % 60);
  }
  return text;
}

/// \brief True when `stream` is a terminal.
inline bool is_terminal(std::FILE* stream) { return ::isatty(::fileno(stream)) != 0; }

/// \brief Progress of the epochs of a training run: ETA, running loss and accuracy, samples/s.
///
/// Several Progress objects of concurrent runs may share a stream: give them the same mutex and
/// distinct prefixes (and the Epochs or None style: one '\r' line cannot show two runs).
class Progress {
 public:
  /// \param style Auto picks Bar when `stream` is a terminal, else Lines
  /// \param stream where to write (stderr by default, so stdout keeps only the results)
  /// \param prefix written before every line, e.g. "[ 3/32 psq 4b] "
  /// \param lock held while writing, when several objects share the stream (may be null)
  explicit Progress(ProgressStyle style = ProgressStyle::Auto, std::FILE* stream = stderr,
                    std::string prefix = "", std::mutex* lock = nullptr)
      : stream_(stream), style_(style), prefix_(std::move(prefix)), lock_(lock) {
    if (style_ == ProgressStyle::Auto) {
      style_ = is_terminal(stream) ? ProgressStyle::Bar : ProgressStyle::Lines;
    }
  }

  /// \brief Starts an epoch of `total` samples labelled e.g. "epoch 2/5".
  void begin_epoch(const std::string& label, fqt::Index total) {
    label_ = label;
    total_ = total;
    next_line_ = 1;
    start_ = Clock::now();
    last_draw_ = start_ - std::chrono::seconds(1);
  }

  /// \brief Reports `done` of the epoch's samples, with the running mean loss and accuracy.
  void update(fqt::Index done, double loss, double accuracy) {
    if (style_ == ProgressStyle::None || style_ == ProgressStyle::Epochs || total_ <= 0) return;
    const auto now = Clock::now();
    if (style_ == ProgressStyle::Bar) {
      if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
      last_draw_ = now;
      write("\r" + line(done, loss, accuracy, now) + "\033[K");
    } else {
      // Lines at 1/3, 2/3 and 3/3 of the epoch.
      if (done * 3 < next_line_ * total_) return;
      while (next_line_ <= 3 && done * 3 >= next_line_ * total_) ++next_line_;
      write(line(done, loss, accuracy, now) + "\n");
    }
  }

  /// \brief Ends the epoch with a summary (e.g. the test accuracy).
  void end_epoch(const std::string& summary) {
    if (style_ == ProgressStyle::None) return;
    const std::string text = prefix_ + label_ + "  " + summary;
    write(style_ == ProgressStyle::Bar ? "\r" + text + "\033[K\n" : text + "\n");
  }

 private:
  using Clock = std::chrono::steady_clock;

  void write(const std::string& text) {
    std::unique_lock<std::mutex> guard;
    if (lock_) guard = std::unique_lock<std::mutex>(*lock_);
    std::fputs(text.c_str(), stream_);
    std::fflush(stream_);
  }

  std::string line(fqt::Index done, double loss, double accuracy, Clock::time_point now) const {
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
    const double fraction = static_cast<double>(done) / static_cast<double>(total_);
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(fraction * kWidth + 0.5);
    std::string bar = "[" + std::string(static_cast<std::size_t>(filled), '#') +
                      std::string(static_cast<std::size_t>(kWidth - filled), '.') + "]";
    char text[256];
    std::snprintf(
        text, sizeof(text), "%s%s %s %3.0f%% %lld/%lld  loss %.4f  acc %5.1f%%  %.0f img/s  ETA %s",
        prefix_.c_str(), label_.c_str(), bar.c_str(), 100 * fraction, static_cast<long long>(done),
        static_cast<long long>(total_), loss, 100 * accuracy, rate, format_duration(eta).c_str());
    return text;
  }

  std::FILE* stream_;
  ProgressStyle style_;
  std::string prefix_;
  std::mutex* lock_;
  std::string label_;
  fqt::Index total_ = 0;
  fqt::Index next_line_ = 1;
  Clock::time_point start_, last_draw_;
};

}  // namespace fqt_train
