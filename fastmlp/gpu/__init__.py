"""The GPU backend: CUDA kernels (kernels/*.cu, shipped inside this package) launched through CuPy, and cuBLAS.

  device    the kernel sources, the macros they are compiled with, the stream, compiled kernels, availability
  cublas    cuBLAS through ctypes: handles and strided-batched GEMMs
  launch    typed launchers, one per kernel
  data      datasets generated on the GPU (the same samples as fastmlp.tasks.generate)
  engine    GpuEngine, the engine contract of fastmlp.engine on the GPU

Importing it never imports CuPy; fastmlp.backend decides whether it can run.
"""
from .data import generate
from .device import (DTYPE_FREE, KERNELS, available, compile_options, defines, device_name, kernel_dir,
                     source)
from .engine import GpuEngine, graphs_default
from .launch import (REPORT, bias_relu, epoch_begin, epoch_end, evaluate, gather_rows, gaussian_rows, init_values,
                     labeled_rows, permutation, philox_words, relu_backward, softmax_xent)

__all__ = ["DTYPE_FREE", "GpuEngine", "KERNELS", "REPORT", "available", "bias_relu", "compile_options", "defines",
           "device_name", "epoch_begin", "epoch_end", "evaluate", "gather_rows", "gaussian_rows", "generate",
           "graphs_default", "init_values", "kernel_dir", "labeled_rows", "permutation", "philox_words",
           "relu_backward", "softmax_xent", "source"]
