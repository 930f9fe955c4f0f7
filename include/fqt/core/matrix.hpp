#pragma once
/// \file
/// \brief The matrix types of fqt: row-major, rows are samples.

#include <Eigen/Core>
#include <cstdint>

namespace fqt {

/// Index type of every fqt matrix (Eigen's signed index).
using Index = Eigen::Index;

/// \brief A dense row-major matrix. Row i holds sample i; a conv gradient of shape N×C×H×W is the
/// N × (C·H·W) matrix of its rows, exactly as the paper flattens it.
template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// \brief A dense column vector.
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

/// \brief Read-only matrix argument: binds without a copy to any row-major matrix, block or map.
template <class T>
using MatrixCRef = Eigen::Ref<const Matrix<T>>;

/// \brief Writable matrix argument (a row-major matrix, block or map of the right shape).
template <class T>
using MatrixRef = Eigen::Ref<Matrix<T>>;

/// \brief Read-only vector argument.
template <class T>
using VectorCRef = Eigen::Ref<const Vector<T>>;

/// \brief Writable vector argument.
template <class T>
using VectorRef = Eigen::Ref<Vector<T>>;

}  // namespace fqt
