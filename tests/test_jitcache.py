"""The stale-cache guard drops this package's Numba cache files when a kernel source changes, and only then."""
from types import SimpleNamespace

from fastmlp import jitcache


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
