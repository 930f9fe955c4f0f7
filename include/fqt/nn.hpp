#pragma once
/// \file
/// \brief The nn layer of fqt: quantization policy, functional ops, autograd, layers, loss and
/// optimizer.

#include "fqt/nn/autograd.hpp"
#include "fqt/nn/functional.hpp"
#include "fqt/nn/layers.hpp"
#include "fqt/nn/loss.hpp"
#include "fqt/nn/optim.hpp"
#include "fqt/nn/optim_quantized.hpp"
#include "fqt/nn/policy.hpp"
#include "fqt/nn/presets.hpp"
#include "fqt/nn/weight_storage.hpp"
