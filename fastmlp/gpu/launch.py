"""Typed launchers of the CUDA kernels, one per kernel, in the order of the kernel files.

Every launcher checks type, dtype, contiguity and size of each array before the launch (CuPy checks nothing
it passes to a kernel) and casts every scalar to the C type of the kernel's parameter (CuPy passes a Python int
as long long and a float as double).
"""
import numpy as np

from ..constants import N_CLASSES
from .device import cupy_module, kernel

REPORT = ("epochs", "converged", "diverged", "stopped", "train_loss", "train_error")   # epoch_end's report columns
SHARED_WORDS = 48 * 1024 // 4     # 32-bit words of shared memory a block gets without opting in
ORDER_THREADS = 256               # threads of each network's block in `permutation`


def need(name, a, dtype, shape=None, size=None):
    cp = cupy_module()
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{name}: need a CuPy array, got {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: need {np.dtype(dtype).name}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: need a C-contiguous array")
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"{name}: need shape {tuple(shape)}, got {a.shape}")
    if size is not None and a.size < size:
        raise ValueError(f"{name}: holds {a.size} elements, the launch touches {size}")


def i32(v):
    v = int(v)
    if not -2**31 <= v < 2**31:
        raise ValueError(f"{v} does not fit a C int")
    return np.int32(v)


def u32(v):
    v = int(v)
    if not 0 <= v < 2**32:
        raise ValueError(f"{v} does not fit a C unsigned int")
    return np.uint32(v)


def real(v, dtype):
    return np.dtype(dtype).type(v)


def blocks(n, threads):
    return (int(n) + threads - 1) // threads


def philox_words(ctr, key):
    """Philox4x32-10 words of counters ctr (n, 4) uint32 under key (k0, k1) -> (n, 4) uint32 (CuPy)."""
    cp = cupy_module()
    ctr = cp.ascontiguousarray(cp.asarray(ctr, dtype=cp.uint32))
    n = ctr.shape[0]
    need("ctr", ctr, np.uint32, shape=(n, 4))
    out = cp.empty((n, 4), dtype=cp.uint32)
    if n:
        kernel("philox_words")((blocks(n, 256),), (256,), (out, ctr, i32(n), u32(key[0]), u32(key[1])))
    return out


def init_values(out, seeds, layer, part, scale):
    """out (M, ...) of every network: one part (W or b) of `layer`'s initial values, (counter b, uniform, factor)
    of reference.init_draws, times scale, drawn from each network's seed on the device (kernels/init.cu)."""
    M = out.shape[0]
    n = out.size // max(M, 1)
    need("out", out, out.dtype)
    need("seeds", seeds, np.uint32, shape=(M,))
    counter, uniform, factor = part
    if M and n:
        kernel("init_values", out.dtype)((blocks(blocks(n, 4), 128), M), (128,),
                                          (out, seeds, i32(n), u32(layer), u32(counter), i32(bool(uniform)),
                                           np.float64(factor), np.float64(scale)))


def labeled_rows(x, y, offsets, n_shifts, seed, stream, start):
    """Draw samples start.. into x (n, D) float32 and label each into y (n,) int8 from the row just drawn."""
    n, D = x.shape
    need("x", x, np.float32, shape=(n, D))
    need("y", y, np.int8, shape=(n,))
    need("offsets", offsets, np.int32)
    if n:
        kernel("labeled_rows")((n,), (64,), (x, y, offsets, i32(offsets.size), i32(n_shifts), u32(seed),
                                              u32(stream), u32(start), i32(n), i32(D)))


def gaussian_rows(z, seed, stream, start):
    """Draw samples start.. into z (n, D) float64 (unrounded: the temperature task filters them)."""
    n, D = z.shape
    need("z", z, np.float64, shape=(n, D))
    if n:
        kernel("gaussian_rows")((n,), (64,), (z, u32(seed), u32(stream), u32(start), i32(n), i32(D)))


