"""A guard for Numba's on-disk cache of this package's kernels.

Numba revalidates a cached function only against the timestamp of the file that defines it, but the cached
machine code of a driver also contains every jitted function it calls: train_epoch holds the micro-kernels and
the Philox shuffle, the data kernels hold Philox and Box-Muller.  An edit to a callee would otherwise keep running
the old code.  A hash of all the sources, stored beside the cache, drops the cache when any of them changes.

The first run compiles for a minute or two before anything else happens; `first_compile` says so on stderr, once,
and leaves a stamp beside the cache so that later runs stay quiet.  `StraightLine` takes about 40% off the part of
that time spent on the generated micro-kernels.
"""
import contextlib
import hashlib
import sys
from pathlib import Path

from numba.core.compiler import CompilerBase, DefaultPassBuilder
from numba.core.untyped_passes import ReconstructSSA

# everything cached code runs, and this file (its StraightLine compiles the micro-kernels)
# (the cached drivers of another CPU target live in the same files, under their own keys: Numba keys by the target)
SOURCES = ("constants.py", "rng.py", "tasks.py", "_microkernels.py", "_microkernels_avx2.py", "codegen.py", "isa.py",
           "cpu.py", "jitcache.py")
CACHED_MODULES = ("tasks", "_microkernels", "_microkernels_avx2", "cpu")     # modules with cache=True
_checked = set()
_cache_dirs = []     # the cache directories drop_stale has seen (where the stamps of first_compile live)
_done = set()        # what this process has compiled or found warm
COMPILING = "fastmlp: compiling kernels, first run only (cached on disk after it; a minute or two)"


def drop_stale(dispatcher):
    """Delete this package's cache files in the cache directory of `dispatcher` if any source has changed."""
    here = Path(__file__).parent
    try:
        cache_dir = Path(dispatcher._cache._cache_path)
        if cache_dir in _checked:
            return
        _checked.add(cache_dir)
        _cache_dirs.append(cache_dir)
        digest = hashlib.sha256(b"".join((here / name).read_bytes() for name in SOURCES)).hexdigest()
        stamp = cache_dir / "fastmlp-kernels.sha256"
        if stamp.exists() and stamp.read_text() == digest:
            return
        for module in CACHED_MODULES:
            for f in cache_dir.glob(f"{module}.*.nb[ci]"):
                f.unlink()
        for f in cache_dir.glob("fastmlp-warm-*"):
            f.unlink()
        cache_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
    except (OSError, AttributeError):   # read-only install or another Numba layout: Numba's own checks remain
        pass


@contextlib.contextmanager
def first_compile(name):
    """Around a first call that compiles (or loads) the cached kernels `name` (e.g. 'engine-float32'): when no
    stamp says they were compiled before, print COMPILING on stderr (once per process), and stamp on success."""
    if name in _done:
        yield
        return
    stamps = [d / f"fastmlp-warm-{name}" for d in _cache_dirs]
    cold = not any(p.exists() for p in stamps)
    if cold and not _done & {"announced"}:
        print(COMPILING, file=sys.stderr, flush=True)
        _done.add("announced")
    yield
    _done.add(name)
    if cold:
        for p in stamps:
            with contextlib.suppress(OSError):   # a read-only cache: the notice shows again next time
                p.touch()


class StraightLine(CompilerBase):
    """Numba's nopython pipeline without its SSA reconstruction, for the generated micro-kernels alone.

    A micro-kernel keeps its tile in a few hundred scalar locals, each assigned before its loop and in it; Numba's
    SSA pass rewrites every such variable with a scan of the whole function, so its time grows with locals times
    statements: the 6 x 56 input-gradient tile took 26.6 s to compile with it and 15.0 s without, all ten kernels,
    with the second compile of two of them also gone (cpu._no), 92.9 s and 56.9 s (one cold compile each, `python
    bench/compile_time.py 8cc7342`, one Zen 4 core). The kernels need nothing SSA gives (a local keeps the type of
    its first assignment, no branch merges differently typed values) and LLVM builds its own SSA form from Numba's
    stack slots: the machine code is the same, byte for byte (bench/kernel_asm.py for the engine;
    tests/test_jitcache.py for one kernel).
    """

    def define_pipelines(self):
        pm = DefaultPassBuilder.define_nopython_pipeline(self.state)
        pm.passes = [p for p in pm.passes if p[0] is not ReconstructSSA]
        pm.finalize()
        return [pm]
