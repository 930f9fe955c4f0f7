#pragma once
/// \file
/// \brief Layers as plain functions over Eigen matrices: linear and conv2d (quantized per a
/// QuantPolicy), and the full-precision relu, max_pool2d and batch_norm2d. This is what a foreign
/// training loop calls from its own hooks; the autograd layer (autograd.hpp, layers.hpp) is built
/// on these functions.
///
/// Conventions:
/// - A batch is a row-major matrix with one sample per row. An image batch N×C×H×W (NCHW) is the
///   N × (C·H·W) matrix of its rows; a conv weight K×C×kh×kw is the K × (C·kh·kw) matrix.
/// - Inputs are `const Eigen::Ref<const Matrix<Scalar>>&` and outputs `Eigen::Ref<Matrix<Scalar>>`
///   of the exact shape (checked), so an `Eigen::Map` of a foreign buffer binds with no copy.
///   Scalar (float or double) is deduced from the cache argument.
/// - Each forward fills a cache with what its backward needs; a cache reused across steps of the
///   same shapes does not allocate. In Mode::Exact a cache copies X and W, or, with its
///   `borrow_exact_operands` set (as fqt's autograd layers set it), keeps views of them: the caller
///   then keeps both alive and unchanged until the backward call. Backward functions say whether
///   they overwrite or accumulate. An output argument of size 0 (an empty matrix or vector) means
///   "not wanted" and is skipped.
/// - What a throw leaves behind: a forward function checks every argument (shapes, sizes that
///   could overflow Index, finiteness) before it touches the cache, so a bad argument leaves the
///   cache as it was, still usable by the backward of the previous forward pass. Past the checks,
///   a throw (a quantizer's range overflow, std::bad_alloc) leaves the cache marked incomplete
///   (`cache.complete == false`); so does default construction. The matching backward then throws
///   std::logic_error instead of reading stale or uninitialised workspaces, and the next forward
///   call refills the cache. The forward's output is unspecified after a throw.
/// - Mode::FQT quantizes the output gradient G twice, for grad-input and grad-weight, from the two
///   independent streams of a GradientStreams; the bias gradient is always full precision.
/// - Every function checks shapes (std::invalid_argument) and finiteness of its inputs and
///   gradients (std::domain_error), naming the function, the argument and the value.
/// - Results are bit-identical for any number of threads.

#include "fqt/nn/ops/batch_norm2d.hpp"
#include "fqt/nn/ops/conv2d.hpp"
#include "fqt/nn/ops/linear.hpp"
#include "fqt/nn/ops/max_pool2d.hpp"
#include "fqt/nn/ops/relu.hpp"
