"""The stale-cache guard drops this package's Numba cache files when a kernel source changes, and only then; the
first run says on stderr that it compiles."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from fastmlp import jitcache
from fastmlp.cli import main


def _fake_dispatcher(path):
    return SimpleNamespace(_cache=SimpleNamespace(_cache_path=str(path)))


def test_cache_files_are_dropped_once_when_sources_change(tmp_path, monkeypatch):
    ours = [tmp_path / "cpu.train_epoch-216.py311.nbi", tmp_path / "_microkernels.fwd_5x32-11.py311.1.nbc"]
    other = tmp_path / "somebody_else.f-1.py311.nbi"
    for f in ours + [other]:
        f.write_bytes(b"x")
    (tmp_path / "fastmlp-kernels.sha256").write_text("digest of older sources")
    monkeypatch.setattr(jitcache, "_checked", set())
    jitcache.drop_stale(_fake_dispatcher(tmp_path))
    assert not any(f.exists() for f in ours) and other.exists()
    # the stamp now matches: files written after this survive a new process's check
    for f in ours:
        f.write_bytes(b"x")
    monkeypatch.setattr(jitcache, "_checked", set())
    jitcache.drop_stale(_fake_dispatcher(tmp_path))
    assert all(f.exists() for f in ours)


def test_first_compile_says_so_once_then_stamps(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(jitcache, "_cache_dirs", [tmp_path])
    monkeypatch.setattr(jitcache, "_done", set())
    with jitcache.first_compile("engine-float32"):
        pass
    with jitcache.first_compile("data"):         # also cold, but one notice per process
        pass
    assert capsys.readouterr().err.splitlines() == [jitcache.COMPILING]
    assert (tmp_path / "fastmlp-warm-engine-float32").exists() and (tmp_path / "fastmlp-warm-data").exists()
    monkeypatch.setattr(jitcache, "_done", set())  # a later process: warm, silent
    with jitcache.first_compile("engine-float32"):
        pass
    assert capsys.readouterr().err == ""
    (tmp_path / "fastmlp-kernels.sha256").write_text("digest of older sources")   # sources changed: cold again
    monkeypatch.setattr(jitcache, "_checked", set())
    jitcache.drop_stale(_fake_dispatcher(tmp_path))
    assert not (tmp_path / "fastmlp-warm-engine-float32").exists()


def _cache_without_warm_stamps(cache_root):
    """A NUMBA_CACHE_DIR of `cache_root` holding this process's compiled kernels and the sources' digest but none of
    first_compile's stamps: to the package a first run (the notice is due), to Numba a warm cache (loads in seconds,
    where compiling again would take minutes)."""
    from numba.core.caching import UserProvidedCacheLocator
    from fastmlp import cpu
    here = Path(cpu.train_epoch._cache._cache_path)
    there = Path(cache_root) / UserProvidedCacheLocator.get_suitable_cache_subpath(cpu.__file__)
    there.mkdir(parents=True)
    for f in here.glob("*"):
        if f.is_file() and not f.name.startswith("fastmlp-warm-"):
            shutil.copy2(f, there / f.name)
    assert (there / "fastmlp-kernels.sha256").exists()   # else drop_stale would empty it
    return there


@pytest.mark.slow
def test_the_first_run_says_it_compiles_on_stderr_and_json_stays_one_object(tmp_path):
    args = ["train", "1-local", "--D", "8", "--N", "40", "--H", "8", "--lr", "0.1", "--n-test", "50",
            "--max-epochs", "3", "--json"]
    assert CliRunner().invoke(main, args).exit_code == 0   # compiles here unless an earlier test did, and stamps
    there = _cache_without_warm_stamps(tmp_path / "cache")
    cmd = [sys.executable, "-m", "fastmlp.cli", *args]
    env = os.environ | {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert jitcache.COMPILING in first.stderr.splitlines() and json.loads(first.stdout)["command"] == "train"
    assert list(there.glob("fastmlp-warm-engine-*"))        # stamped where the subprocess's cache is
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and jitcache.COMPILING not in again.stderr


def test_straight_line_compiles_a_kernel_to_the_machine_code_of_numbas_own_pipeline():
    """StraightLine drops Numba's SSA pass to save compile time; the machine code must not change (the smallest
    kernel, compiled both ways in this process, its assembly with Numba's compile counters blanked)."""
    import re

    from numba import njit, types

    from fastmlp import _microkernels as mk

    f32 = types.float32
    a2 = types.Array(f32, 2, "C")
    sig = (a2, a2, a2, types.int64, types.Array(f32, 1, "C"), types.int64, types.int64, f32)
    asm = []
    for pipeline in ({}, {"pipeline_class": jitcache.StraightLine}):
        f = njit(fastmath={"contract"}, **pipeline)(mk.dinp_t_5x8.py_func)
        f.compile(sig)
        # Numba's compile counters in mangled names, and the lengths of the strings that hold them (a long run can
        # pass a power of ten between the two compiles: 274 against 275 characters, seen compiling for Haswell)
        asm.append(re.sub(r'", \d+$', '", n', re.sub(r"B\d+v\d+", "Bv", f.inspect_asm(sig)), flags=re.M))
    assert "dinp_t_5x8" in asm[0] and asm[0] == asm[1]
