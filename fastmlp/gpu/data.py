"""Datasets generated on the GPU: the same samples as fastmlp.tasks.generate, made where they are trained."""
import numpy as np

from ..tasks import SPLIT_STREAMS, _check_sample_range
from .device import cupy_module, on_device
from .launch import gaussian_rows, labeled_rows


def generate(spec, seed, split, start, n):
    """Samples start .. start+n-1 of a split, generated on the GPU -> x (n, D) float32, y (n,) int8 (CuPy).

    Same samples as fastmlp.tasks.generate: Philox words bit for bit, inputs to float rounding, labels exactly."""
    _check_sample_range(seed, split, start, n)
    cp = cupy_module()
    stream = SPLIT_STREAMS[split]
    if n == 0:                                                   # nothing to launch (and no empty FFT plan)
        return cp.empty((0, spec.D), dtype=cp.float32), cp.empty(0, dtype=cp.int8)
    with on_device():
        if spec.rule == "temperature":
            z = cp.empty((n, spec.D), dtype=cp.float64)
            gaussian_rows(z, seed, stream, start)
            y = (cp.arange(start, start + n, dtype=cp.int64) % 2).astype(cp.int8)   # exactly balanced classes
            return _temperature_rows(z, y, spec), y
        x = cp.empty((n, spec.D), dtype=cp.float32)
        y = cp.empty(n, dtype=cp.int8)
        offsets = cp.asarray(np.asarray(spec.indices, dtype=np.int32))
        labeled_rows(x, y, offsets, spec.D if spec.rule == "global" else 1, seed, stream, start)
        return x, y


def _temperature_rows(z, y, spec):
    """Filter each row of z (n, D) float64 by its class's precision eigenvalues -> x (n, D) float32."""
    cp = cupy_module()
    D = spec.D
    q = cp.arange(D // 2 + 1)                                   # rfft frequencies
    roots = [cp.sqrt(1.0 - 2.0 * beta * cp.cos(2.0 * np.pi * q / D)) for beta in (spec.beta1, spec.beta2)]
    root = cp.where((y == 0)[:, None], roots[0][None, :], roots[1][None, :])   # (n, D/2+1)
    return cp.fft.irfft(cp.fft.rfft(z, axis=1) / root, n=D, axis=1).astype(cp.float32)
