"""Do a family's micro-kernels fit its register file?  FMA instructions against vector loads and stores on the
stack, per kernel, in the machine code Numba compiles for each instruction set asked for.

    python bench/kernel_spills.py --isa avx2 --isa native
    git worktree add ../before 7c25b9e && python bench/kernel_spills.py --isa avx2 --src ../before

For each --isa (`native`: the CPU Numba compiles for here; `avx2`: fastmlp.isa.ISA_ENV's target, which any x86-64
machine can compile for), a worker process compiles the CPU engine (both input-gradient paths, float32 and float64)
and prints one JSON line per micro-kernel and signature, and one for each driver: its family, FMA instructions
(`vfmadd...`, `fmla`), and vector stack accesses (a vector register moved to or from, or an FMA reading, an
address on %rsp or %rbp), in the whole function (`fma`, `stack`) and in its innermost loops that hold FMAs, the
reductions (`loop_fma`, `loop_stack`).  A tile that needs more registers than the machine has shows up as stack
accesses inside its reduction loop beside its FMAs: each is a load or store the tile was written to avoid (outside
the loop, Numba's prologue and epilogue move array descriptors through the stack with vector moves too).  As
deterministic as the compiler: no timing is involved.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile


FMA = ("vfmadd", "vfnmadd", "vfmsub", "vfnmsub", "fmla", "fmadd")


def _is_fma(ins):
    return ins.split()[0].startswith(FMA)


def _is_stack_vector(ins):
    return bool(re.search(r"\((%rsp|%rbp)\)", ins) and re.search(r"%[xyz]mm", ins))


def _blocks(lines):
    """The basic blocks of a listing: [(first line, last line, successor block indices)]."""
    code = [i for i, ins in enumerate(lines) if ins and (not ins.startswith(".") or ins.endswith(":"))]
    starts, label_at = [], {}
    for n, i in enumerate(code):
        if lines[i].endswith(":"):
            label_at[lines[i][:-1]] = len(starts)
            if not starts or starts[-1] != i:
                starts.append(i)
        elif not starts or lines[code[n - 1]].split()[0].startswith(("j", "b", "cb", "tb", "ret")):
            starts.append(i)
    blocks = []
    for k, a in enumerate(starts):
        b = (starts[k + 1] if k + 1 < len(starts) else len(lines)) - 1
        last = next((lines[i] for i in range(b, a - 1, -1) if lines[i] and not lines[i].endswith(":")), "")
        op = last.split()[0] if last else ""
        succ = [label_at[last.split()[-1]]] if op.startswith(("j", "b", "cb", "tb")) and last.split()[-1] in label_at \
            else []
        if not op.startswith(("jmp", "ret")) and op not in ("b", "br") and k + 1 < len(starts):
            succ.append(k + 1)                                   # falls through
        blocks.append((a, b, succ))
    return blocks


def _loops(blocks):
    """Natural loops, as sets of block indices: for each back edge (to a block on the depth-first path), the blocks
    that reach its source without passing its header."""
    pred = {k: [] for k in range(len(blocks))}
    for k, (_, _, succ) in enumerate(blocks):
        for t in succ:
            pred[t].append(k)
    loops, on_path, seen = [], set(), set()
    stack = [(0, iter(blocks[0][2]))] if blocks else []
    on_path.add(0)
    seen.add(0)
    while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            on_path.discard(node)
            stack.pop()
        elif nxt in on_path:                                      # a back edge node -> nxt
            body, todo = {nxt, node}, [node]
            while todo:
                for p in pred[todo.pop()]:
                    if p not in body:
                        body.add(p)
                        todo.append(p)
            loops.append(body)
        elif nxt not in seen:
            seen.add(nxt)
            on_path.add(nxt)
            stack.append((nxt, iter(blocks[nxt][2])))
    return loops


def counts(asm):
    """{fma, stack: in the whole listing; loop_fma, loop_stack: in the innermost loops that hold FMAs (the
    reductions) of each of its functions} of an x86 or AArch64 assembly listing."""
    total = {"fma": 0, "stack": 0, "loop_fma": 0, "loop_stack": 0}
    for function in re.split(r"^(?=[^.\s#][^\n]*:\s*$)", asm, flags=re.M):   # at each function's label
        for k, v in _function_counts(function).items():
            total[k] += v
    return total


def _function_counts(asm):
    lines = [line.split("#")[0].split("//")[0].strip() for line in asm.splitlines()]
    blocks = _blocks(lines)
    loops = [body for body in _loops(blocks) if any(_is_fma(lines[i]) for k in body
                                                    for i in range(blocks[k][0], blocks[k][1] + 1) if lines[i]
                                                    and not lines[i].endswith(":") and not lines[i].startswith("."))]
    inner = [body for body in loops if not any(other < body for other in loops)]
    in_loop = {i for body in inner for k in body for i in range(blocks[k][0], blocks[k][1] + 1)}
    code = [i for i, ins in enumerate(lines) if ins and not ins.startswith(".") and not ins.endswith(":")]
    fma_at = {i for i in code if _is_fma(lines[i])}
    stack_at = {i for i in code if _is_stack_vector(lines[i])}
    return {"fma": len(fma_at), "stack": len(stack_at), "loop_fma": len(fma_at & in_loop),
            "loop_stack": len(stack_at & in_loop)}


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
    name_of_family = family()
    for name in sorted(n for n in dir(cpu.mk) if not n.startswith("_") and hasattr(getattr(cpu.mk, n), "signatures")):
        f = getattr(cpu.mk, name)
        for sig in f.signatures:
            print(json.dumps({"family": name_of_family, "kernel": name, "dtype": str(sig[0].dtype),
                              **counts(f.inspect_asm(sig))}))
    for name in ("train_epoch", "train_epoch_split"):
        f = getattr(cpu, name)
        for sig in f.signatures:
            print(json.dumps({"family": name_of_family, "kernel": name + " (callees included)",
                              "dtype": str(sig[5].dtype), **counts(f.inspect_asm(sig))}))


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
