"""`fastmlp train` as a library call: a grid of learning rates x network seeds trained in one engine call on one
training set, each network to its stop, then tested on fresh samples; returns the record (a JSON-ready dict).

Record keys:
  command "train"; task (the task spec and its name); config (every setting, the lists as given)
  networks      one per (lr, seed), lr-major: the engine's NetworkResult, test_error and test_loss; a diverged
                network's test error is protocol.DIVERGED_ERROR (0.5) and its test loss null, as in `run`
  test_error    {mean, std (ddof = 1; null for one network), values}: the networks' test errors; all null with
                n_test = 0
  summary       {n_networks, converged, diverged, not_converged}
  timing        {data_s, compile_s, train_s, test_s, wall_s}
  throughput    {train_network_samples, network_samples_per_s, gflops, note}
  provenance    versions, git commit, backend, device, threads, argv
"""
import math
import time

import numpy as np

from .engine import check_training
from .errors import UsageError
from .preflight import check_dtype_values, check_memory, check_outputs, check_sample_counts, engine_bytes
from .protocol import DIVERGED_ERROR, epoch_reporter
from .reference import DEFAULT_INIT, check_init


def parse_floats(text, option):
    """'0.01,0.1' -> [0.01, 0.1]: positive, finite numbers, comma-separated."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated numbers, e.g. 0.01,0.1 (got {text!r})") from None
    if not values:
        raise UsageError(f"{option} needs at least one value")
    for v in values:
        if not math.isfinite(v) or v <= 0:
            raise UsageError(f"{option} values must be positive and finite (got {v:g})")
    return values


def int_ranges(text, option):
    """'0-9', '0,3,5' or '0-4,10' -> [(lo, hi)] inclusive ranges, not yet expanded (so that their size can be
    checked before a list of that size is made)."""
    out = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, None)
                lo, hi = int(lo), int(hi)
                if hi < lo:
                    raise ValueError
                out.append((lo, hi))
            elif part:
                out.append((int(part), int(part)))
    except (ValueError, TypeError):
        raise UsageError(f"{option} takes integers and ranges like 0-9 or 0,3,5 (got {text!r})") from None
    if not out:
        raise UsageError(f"{option} needs at least one value")
    return out


def expand(ranges):
    """[(lo, hi)] inclusive ranges -> the list of their integers."""
    return [v for lo, hi in ranges for v in range(lo, hi + 1)]


def canonical_lrs(text):
    """A --lr list spelled one way ('1e-3, 0.1' -> '0.001,0.1'): one setting, one job identity in a sweep."""
    return ",".join(repr(v) for v in parse_floats(text, "--lr"))


def canonical_seeds(text):
    """A --seeds list spelled one way ('0 - 3, 4, 7' -> '0-4,7': runs of consecutive seeds joined), its seeds
    checked."""
    ranges = int_ranges(text, "--seeds")
    check_seeds(ranges)
    runs = [list(ranges[0])]
    for lo, hi in ranges[1:]:
        if lo == runs[-1][1] + 1:
            runs[-1][1] = hi
        else:
            runs.append([lo, hi])
    return ",".join(f"{lo}-{hi}" if hi > lo else f"{lo}" for lo, hi in runs)


def check_config(N, L, H, B, max_epochs, n_test):
    """UsageError (one line, what to change) for settings `train` cannot run."""
    for name, value in (("--N", N), ("--H", H), ("--L", L), ("--B", B), ("--max-epochs", max_epochs)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1 (got {value})")
    check_sample_counts(N, n_test)


def check_settings(N, L, H, B, lr, seeds, seed=0, max_epochs=2000, n_test=10000, param="standard", sigma_w2=2.0,
                   sigma_b2=0.0, init=DEFAULT_INIT, init_scale=1.0, loss="xent", stop="zero-error", target_loss=None,
                   dtype="float32", f0="keep", **_):
    """UsageError for a `train` job's settings as a sweep gives them (lr and seeds as their comma-separated text),
    before anything runs; the rest of the keyword arguments (backend) are not checked here."""
    check_config(N, L, H, B, max_epochs, n_test)
    lrs = parse_floats(lr, "--lr")
    check_seeds(int_ranges(seeds, "--seeds"))
    if not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32) (got {seed})")
    check_dtype_values(dtype, param, lrs, init_scale, sigma_w2, sigma_b2)
    check_init(init, init_scale)
    check_training(loss, stop, target_loss, f0)


def check_seeds(seeds, option="--seeds"):
    """UsageError unless every network seed lies in [0, 2**32) (ranges (lo, hi) or single seeds)."""
    for s in seeds:
        lo, hi = s if isinstance(s, tuple) else (s, s)
        if not 0 <= lo <= hi < 2**32:
            raise UsageError(f"{option} must lie in [0, 2**32) (got {lo if lo < 0 or lo >= 2**32 else hi})")


def check_size(D, M, N, H, L, dtype="float32", backend="cpu"):
    """UsageError (the estimate-and-refuse rule of fastmlp.preflight) unless M networks on N samples fit."""
    from .backend import array_module
    xp = array_module(backend)
    check_memory(engine_bytes(M, N, D, H, L, np.dtype(dtype).itemsize),
                 f"{M} networks (D = {D}, H = {H}, L = {L}) on N = {N} samples", xp,
                 fix="lower --N, --H or --L, or train fewer --lr x --seeds")


def run(spec, lrs, seeds, N=1000, L=1, H=100, B=50, seed=0, max_epochs=2000, n_test=10000, param="standard",
        sigma_w2=2.0, sigma_b2=0.0, init=DEFAULT_INIT, init_scale=1.0, loss="xent", stop="zero-error",
        target_loss=None, dtype="float32", backend="cpu", save_params=None, save_outputs=None, progress=None,
        note=None, f0="keep"):
    """Train len(lrs) x len(seeds) networks (lr-major) in one engine call; returns the record.

    ``progress(epoch, n_active, n_networks)`` is the engine's per-epoch callback; ``note(text)`` hears of the
    phases.  ``save_params``: a path to write every network's final parameters to (.npz: W0, b0, ..., W{L},
    b{L}, W{l} of shape (networks, fan_in, fan_out), in the order of the records, and lr, seed).
    ``save_outputs``: a path to write every network's function on the test points to (.npz: f (networks, n_test)
    float64, f = z_1 - z_0 the scalar output whose sign is the prediction; y (n_test,) the test labels in {-1, +1};
    lr, seed), the points on which `fastmlp ntk --save-outputs` writes the NTK's predictor.  ``f0``: "keep" or
    "subtract" (fastmlp.engine.F0S: train and report f - f0; then f above is f - f0 too).
    """
    from .backend import engine_class, generate_on
    from .provenance import record
    from .reference import useful_flops_per_sample

    check_config(N, L, H, B, max_epochs, n_test)
    lrs, seeds = list(lrs), list(seeds)
    check_seeds(seeds)
    check_dtype_values(dtype, param, lrs, init_scale, sigma_w2, sigma_b2)
    check_training(loss, stop, target_loss, f0)
    check_outputs(("--save-params", save_params, "npz"), ("--save-outputs", save_outputs, "npz"))
    cls = engine_class(backend)
    check_size(spec.D, len(lrs) * len(seeds), N, H, L, dtype, backend)
    say = note or (lambda text: None)
    t0 = time.perf_counter()
    x, y = generate_on(backend, spec, seed, "train", 0, N)   # on the device that trains
    grid_lr = np.repeat(lrs, len(seeds))                     # (M,) lr-major grid
    grid_seed = np.tile(seeds, len(lrs))                     # (M,)
    engine = cls(x, y, H, L, B, grid_lr, grid_seed, param=param, dtype=np.dtype(dtype), sigma_w2=sigma_w2,
                 sigma_b2=sigma_b2, init=init, init_scale=init_scale, loss=loss, stop=stop, target_loss=target_loss,
                 f0=f0)
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
    if save_outputs:
        f, y_test = engine.task_outputs(spec, seed, "test", n_test)
        np.savez(save_outputs, f=f, y=2 * y_test.astype(np.int8) - 1, lr=grid_lr, seed=grid_seed)
    samples = int(np.sum(engine.epochs * engine.n_train))   # network-samples through forward + backward
    train_s = t_train - t_ready
    # a diverged network's test error is DIVERGED_ERROR, its test loss null: the rule of every record (protocol)
    networks = [{**r.to_dict(), "test_error": DIVERGED_ERROR if r.diverged and n_test > 0 else float(e),
                 "test_loss": None if r.diverged else float(tl)}
                for r, e, tl in zip(results, test_err, test_loss)]
    return {
        "command": "train",
        "task": spec.to_dict() | {"name": spec.name},
        "config": {"N": N, "L": L, "H": H, "B": B, "lr": lrs, "seeds": seeds, "seed": seed,
                   "max_epochs": max_epochs, "n_test": n_test, "param": param, "sigma_w2": sigma_w2,
                   "sigma_b2": sigma_b2, "init": init, "init_scale": init_scale, "loss": loss, "stop": stop,
                   "target_loss": target_loss, "f0": f0, "dtype": dtype, "backend": backend, "save_params": save_params,
                   "save_outputs": save_outputs},
        "networks": networks,
        "test_error": _summary([n["test_error"] for n in networks] if n_test > 0 else None),
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


def _summary(values):
    """{mean, std (ddof = 1; null for one value), values} of test errors (all null for None)."""
    if values is None:
        return {"mean": None, "std": None, "values": None}
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "values": values}


def run_job(spec, lr, seeds, progress=None, **settings):
    """`run` for a sweep's train job: lr and seeds as their comma-separated text (canonical_lrs, canonical_seeds);
    ``progress(text)`` hears of the phases and, at most every protocol.EPOCH_PROGRESS_S, of the epochs."""
    lrs, net_seeds = parse_floats(lr, "--lr"), expand(int_ranges(seeds, "--seeds"))
    epochs = epoch_reporter(progress, f"{len(lrs) * len(net_seeds)} networks", settings.get("max_epochs", 2000))
    return run(spec, lrs, net_seeds, progress=epochs, note=progress, **settings)
