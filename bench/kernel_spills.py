"""Do a family's micro-kernels fit its register file?  FMA instructions against vector loads and stores on the
stack, per kernel, in the machine code Numba compiles for each instruction set asked for.

    python bench/kernel_spills.py --isa avx2 --isa native
    git worktree add /tmp/before 7c25b9e && python bench/kernel_spills.py --isa avx2 --src /tmp/before

For each --isa (`native`: the CPU Numba compiles for here; `avx2`: fastmlp.isa.ISA_ENV's target, which any x86-64
machine can compile for), a worker process compiles the CPU engine (both input-gradient paths, float32 and float64)
and prints one JSON line per micro-kernel and signature, and one for each driver: its family, FMA instructions
(`vfmadd...`, `fmla`), and vector stack accesses (a vector register moved to or from, or an FMA reading, an
address on %rsp or %rbp).  A tile that needs more registers than the machine has shows up as stack accesses beside
its FMAs: each is a load or store the tile was written to avoid.  Counts are of the whole function (prologue and
epilogue included), as deterministic as the compiler: no timing is involved.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile


def counts(asm):
    """(FMA instructions, vector stack accesses) in an x86 or AArch64 assembly listing."""
    fma = stack = 0
    for line in asm.splitlines():
        ins = line.strip()
        if not ins or ins.startswith((".", "#")) or ins.endswith(":"):
            continue
        op = ins.split()[0]
        if op.startswith(("vfmadd", "vfnmadd", "vfmsub", "fmla", "fmadd")):
            fma += 1
        if re.search(r"\((%rsp|%rbp)\)", ins) and re.search(r"%[xyz]mm", ins):
            stack += 1
    return fma, stack


def worker():
    """Compile the engine (both input-gradient paths, both dtypes) and print a JSON line per kernel and driver."""
    import numpy as np

    from fastmlp import cpu
    from fastmlp.cpu_engine import Engine
    try:
        from fastmlp.isa import family
    except ImportError:   # a commit from before the families (--src): AVX-512's tiles everywhere
        def family():
            return "avx512 tiles (no families)"
    x = np.random.default_rng(0).standard_normal((60, 44)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int8)
    for dtype in (np.float32, np.float64):
        for wide in (False, True):   # H = 40: both panel widths on every family
            Engine(x, y, hidden_width=40, depth=3, batch_size=50, lrs=np.full(2, 0.01), seeds=np.arange(2),
                   dtype=dtype, wide=wide, threads=2).train_epochs(1)
    family = family()
    for name in sorted(n for n in dir(cpu.mk) if not n.startswith("_") and hasattr(getattr(cpu.mk, n), "signatures")):
        f = getattr(cpu.mk, name)
        for sig in f.signatures:
            fma, stack = counts(f.inspect_asm(sig))
            print(json.dumps({"family": family, "kernel": name, "dtype": str(sig[0].dtype), "fma": fma,
                              "stack_vector_accesses": stack}))
    for name in ("train_epoch", "train_epoch_split"):
        f = getattr(cpu, name)
        for sig in f.signatures:
            fma, stack = counts(f.inspect_asm(sig))
            print(json.dumps({"family": family, "kernel": name + " (whole, callees included)",
                              "dtype": str(sig[5].dtype), "fma": fma, "stack_vector_accesses": stack}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", action="append", choices=["native", "avx2"], default=None,
                    help="instruction set(s) to compile for (default: avx2 and native)")
    ap.add_argument("--cache-dir", default=None, help="Numba cache of the workers (default: a fresh one per isa)")
    ap.add_argument("--src", default=None, help="compile the fastmlp package found in this directory, e.g. a worktree "
                                                "of an earlier commit (default: the one Python imports)")
    args = ap.parse_args()
    from fastmlp.isa import ISA_ENV
    with tempfile.TemporaryDirectory() as tmp:
        for isa in args.isa or ["avx2", "native"]:
            cache = args.cache_dir or os.path.join(tmp, isa)
            env = os.environ | ISA_ENV.get(isa, {}) | {"NUMBA_CACHE_DIR": cache}
            if args.src:
                env["PYTHONPATH"] = os.path.abspath(args.src)
            subprocess.run([sys.executable, __file__, "--worker"], env=env, check=True)


if __name__ == "__main__":
    worker() if sys.argv[1:] == ["--worker"] else main()
