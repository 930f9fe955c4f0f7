#pragma once
/// \file
/// \brief Umbrella header: the quantizers, the statistics and the nn layer. The opt-in headers
/// are not included: `fqt/core/tensor.hpp` (Eigen's unsupported Tensor module) and
/// `fqt/data/idx.hpp` (needs zlib).

#include "fqt/nn.hpp"
#include "fqt/nn/profile.hpp"
#include "fqt/quant.hpp"
#include "fqt/stats/variance.hpp"
