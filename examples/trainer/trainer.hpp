#pragma once
/// \file
/// \brief The Fashion-MNIST trainer of fqt's main job (namespace fqt_train): a small CNN trained
/// with Exact, QAT or fully quantized training, and the comparison of the paper's gradient
/// quantizers. The executable is examples/fqt_train.cpp; the tests include this header.
///
/// - data.hpp: the data set in memory, subsets, the per-epoch Philox shuffle, batches
/// - model.hpp: the CNN (Architecture, Model)
/// - progress.hpp: the per-epoch progress display
/// - train.hpp: the training loop, evaluation, the gradient variance profile
/// - checkpoint.hpp: saving and loading the parameters (checked binary format)
/// - runs.hpp: the grid of runs of the comparison and running them
/// - report.hpp: the comparison's Markdown tables and the reading computed from them
/// - csv.hpp: the comparison's CSV file
/// - plot.hpp: the comparison's gnuplot plots

#include "trainer/checkpoint.hpp"
#include "trainer/csv.hpp"
#include "trainer/data.hpp"
#include "trainer/model.hpp"
#include "trainer/plot.hpp"
#include "trainer/progress.hpp"
#include "trainer/report.hpp"
#include "trainer/runs.hpp"
#include "trainer/train.hpp"
