"""`fastmlp train` as a library call: a grid of learning rates x network seeds trained in one engine call on one
training set, each network to its stop, then tested on fresh samples; returns the record (a JSON-ready dict).

Record keys:
  command "train"; task (the task spec and its name); config (every setting, the lists as given)
  networks      one per (lr, seed), lr-major: the engine's NetworkResult, test_error and test_loss
  summary       {n_networks, converged, diverged, not_converged}
  timing        {data_s, compile_s, train_s, test_s, wall_s}
  throughput    {train_network_samples, network_samples_per_s, gflops, note}
  provenance    versions, git commit, backend, device, threads, argv
"""
import time

import numpy as np

from .errors import UsageError
from .reference import DEFAULT_INIT


def check_config(N, L, H, B, max_epochs, n_test):
    """UsageError (one line, what to change) for settings `train` cannot run."""
    for name, value in (("--N", N), ("--H", H), ("--L", L), ("--B", B), ("--max-epochs", max_epochs)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1 (got {value})")
    if n_test < 0:
        raise UsageError(f"--n-test must be 0 or more (got {n_test})")


def run(spec, lrs, seeds, N=1000, L=1, H=100, B=50, seed=0, max_epochs=2000, n_test=10000, param="standard",
        sigma_w2=2.0, sigma_b2=0.0, init=DEFAULT_INIT, init_scale=1.0, dtype="float32", backend="cpu",
        save_params=None, progress=None, note=None):
    """Train len(lrs) x len(seeds) networks (lr-major) in one engine call; returns the record.

    ``progress(epoch, n_active, n_networks)`` is the engine's per-epoch callback; ``note(text)`` hears of the
    phases.  ``save_params``: a path to write every network's final parameters to (.npz: W0, b0, ..., W{L},
    b{L}, W{l} of shape (networks, fan_in, fan_out), in the order of the records, and lr, seed).
    """
    from .backend import engine_class, generate_on
    from .provenance import record
    from .reference import useful_flops_per_sample

    check_config(N, L, H, B, max_epochs, n_test)
    cls = engine_class(backend)
    say = note or (lambda text: None)
    lrs, seeds = list(lrs), list(seeds)
    t0 = time.perf_counter()
    x, y = generate_on(backend, spec, seed, "train", 0, N)   # on the device that trains
    grid_lr = np.repeat(lrs, len(seeds))                     # (M,) lr-major grid
    grid_seed = np.tile(seeds, len(lrs))                     # (M,)
    engine = cls(x, y, H, L, B, grid_lr, grid_seed, param=param, dtype=np.dtype(dtype), sigma_w2=sigma_w2,
                 sigma_b2=sigma_b2, init=init, init_scale=init_scale)
    t_data = time.perf_counter()
    say("compiling kernels (cached on disk after the first run)...")
    compile_s = engine.compile()
    t_ready = time.perf_counter()
    results = engine.fit(max_epochs, progress=progress)
    t_train = time.perf_counter()
    test_err, test_loss = engine.task_metrics(spec, seed, "test", n_test) \
        if n_test > 0 else (np.full(engine.M, np.nan),) * 2
    t_test = time.perf_counter()

    if save_params:
        arrays = {}
        for l, (W, b) in enumerate(engine.params()):
            arrays[f"W{l}"], arrays[f"b{l}"] = W.astype(engine.dtype), b.astype(engine.dtype)
        np.savez(save_params, lr=grid_lr, seed=grid_seed, **arrays)
    samples = int(np.sum(engine.epochs * engine.n_train))   # network-samples through forward + backward
    train_s = t_train - t_ready
    networks = [{**r.to_dict(), "test_error": float(e), "test_loss": float(tl)}
                for r, e, tl in zip(results, test_err, test_loss)]
    return {
        "command": "train",
        "task": spec.to_dict() | {"name": spec.name},
        "config": {"N": N, "L": L, "H": H, "B": B, "lr": lrs, "seeds": seeds, "seed": seed,
                   "max_epochs": max_epochs, "n_test": n_test, "param": param, "sigma_w2": sigma_w2,
                   "sigma_b2": sigma_b2, "init": init, "init_scale": init_scale, "dtype": dtype, "backend": backend,
                   "save_params": save_params},
        "networks": networks,
        "summary": {"n_networks": engine.M, "converged": int(engine.converged.sum()),
                    "diverged": int(engine.diverged.sum()),
                    "not_converged": int((~engine.converged & ~engine.diverged).sum())},
        "timing": {"data_s": t_data - t0, "compile_s": compile_s, "train_s": train_s,
                   "test_s": t_test - t_train, "wall_s": t_test - t0},
        "throughput": {"train_network_samples": samples,
                       "network_samples_per_s": samples / train_s if train_s > 0 else None,
                       "gflops": samples * useful_flops_per_sample(spec.D, H, L) / train_s / 1e9
                       if train_s > 0 else None,
                       "note": "training steps only; the per-epoch stop check is extra forward work"},
        "provenance": record(backend),
    }
