// fisherkit::_C — op schemas and the Python module that carries the build's torch version.
// Each op has one schema here and one implementation file per device (csrc/cpu/, csrc/cuda/).
#include <Python.h>
#include <torch/library.h>

#ifndef FISHERKIT_TORCH_VERSION
#define FISHERKIT_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(fisherkit, m) {
  // out += scale * sum_{k,n} (sum_t g[k,n,t,:] a[n,t,:]^T)^2 ; out (O, I), g (K, N, T, O), a (N, T, I)
  // bias_out (O), when given, += scale * sum_{k,n} (sum_t g[k,n,t,:])^2 in the same pass.
  m.def(
      "sqgrad_accumulate_(Tensor(a!) out, Tensor(b!)? bias_out, Tensor grad_output, Tensor inputs, float scale) -> ()");
  // factor <- beta * factor + alpha * [X, 1]^T [X, 1] ; X (N, D), factor (D + append_ones, D + append_ones)
  // out[k, n] += scale * ||sum_t g[k,n,t,:] a[n,t,:]^T||^2 (+ ||sum_t g[k,n,t,:]||^2 with bias) ; out (K, N)
  // gram: the T x T Gram form for T > 1 (the caller picks the cheaper one), else per-sample tiles.
  m.def("persample_sqnorm_(Tensor(a!) out, Tensor grad_output, Tensor inputs, float scale, bool bias, bool gram) -> ()");
  m.def("kfac_factor_update_(Tensor(a!) factor, Tensor inputs, float alpha, float beta, bool append_ones) -> ()");
}

static struct PyModuleDef fisherkit_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&fisherkit_module);
  if (module != nullptr) {
    PyModule_AddStringConstant(module, "torch_version", FISHERKIT_TORCH_VERSION);
  }
  return module;
}
