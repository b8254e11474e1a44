"""What every command checks before any work: the outputs it will write, and the memory it will allocate.

Outputs.  `check_outputs` takes every file a command will write (a record, --out, --save-params, --csv, --jsonl, a
figure and its CSV) and refuses, in one line naming the option, a path that is a directory, a directory that does
not exist (files are never written into a directory created on the fly: a mistyped path is refused, not
created), a directory this process cannot create files in (tried, with a file created and removed again), an
existing file it may not replace, a format it cannot write (a .npz output that does not end in .npz, since NumPy
would write another name; a figure whose suffix matplotlib does not know), and two outputs that are one file.
`check_store` does the same for a result store, which it creates (with its parents) when it is missing.

Sizes.  `check_memory` is the one estimate-and-refuse rule: an estimate of the bytes a step will allocate against
what can be allocated now (MemAvailable, or a container's cgroup limit; free GPU memory for CuPy), refused in one
line with both numbers and what to change.  The estimates of data sets, engines and sweep grids are below; the NTK's
are in `fastmlp.ntk`.
"""
import functools
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import UsageError

TMP_PREFIX = ".tmp-"       # every temporary file fastmlp makes in a directory it writes (never read as output)
FORMATS = ("json", "npz", "csv", "jsonl", "figure")
STDOUT_FORMATS = ("csv", "jsonl")   # "-" is stdout for these
JOB_BYTES = 2048           # memory of one job of a sweep grid while it is planned (a Job and its configuration)


# ------------------------------------------------------------------------------------------------ outputs
def figure_formats():
    """The suffixes (without the dot) matplotlib writes figures to."""
    from matplotlib.backend_bases import FigureCanvasBase
    return sorted(FigureCanvasBase.get_supported_filetypes())


def _probe(directory):
    """None when this process can create a file in directory (one is created and removed), else the reason."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX + "probe-")
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(name)
    return None


def check_output(path, option, fmt):
    """The checked path of one output file (``"-"`` stays stdout where the format allows it); UsageError otherwise.

    ``fmt``: json (any name), npz (the name must end in .npz), csv or jsonl (any name, or - for stdout), figure
    (a suffix matplotlib writes).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}")
    path = str(path)
    if path == "-" and fmt in STDOUT_FORMATS:
        return path
    p = Path(path)
    if fmt == "npz" and p.suffix != ".npz":
        raise UsageError(f"{option} {path}: the file is a NumPy .npz archive and its name must end in .npz")
    if fmt == "figure":
        known = figure_formats()
        if p.suffix.lstrip(".").lower() not in known:
            raise UsageError(f"{option} {path}: matplotlib cannot write a figure with suffix "
                             f"{p.suffix or '(none)'!r}; use one of {', '.join('.' + k for k in known)}")
    if p.is_dir():
        raise UsageError(f"{option} {path} is a directory: give a file name")
    parent = p.parent
    if not parent.exists():
        raise UsageError(f"{option} {path}: the directory {parent} does not exist; create it first "
                         f"(mkdir -p {parent})")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is not a directory")
    reason = _probe(parent)
    if reason:
        raise UsageError(f"{option} {path}: cannot write in {parent} ({reason})")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{option} {path}: the file exists and cannot be replaced (not writable)")
    return p


def check_outputs(*outputs):
    """Check every (option, path, format) of a command (None paths are skipped) -> their checked paths, in order.
    Two outputs that are one file are refused too."""
    checked, seen = [], {}
    for option, path, fmt in outputs:
        if path is None:
            checked.append(None)
            continue
        p = check_output(path, option, fmt)
        if p != "-":
            key = os.path.realpath(p)
            if key in seen:
                raise UsageError(f"{seen[key]} and {option} name the same file {path}: give two files")
            seen[key] = option
        checked.append(p)
    return checked


def check_store(path):
    """A result store this process can write: created with its parents when missing -> whether it was created;
    UsageError (one line) when it cannot be created or written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"the store {p} is a file, not a directory: give another --store")
    created = False
    if not p.exists():
        try:
            p.mkdir(parents=True)
            created = True
        except FileExistsError:     # another process made it meanwhile
            pass
        except OSError as e:
            raise UsageError(f"cannot create the store {p} ({e.strerror or e}): give another --store") from None
    reason = _probe(p)
    if reason:
        raise UsageError(f"the store {p} is not writable ({reason}): give another --store or make it writable")
    return created


# -------------------------------------------------------------------------------------------------- sizes
def available_memory(xp=np):
    """Bytes that can be allocated now: MemAvailable (or the cgroup limit, if lower) on the host; free device
    memory plus CuPy's pool cache on a GPU."""
    if xp is not np:
        free, _ = xp.cuda.Device().mem_info
        return int(free + xp.get_default_memory_pool().free_bytes())
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:   # a container's own limit (cgroup v2) can be far below the machine's memory
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit != "max":
                avail = min(avail, int(limit) - int(g.read()))
    except (OSError, ValueError):
        pass
    return int(avail)