def permutation(order, scratch, subsets, n_sub, seeds, epochs, trained, S):
    """order[m] (P,) = the epoch's Fisher-Yates shuffle of subsets[m, :n_sub[m]] for networks m < S that train,
    bit for bit rng.permute_into's: one block of ORDER_THREADS per network, all of them carrying out the shuffle's
    swaps in rounds (kernels/rng.cu). The row and its reservations (2 P words) live in shared memory where they fit;
    else in order and scratch (M, P) uint32, which may be None when they fit."""
    M, P = subsets.shape
    for name, a, dt in (("order", order, np.int32), ("subsets", subsets, np.int32)):
        need(name, a, dt, shape=(M, P))
    for name, a, dt in (("n_sub", n_sub, np.int32), ("seeds", seeds, np.uint32), ("epochs", epochs, np.int32),
                        ("trained", trained, np.int32)):
        need(name, a, dt, shape=(M,))
    use_shared = 2 * P <= SHARED_WORDS
    if use_shared:
        scratch = order.view(np.uint32)   # not read in this variant; the kernel still takes a pointer
    need("scratch", scratch, np.uint32, shape=(M, P))
    if S:
        kernel("permutation")((S,), (ORDER_THREADS,), (order, scratch, subsets, n_sub, seeds, epochs, trained,
                                                        i32(P), i32(use_shared)),
                              shared_mem=8 * P if use_shared else 0)


def gather_rows(out, X, idx, n, trained, diverged, idx_stride, start, R, S):
    """out (S, R, D): row r of network m = X[idx[m * idx_stride + start + r]] if m is live and start + r < n[m]."""
    D = X.shape[1]
    need("out", out, X.dtype, size=S * R * D)
    need("X", X, X.dtype)
    need("idx", idx, np.int32, size=(S - 1) * idx_stride + 1)
    for name, a in (("n", n), ("trained", trained), ("diverged", diverged)):
        need(name, a, np.int32, size=S)
    if S and R:
        kernel("gather_rows", X.dtype)((int(R), int(S)), (min(256, 32 * blocks(D, 32)),),
                                        (out, X, idx, n, trained, diverged, i32(idx_stride), i32(start), i32(R),
                                         i32(D)))


def bias_relu(z, bias, s, relu, S, R):
    """z (S, R, F) in place: z + s bias[m], through the ReLU when relu."""
    F = bias.shape[1]
    need("z", z, bias.dtype, size=S * R * F)
    need("bias", bias, bias.dtype, size=S * F)
    total = S * R * F
    if total:
        kernel("bias_relu", bias.dtype)((min(blocks(total, 256), 1 << 20),), (256,),
                                         (z, bias, real(s, bias.dtype), i32(bool(relu)), i32(S), i32(R),
                                          i32(F)))


def softmax_xent(dz, dzs, bo, loss_sum, steps, diverged, act, zc, Y, idx, n, trained, lrs, s, idx_stride, start,
                 S, B, loss_kind=0):
    """Loss and gradient of one step at the output (see kernels/softmax_xent.cu; loss_kind: the loss's index in
    constants.LOSSES); act (L, M, B, H) is zeroed for a network that diverges in this step."""
    dt = bo.dtype
    L, M, Bb, H = act.shape
    if Bb != B:
        raise ValueError(f"act: need (L, M, {B}, H), got {act.shape}")
    for name, a in (("dz", dz), ("dzs", dzs), ("zc", zc)):
        need(name, a, dt, size=S * B * N_CLASSES)
    need("bo", bo, dt, size=S * N_CLASSES)
    need("act", act, dt)
    need("lrs", lrs, dt, size=S)
    need("loss_sum", loss_sum, np.float64, size=S)
    for name, a in (("steps", steps), ("diverged", diverged), ("n", n), ("trained", trained)):
        need(name, a, np.int32, size=S)
    need("Y", Y, np.int8)
    need("idx", idx, np.int32, size=(S - 1) * idx_stride + 1)
    if S:
        kernel("softmax_xent", dt)((S,), (128,), (dz, dzs, bo, loss_sum, steps, diverged, act, zc, Y, idx, n,
                                                   trained, lrs, real(s, dt), i32(idx_stride), i32(start),
                                                   i32(B), i32(L), i32(H), np.int64(M * B * H),
                                                   i32(loss_kind)))


