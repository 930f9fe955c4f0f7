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
/// - compare.hpp: the comparison runs and their Markdown, CSV and gnuplot output

#include "trainer/checkpoint.hpp"
#include "trainer/compare.hpp"
#include "trainer/data.hpp"
#include "trainer/model.hpp"
#include "trainer/progress.hpp"
#include "trainer/train.hpp"
