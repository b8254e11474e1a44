"""Do two commits train with the same machine code?  Compiles the CPU engine's Numba drivers of each commit in a
fresh, empty cache and compares the assembly of every driver, callees included.

    python bench/kernel_asm.py 6fa0238 0a35e5d      # a commit against another
    python bench/kernel_asm.py HEAD~1                # a commit against the checkout
    python bench/kernel_asm.py HEAD~1 --dump asm     # and the compared text in asm/old and asm/new, for diff -r

Prints one JSON line per driver and signature: whether its assembly is the same on both sides, and the functions in
it (the driver, its parallel bodies, the micro-kernels and helpers it calls) whose code differs.  What is compared is
the instructions and labels, with the addresses and hashes in symbol names blanked and the data sections (which hold
source paths) and constant-pool labels left out, compiled with a fixed PYTHONHASHSEED (Numba names some constants by
hash()); exits 1 if any driver differs or exists on one side only.

Identical assembly means identical speed, which no timing on a shared machine can show to within a few percent: a
change that leaves the kernels alone (a refactor of the Python around them) is shown neutral this way, and a change
that does touch them is narrowed down to the functions it touched.  Uses the `fastmlp.bench` names that every commit
since the first release has.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from checkouts import checkouts, worker_json


def pyname(label):
    """The Python name in a function's mangled label: _ZN7fastmlp3cpu11train_epochB4v1... -> fastmlp.cpu.train_epoch
    (prefixes such as cpython. or cfunc. kept)."""
    i = label.find("_ZN")
    if i < 0:
        return label[:60]
    j, parts = i + 3, []
    while j < len(label) and label[j].isdigit():
        k = j
        while label[k].isdigit():
            k += 1
        parts.append(label[k:k + int(label[j:k])])
        j = k + int(label[j:k])
    return label[:i] + ".".join(parts)


def worker():
    """In the commit's environment: train a small workload for an epoch (which compiles the drivers at the bench's
    dtype), then print {driver and signature: {function: hash of its normalized assembly}} as JSON."""
    import hashlib
    import re

    from fastmlp import bench as b
    from fastmlp import cpu
    x, y = b.workload_data("W1")
    b.prepare_fastmlp_cpu(x[:300], y[:300], 3, 16, 2, 10, b.BENCH_LR, 0)(1)
    out = {}
    for name in ("train_epoch", "train_epoch_split", "evaluate", "forward"):
        f = getattr(cpu, name, None)
        for sig in (f.signatures if f is not None else []):
            asm = f.inspect_asm(sig).replace(os.getcwd(), "SRC")      # the source's place
            asm = re.sub(r"^\s+\..*\n", "", asm, flags=re.M)           # directives: data (with paths), file names
            # a function's constant pool is labelled before the function's own label, so it would be counted in the
            # function before it: its label goes (its values went with the directives; the uses stay)
            asm = re.sub(r"^\.LCPI\S*:\n", "", asm, flags=re.M)
            asm = re.sub(r"0x[0-9a-f]{6,}|[0-9a-f]{40}", "ID", asm)  # addresses and hashes in symbol names
            asm = re.sub(r"B\d+v\d+", "Bv", asm)                       # Numba's compile counters in mangled names
            parts = {}
            for chunk in re.split(r"^(?=[^.\s][^\n]*:$)", asm, flags=re.M):   # at each function's label
                key = pyname(chunk.split(":", 1)[0])
                parts[key] = parts.get(key, "") + chunk
            out[name + str(sig)[:60]] = {k: hashlib.sha256(v.encode()).hexdigest()[:16] for k, v in parts.items()}
            if os.environ.get("KERNEL_ASM_DUMP"):   # --dump: the compared text itself, a file per function
                where = Path(os.environ["KERNEL_ASM_DUMP"]) / name
                where.mkdir(parents=True, exist_ok=True)
                for k, v in parts.items():
                    (where / (re.sub(r"[^\w.]", "_", k)[:100] + ".s")).write_text(v)
    print(json.dumps(out))


def hashes(src, cache, dump=None):
    # a fixed hash seed: Numba names constants by hash() and orders flag sets in mangled names
    env = {"NUMBA_CACHE_DIR": str(cache), "PYTHONHASHSEED": "0"} | ({"KERNEL_ASM_DUMP": str(dump)} if dump else {})
    return worker_json(__file__, src, env=env)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="a commit")
    ap.add_argument("new", nargs="?", default=None, help="another commit (default: the checkout)")
    ap.add_argument("--dump", default=None, help="write the compared assembly into DIR/old and DIR/new, a file per "
                                                 "driver and function (for diff -r)")
    args = ap.parse_args()
    with checkouts(args.old, args.new) as sources, tempfile.TemporaryDirectory() as caches:
        sides = {key: hashes(src, Path(caches) / key, args.dump and Path(args.dump).resolve() / key)
                 for key, src in zip(("old", "new"), sources)}
    same = True
    for name in sorted(set(sides["old"]) | set(sides["new"])):
        a, b = sides["old"].get(name), sides["new"].get(name)
        equal = a == b
        same &= equal
        differ = sorted(k for k in set(a or {}) | set(b or {}) if (a or {}).get(k) != (b or {}).get(k))
        print(json.dumps({"driver": name, "same": equal, "functions": len(b or a or {}),
                          "functions_that_differ": differ}))
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    worker() if sys.argv[1:] == ["--worker"] else main()
