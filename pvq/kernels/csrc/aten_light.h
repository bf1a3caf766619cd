// What the CUDA sources' host code takes from PyTorch, without <torch/extension.h> (pybind11 and the declarations of
// every operator, parsed by nvcc's device and host passes alike: most of each extension's first-use build; session
// 34, nvcc -O3 for sm_90 on a 2-core CPU: leafrow8_gemv.cu 172 -> 100 s, leaf8 115 -> 33, split8 94 -> 38, hadamard_rows
// 80 -> 20). The tensor, the two factories used, the device guard, the current stream and the device's properties;
// the bindings (*_bind.cpp, the C++ compiler) keep the full header.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