def gb(nbytes):
    """Bytes as GB for a message: '8000 GB', '3.2 GB', '0.0115 GB'."""
    return f"{nbytes / 1e9:.0f} GB" if nbytes >= 1e11 else f"{nbytes / 1e9:.3g} GB"


def check_memory(nbytes, what, xp=np, fix="lower --N", available=None):
    """UsageError (one line, with the estimate and what is available) unless nbytes can be allocated.
    ``available``: the bytes available, when the caller measured them (default: `available_memory(xp)`)."""
    avail = available_memory(xp) if available is None else available
    if nbytes > avail:
        where = "on the GPU" if xp is not np else "here"
        raise UsageError(f"{what} needs about {gb(nbytes)} but {gb(avail)} is available {where}; {fix}")


def data_bytes(n, D, rule="local"):
    """Bytes `fastmlp.tasks.generate` allocates for n samples of dimension D: float32 inputs and int8 labels; the
    temperature task also draws float64 Gaussians and filters them through float64 FFTs."""
    return n * D * (4 + (40 if rule == "temperature" else 0)) + n


def check_sample_counts(N, n_test):
    """UsageError unless the training and test sets can be addressed: a sample's index is one 32-bit word."""
    if N > 2**32:
        raise UsageError(f"--N must be at most 2**32 (a sample's index is one 32-bit word; got {N})")
    if not 0 <= n_test <= 2**32:
        raise UsageError(f"--n-test must lie in [0, 2**32] (a sample's index is one 32-bit word; got {n_test})")


@functools.lru_cache(maxsize=None)
def _dtype_range(dtype):
    info = np.finfo(np.dtype(dtype))
    return float(info.max), float(info.smallest_subnormal)


def check_dtype_values(dtype, param="standard", lrs=(), init_scale=1.0, sigma_w2=2.0, sigma_b2=0.0):
    """UsageError naming the option whose value the engine's dtype cannot hold (it would train with inf or 0): the
    learning rates (values of --lr, or (option, value) pairs), the initial scale and, with the NTK
    parameterization, sqrt(sigma_w2) and sqrt(sigma_b2)."""
    largest, smallest = _dtype_range(str(dtype))
    values = [lr if isinstance(lr, tuple) else ("--lr", lr) for lr in lrs] + [("--init-scale", init_scale)]
    if param == "ntk":
        values += [("--sigma-w2", sigma_w2), ("--sigma-b2", sigma_b2)]
    for option, value in values:
        size = abs(value) ** 0.5 if option.startswith("--sigma") else abs(value)
        if size > largest or 0 < size < smallest:
            raise UsageError(f"{option} {value:g} is out of {np.dtype(dtype).name}'s range (it would train with "
                             f"{'inf' if size > 1 else '0'}): use a value nearer 1, or --dtype float64")


def _padded(v, to=8):
    return -(-v // to) * to


def engine_bytes(M, N, D, H, L, itemsize=4, subset_total=None):
    """Bytes an engine of M networks (D -> L hidden layers of width H -> 2) on N samples allocates, roughly: the
    packed parameters (padded to multiples of 8, the hidden weights twice), their float64 initialization and a
    float64 copy, the training subsets (M x N indices by default), the data in and out of the engine, a test chunk,
    and some bookkeeping per network."""
    Dp, Hp = _padded(D), _padded(H)
    packed = Dp * Hp + Hp + (L - 1) * (2 * Hp * Hp + Hp) + 2 * Hp + 2
    plain = D * H + H + (L - 1) * (H * H + H) + 2 * H + 2
    subset_total = M * N if subset_total is None else subset_total
    return (M * (packed * itemsize + 2 * plain * 8 + 2048) + 2 * subset_total * 8 + N * (Dp * itemsize + 4 * D + 1)
            + 8192 * (4 * D + Dp * itemsize))
