// Elementwise activations, CPU reference, fp32 and fp64: sigmoid, SiLU, and the SwiGLU product
// of Qwen3.5's MLP (spec §1.7), forward and input gradient. All arrays hold n elements; outputs
// may equal an input of the same call.
#pragma once

#include <cmath>
#include <cstdint>

namespace s0 {

// As torch computes them: 1 / (1 + exp(-x)) and x / (1 + exp(-x)). exp(-x) overflowing to inf
// for very negative x gives 0 and -0, never NaN.
template <typename T>
inline T Sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}
template <typename T>
inline T Silu(T x) {
  return x / (T(1) + std::exp(-x));
}
// d silu / dx = s * (1 + x * (1 - s)), s = sigmoid(x).
template <typename T>
inline T SiluDerivative(T x) {
  const T s = Sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

template <typename T>
void SigmoidForward(const T* x, T* y, int64_t n);
// dx = dy * s * (1 - s), s = sigmoid(x).
template <typename T>
void SigmoidBackward(const T* x, const T* dy, T* dx, int64_t n);

template <typename T>
void SiluForward(const T* x, T* y, int64_t n);
template <typename T>
void SiluBackward(const T* x, const T* dy, T* dx, int64_t n);

// act = silu(gate) * up (gate_proj and up_proj outputs, [T, I]).
template <typename T>
void SwiGluForward(const T* gate, const T* up, T* act, int64_t n);
// dgate = dact * up * silu'(gate); dup = dact * silu(gate).
template <typename T>
void SwiGluBackward(const T* gate, const T* up, const T* dact, T* dgate, T* dup, int64_t n);

}  // namespace s0
