#pragma once
/// \file
/// \brief Shared by the examples: quoting text for gnuplot scripts and feeding a script to gnuplot.

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace fqt_examples {

/// \brief `text` as a gnuplot single-quoted string (no escapes; '' is a literal quote).
inline std::string gnuplot_quote(const std::string& text) {
  std::string quoted = "'";
  for (const char c : text) quoted += c == '\'' ? std::string("''") : std::string(1, c);
  return quoted + "'";
}

/// \brief `text` as a gnuplot double-quoted string, where backslash escapes work (a line break
/// becomes "\n").
inline std::string gnuplot_text(const std::string& text) {
  std::string quoted = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += c == '\n' ? std::string("\\n") : std::string(1, c);
  }
  return quoted + "\"";
}

/// \brief What became of a script given to gnuplot.
struct GnuplotRun {
  bool started = false;    ///< gnuplot could be started
  bool succeeded = false;  ///< the whole script was written and gnuplot exited with status 0
  int status = 0;          ///< pclose's status
};

/// \brief Pipes `script` to gnuplot. With `quiet`, gnuplot's stderr is discarded (its warnings,
/// e.g. an empty x range, are noise to the caller; a failure still shows in the status).
inline GnuplotRun run_gnuplot(const std::string& script, bool quiet) {
  GnuplotRun run;
  FILE* gp = ::popen(quiet ? "gnuplot 2>/dev/null" : "gnuplot", "w");
  if (!gp) return run;
  run.started = true;
  const bool written = std::fwrite(script.data(), 1, script.size(), gp) == script.size();
  run.status = ::pclose(gp);
  run.succeeded =
      written && run.status != -1 && WIFEXITED(run.status) && WEXITSTATUS(run.status) == 0;
  return run;
}

}  // namespace fqt_examples
