// fisherkit::_C — op schemas and the Python module that carries the build's torch version.
// Each op has one schema here and one CPU implementation file in csrc/cpu/ (GPU kernels are Triton's,
// in fisherkit/ops/triton/). sqgrad_accumulate has none: the torch reference was within 1.15x of one.
#include <Python.h>
#include <torch/library.h>

#ifndef FISHERKIT_TORCH_VERSION
#define FISHERKIT_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(fisherkit, m) {
  // out[k, n] += scale * ||sum_t g[k,n,t,:] a[n,t,:]^T||^2 (+ ||sum_t g[k,n,t,:]||^2 with bias) ; out (K, N)
  // gram: the T x T Gram form for T > 1 (the caller picks the cheaper one), else per-sample tiles.
  m.def("persample_sqnorm_(Tensor(a!) out, Tensor grad_output, Tensor inputs, float scale, bool bias, bool gram) -> ()");
  // factor <- beta * factor + alpha * [X, 1]^T [X, 1] ; X (N, D), factor (D + append_ones, D + append_ones)
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
