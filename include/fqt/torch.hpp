#pragma once
/// \file
/// \brief fqt inside libtorch (opt-in; needs libtorch, CMake target fqt::torch).
///
/// - fqt::torch::Linear and fqt::torch::Conv2d: drop-ins for torch::nn::Linear and Conv2d (same
///   options, parameters and initialisation) whose backward quantizes the output gradient per an
///   fqt::nn::QuantPolicy (and whose forward quantizes X and W with Q_f in QAT and FQT, unless the
///   policy is nn::presets::gradients_only).
/// - fqt::torch::linear and fqt::torch::conv2d: the same as functions, for users with their own
///   modules, each with a LayerState that holds the quantization, the stream and the workspaces.
/// - fqt::torch::profile_gradients: quantization vs sampling variance per parameter of a model.
///
/// What the adapter decides for the user:
/// - **State** lives in the autograd graph: each recorded pass creates its own autograd node,
///   which owns a workspace from the layer's pool and returns it when the graph is released, so a
///   steady state reuses the same buffers and a layer used twice in one graph keeps two.
/// - **Noise** is fresh for every recorded pass (LayerState's call counter, kept in the modules'
///   buffer "fqt_stream", so torch::save / torch::load resume it).
/// - **Tensors** must be on the CPU and float or double (std::invalid_argument otherwise);
///   non-contiguous ones are copied, as libtorch's own ops accept them.
/// - **Products** run on libtorch's float kernels on fake-quantized operands (Engine::Torch, the
///   default for the simulated backend) or on fqt's functional ops and the policy's backend, e.g.
///   the int8 GEMMs (Engine::Fqt, the default when the policy names a backend).
/// - **Threads**: libtorch's (torch::set_num_threads) run its kernels, fqt's (fqt::set_num_threads
///   or OMP_NUM_THREADS) run the quantizers; a BLAS under libtorch may have its own
///   (OPENBLAS_NUM_THREADS).

#include "fqt/torch/conv2d.hpp"
#include "fqt/torch/layer_state.hpp"
#include "fqt/torch/linear.hpp"
#include "fqt/torch/profile.hpp"
