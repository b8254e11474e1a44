"""GPU benchmarks (run by bench/gpu_check.sh), in the order of what they are worth: the GPU engine on W1-W5 with and
without CUDA graphs, W2 and W5 with M = 400, W2 with TF32, W4 with M = 40 (the paper's engine call: 4 candidates x
10 folds, H = 500), the CPU engine on W1-W5 for the GPU/CPU ratio, and the cost of one launch.

    python bench/bench_gpu.py --out-dir "$OUT"                      # everything
    python bench/bench_gpu.py --out-dir "$OUT" --parts gpu           # the GPU part alone, then
    python bench/bench_gpu.py --out-dir "$OUT" --parts cpu --append  # the CPU part, added to the same file

Correctness first: a few epochs of the GPU engine against the CPU engine on the same networks, else no timing.
One JSON line per (workload, impl, M) on stdout, in the format of `fastmlp bench`; --out-dir also gets them as
bench_gpu.jsonl and a summary.json built from every line in that file (so a later --parts cpu --append completes
it; rewritten after every line, so a run cut short keeps what it measured): device names, GPU/CPU ratios, graph
speed-ups, launch costs, the paper-shape rate (docs/gpu.md turns it into a wall time for examples/k2-paper.toml)
and whether W2 with M = 400 reaches the 10 TFLOP/s (float32, no TF32) target. Exit status: 0, 3 below that target,
2 no usable GPU, 1 the correctness check failed.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from fastmlp.backend import engine_class
from fastmlp.bench import DEFAULT_EPOCHS, GPU_IMPLS, IMPLS, WORKLOADS, bench_impl
from fastmlp.errors import UsageError

# Epochs per timed call on the GPU: each call long enough (tens of ms or more) that timer noise does not matter.
GPU_EPOCHS = {"W1": 20, "W2": 10, "W3": 10, "W4": 2, "W5": 1}
TIMED = ("W1", "W2", "W3", "W4", "W5")   # with and without graphs on the GPU; the CPU engine for ratios
BIG = [("W2", 400, 4), ("W5", 400, 1)]   # (workload, M, epochs per timed call)
PAPER = ("W4", 40, 1)   # H = 500 with the paper's M = 40 networks per engine call (graphs only)
TARGET_TFLOPS = 10.0


def check_correctness():
    """Three epochs of 4 networks on the GPU and the CPU engine: parameters within float32 tolerance."""
    g = np.random.default_rng(0)
    x = g.standard_normal((300, 37)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int8)
    args = (x, y, 45, 3, 17, [0.02, 0.05, 0.1, 0.2], [0, 1, 2, 3])
    ge, ce = engine_class("gpu")(*args), engine_class("cpu")(*args)
    ge.train_epochs(3)
    ce.train_epochs(3)
    worst = 0.0
    for (W, b), (Wc, bc) in zip(ge.params(), ce.params()):
        for a, e in ((W, Wc), (b, bc)):
            worst = max(worst, float((np.abs(a - e) - (1e-5 + 1e-4 * np.abs(e))).max()))
    if worst > 0:
        raise SystemExit(f"bench_gpu: the GPU engine disagrees with the CPU engine (excess {worst:g}); not timing")
    print(f"bench_gpu: correctness ok (GPU engine = CPU engine after 3 epochs, {ge.graph_launches} graph launches)",
          file=sys.stderr)


def launch_costs(n=2000):
    """Microseconds per launch of an empty kernel: one by one from Python, and as nodes of a captured graph."""
    import cupy as cp
    k = cp.RawKernel('extern "C" __global__ void noop(int* x) {}', "noop")
    x = cp.zeros(1, dtype=cp.int32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        for _ in range(100):
            k((1,), (32,), (x,))
        s.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            k((1,), (32,), (x,))
        s.synchronize()
        eager = (time.perf_counter() - t0) / n * 1e6
        s.begin_capture()
        for _ in range(n):
            k((1,), (32,), (x,))
        graph = s.end_capture()
        graph.launch(s)
        s.synchronize()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            graph.launch(s)
            s.synchronize()
            times.append(time.perf_counter() - t0)
    return {"eager_launch_us": eager, "graph_node_us": statistics.median(times) / n * 1e6}


def summarize(rows):
    """summary.json from the bench lines (GPU and CPU parts alike; missing parts leave their entries out)."""
    def rate(impl, w, M=None):
        M = M or WORKLOADS[w]["M"]
        for r in rows:
            if r.get("impl") == impl and r.get("workload") == w and r["M"] == M:
                return r
        return None

    summary = {"ratio_gpu_over_cpu": {}, "graph_speedup": {}, "launches_per_step": {}, "target_tflops": TARGET_TFLOPS}
    for r in rows:
        if "launch" in r:
            summary["launch"] = r["launch"]
    for w in ("W1", "W2", "W3", "W4"):
        g, ng, c = rate("fastmlp-gpu", w), rate("fastmlp-gpu-nograph", w), rate("fastmlp-cpu", w)
        if g:
            summary["gpu_device"] = g["device"]
            summary["launches_per_step"][w] = g["launches_per_step"]
            if ng:
                summary["graph_speedup"][w] = g["network_samples_per_s"] / ng["network_samples_per_s"]
        if c:
            summary["cpu_device"], summary["cpu_threads"] = c["device"], c["threads"]
            if g:
                summary["ratio_gpu_over_cpu"][w] = g["network_samples_per_s"] / c["network_samples_per_s"]
    for w, M, _ in BIG:
        g, ng = rate("fastmlp-gpu", w, M), rate("fastmlp-gpu-nograph", w, M)
        if g:
            summary[f"{w}_M{M}_tflops"] = g["gflops"] / 1e3
            if ng:
                summary["graph_speedup"][f"{w}_M{M}"] = g["network_samples_per_s"] / ng["network_samples_per_s"]
    w, M, _ = PAPER
    g = rate("fastmlp-gpu", w, M)
    if g:
        summary["paper_shape"] = {k: g[k] for k in ("workload", "M", "D", "H", "L", "network_samples_per_s",
                                                     "gflops")}
    tf32 = rate("fastmlp-gpu-tf32", "W2")
    if tf32:
        summary["W2_tf32_tflops"] = tf32["gflops"] / 1e3
    if "W2_M400_tflops" in summary:
        summary["meets_target"] = summary["W2_M400_tflops"] >= TARGET_TFLOPS
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", default=os.environ.get("OUT"), help="write bench_gpu.jsonl and summary.json here")
    ap.add_argument("--parts", default="gpu,cpu", help="gpu, cpu or gpu,cpu (the CPU engine gives the ratios)")
    ap.add_argument("--append", action="store_true", help="add to bench_gpu.jsonl instead of starting it afresh")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU engine (no GPU/CPU ratio)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if args.no_cpu:
        parts.discard("cpu")
    if not parts or parts - {"gpu", "cpu"}:
        ap.error(f"--parts: gpu, cpu or gpu,cpu (got {args.parts!r})")
    if "gpu" in parts:
        try:
            engine_class("gpu")
        except UsageError as e:
            print(f"bench_gpu: {e}", file=sys.stderr)
            return 2
    out = Path(args.out_dir) if args.out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        if not args.append or not (out / "bench_gpu.jsonl").exists():
            (out / "bench_gpu.jsonl").write_text("")
    rows = []

    def emit(rec):
        rows.append(rec)
        line = json.dumps(rec)
        print(line, flush=True)
        if out:
            with open(out / "bench_gpu.jsonl", "a") as f:
                f.write(line + "\n")
            every = [json.loads(line) for line in (out / "bench_gpu.jsonl").read_text().splitlines() if line.strip()]
            (out / "summary.json").write_text(json.dumps(summarize(every), indent=1))

    threads = os.cpu_count()
    if "gpu" in parts:
        check_correctness()
        launch = launch_costs()
        print(f"bench_gpu: launch costs {launch}", file=sys.stderr)
        emit({"bench": "launch", "launch": launch})
        for w in TIMED:
            for name in ("fastmlp-gpu", "fastmlp-gpu-nograph"):
                emit(bench_impl(name, GPU_IMPLS[name], w, GPU_EPOCHS[w], args.repeats, threads))
        for w, M, epochs in BIG:
            for name in ("fastmlp-gpu", "fastmlp-gpu-nograph"):
                emit(bench_impl(name, GPU_IMPLS[name], w, epochs, args.repeats, threads, networks=M))
        emit(bench_impl("fastmlp-gpu-tf32", GPU_IMPLS["fastmlp-gpu-tf32"], "W2", GPU_EPOCHS["W2"], args.repeats,
                        threads))
        w, M, epochs = PAPER
        emit(bench_impl("fastmlp-gpu", GPU_IMPLS["fastmlp-gpu"], w, epochs, args.repeats, threads, networks=M))
    if "cpu" in parts:
        for w in TIMED:
            emit(bench_impl("fastmlp-cpu", IMPLS["fastmlp-cpu"], w, DEFAULT_EPOCHS[w], args.repeats, threads))

    if out:
        rows = [json.loads(line) for line in (out / "bench_gpu.jsonl").read_text().splitlines() if line.strip()]
    summary = summarize(rows)
    print(json.dumps({"summary": summary}), flush=True)
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if "gpu" in parts and not summary.get("meets_target", False):
        return 3                                         # measured, but below the target
    return 0


if __name__ == "__main__":
    sys.exit(main())
