"""A guard for Numba's on-disk cache of this package's kernels.

Numba revalidates a cached function only against the timestamp of the file that defines it, but the cached
machine code of a driver also contains every jitted function it calls: train_epoch holds the micro-kernels and
the Philox shuffle, the data kernels hold Philox and Box-Muller.  An edit to a callee would otherwise keep running
the old code.  A hash of all the sources, stored beside the cache, drops the cache when any of them changes.
"""
import hashlib
from pathlib import Path

SOURCES = ("constants.py", "rng.py", "tasks.py", "_microkernels.py", "cpu.py")   # everything cached code runs
CACHED_MODULES = ("tasks", "_microkernels", "cpu")                              # modules with cache=True
_checked = set()


def drop_stale(dispatcher):
    """Delete this package's cache files in the cache directory of `dispatcher` if any source has changed."""
    here = Path(__file__).parent
    try:
        cache_dir = Path(dispatcher._cache._cache_path)
        if cache_dir in _checked:
            return
        _checked.add(cache_dir)
        digest = hashlib.sha256(b"".join((here / name).read_bytes() for name in SOURCES)).hexdigest()
        stamp = cache_dir / "fastmlp-kernels.sha256"
        if stamp.exists() and stamp.read_text() == digest:
            return
        for module in CACHED_MODULES:
            for f in cache_dir.glob(f"{module}.*.nb[ci]"):
                f.unlink()
        cache_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
    except (OSError, AttributeError):   # read-only install or another Numba layout: Numba's own checks remain
        pass
