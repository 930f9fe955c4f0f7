#pragma once
/// \file
/// \brief Umbrella header of fqt's quantizers.

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/core/random.hpp"
#include "fqt/quant/adaptive.hpp"
#include "fqt/quant/affine.hpp"
#include "fqt/quant/block_householder.hpp"
#include "fqt/quant/catalogue.hpp"
#include "fqt/quant/grid.hpp"
#include "fqt/quant/hadamard.hpp"
#include "fqt/quant/per_sample.hpp"
#include "fqt/quant/per_tensor.hpp"
#include "fqt/quant/quantized.hpp"
#include "fqt/quant/rounding.hpp"
#include "fqt/quant/transform.hpp"