def relu_backward(dz, dzs, bias, a, lrs, n, trained, diverged, s, start, S, R):
    """dz (S, R, K) = da * (a > 0) in place, dzs = -lr dz, bias -= lr s sum_r dz, for the networks the step at
    row `start` updates (live, n[m] > start); zeros and no bias change for the others."""
    dt = bias.dtype
    K = bias.shape[1]
    for name, arr in (("dz", dz), ("dzs", dzs), ("a", a)):
        need(name, arr, dt, size=S * R * K)
    need("bias", bias, dt, size=S * K)
    need("lrs", lrs, dt, size=S)
    for name, arr in (("n", n), ("trained", trained), ("diverged", diverged)):
        need(name, arr, np.int32, size=S)
    if S:
        kernel("relu_backward", dt)((blocks(K, 128), int(S)), (128,),
                                     (dz, dzs, bias, a, lrs, n, trained, diverged, real(s, dt), i32(start), i32(R),
                                      i32(K)))


def evaluate(err, loss, zc, bo, s, Y, idx, n, trained, diverged, idx_stride, start, R, S, loss_kind=0):
    """err[m] += errors and loss[m] += summed loss (of code loss_kind) of the chunk's rows, for live networks
    m < S."""
    dt = bo.dtype
    need("err", err, np.int64, size=S)
    need("loss", loss, np.float64, size=S)
    need("zc", zc, dt, size=S * R * N_CLASSES)
    need("bo", bo, dt, size=S * N_CLASSES)
    need("Y", Y, np.int8)
    need("idx", idx, np.int32)
    for name, a in (("n", n), ("trained", trained), ("diverged", diverged)):
        need(name, a, np.int32, size=S)
    if S and R:
        kernel("evaluate", dt)((S,), (256,), (err, loss, zc, bo, real(s, dt), Y, idx, n, trained, diverged,
                                               i32(idx_stride), i32(start), i32(R), i32(loss_kind)))


def subtract_f0(zc, f0, bo0, s, idx, n, idx_stride, start, R, S, f0_stride, f0_start=0):
    """zc (S, R, C) in place: the logits less the initial ones, f0 (raw initial logits, network m's at
    f0[m * f0_stride + row * C]) and s bo0 (see kernels/f0.cu), on rows start + r < n[m]."""
    dt = zc.dtype
    need("zc", zc, dt, size=S * R * N_CLASSES)
    need("f0", f0, dt)
    need("bo0", bo0, dt, size=S * N_CLASSES)
    need("idx", idx, np.int32, size=(S - 1) * idx_stride + 1)
    need("n", n, np.int32, size=S)
    if S and R:
        kernel("subtract_f0", dt)((S,), (128,), (zc, f0, bo0, real(s, dt), idx, n, i32(idx_stride), i32(start),
                                                 i32(R), np.int64(f0_stride), i32(f0_start)))


def epoch_begin(st, S):
    """Mark the networks that train this epoch and zero their accumulators (st: the slot arrays)."""
    if S:
        kernel("epoch_begin")((blocks(S, 128),), (128,), (st["trained"], st["diverged"], st["loss_sum"],
                                                             st["steps"], st["err"], st["eloss"], st["active"],
                                                             i32(S)))


def epoch_end(report, st, check, max_epochs, S, target_loss=None):
    """The stop rule (check) or train_epochs' bookkeeping for networks m < S; report (M, 6) float64.  A target_loss
    stops a network at a mean training loss at most target_loss (the loss rule), None at zero training error."""
    need("report", report, np.float64, size=S * len(REPORT))
    if S:
        kernel("epoch_end")((blocks(S, 128),), (128,),
                             (report, st["epochs"], st["active"], st["stopped"], st["converged"], st["diverged"],
                              st["train_loss"], st["train_error"], st["trained"], st["loss_sum"], st["steps"],
                              st["err"], st["eloss"], st["n"], i32(bool(check)), i32(max_epochs),
                              i32(target_loss is not None), np.float64(target_loss or 0.0), i32(S)))


