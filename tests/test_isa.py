"""The kernel families (codegen.FAMILIES): which one a CPU gets, and that every family with FMA trains the same
networks, bit for bit.

The second is checked on one machine: an AVX-512 machine can also run the AVX2 family, compiled for Haswell
(isa.ISA_ENV) in a process of its own with its own Numba cache, whose trainings are compared with this process's.
Run as a script, this file writes those trainings (`python tests/test_isa.py OUT.npz`).
"""
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from fastmlp import codegen, isa

x86 = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="names x86 CPUs")


@x86
@pytest.mark.parametrize("name, family", [("znver4", "avx512"), ("skylake-avx512", "avx512"),
                                          ("icelake-server", "avx512"), ("znver3", "avx2"), ("haswell", "avx2"),
                                          ("x86-64-v3", "avx2"), ("sandybridge", "portable"), ("x86-64", "portable")])
def test_family_of_a_cpu_is_read_from_its_widest_fma(name, family):
    """AVX-512 CPUs get 512-bit tiles, AVX2 + FMA ones 256-bit tiles, and CPUs without FMA the portable family."""
    assert isa.family_of(name, "") == family


@x86
def test_cpu_features_decide_over_the_cpu_name():
    """A Haswell with AVX-512 features (NUMBA_CPU_NAME alone, on an AVX-512 host) compiles AVX-512 code."""
    assert isa.family_of("haswell", "+avx512f") == "avx512"
    assert isa.family_of("znver4", "-avx512f") == "avx2"


def test_every_family_packs_its_panels_and_fits_its_tiles():
    """Each family's panels tile any padded width, its tiles are sized to its register file (float32
    accumulators leave two registers: a broadcast and a streamed operand), and its dweight and first dinp tiles
    divide the padding."""
    for f in codegen.FAMILIES.values():
        lanes = f.vector_bits // 32
        wide, narrow = f.panels
        assert narrow == codegen.PAD and wide % narrow == 0
        for J in (8, 40, 104, 504, 1000):
            panels = codegen.panel_widths(J, f.panels)
            assert [j0 for j0, _ in panels] == list(np.cumsum([0] + [w for _, w in panels[:-1]]))
            assert sum(w for _, w in panels) == J
        tiles = [(codegen.MR_ROWS, w) for w in f.panels] + list(zip(f.dweight_rows, f.panels)) + list(f.dinp_tiles)
        assert all(mr * -(-nr // lanes) <= f.registers - 2 for mr, nr in tiles), f.name
        assert all(codegen.PAD % mr == 0 for mr in f.dweight_rows + (f.dinp_tiles[0][0],))


def trainings():
    """{name: array} of several trainings through the whole engine: float32 and float64; a narrow and a wide
    input-gradient path; both dinp tiles (B = 50: one 56-column tile, B = 23: DC-wide ones); panels of both widths
    (H = 40, D = 20); three networks on two threads (two spread, one split over both); fit with its stop checks, then
    the parameters, the records and the logits."""
    from fastmlp.cpu_engine import Engine
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, 20)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int8)
    out = {}
    for dtype in (np.float32, np.float64):
        for H, B, wide in ((40, 23, False), (40, 50, True), (40, 23, True), (104, 50, False)):
            e = Engine(x, y, hidden_width=H, depth=3, batch_size=B, lrs=[0.05, 0.2, 0.1], seeds=[1, 2, 3],
                       dtype=dtype, threads=2, wide=wide)
            res = e.fit(max_epochs=4)
            key = f"{np.dtype(dtype).name}-H{H}-B{B}-{'wide' if wide else 'narrow'}"
            for l, (W, b) in enumerate(e.params()):
                out[f"{key}-W{l}"], out[f"{key}-b{l}"] = W, b
            out[f"{key}-records"] = np.array([(r.epochs, r.train_loss, r.train_error) for r in res], float)
            out[f"{key}-logits"] = e.logits(x[:37])
            out[f"{key}-moved"] = np.abs(e.params()[2][0] - Engine(x, y, H, 3, B, [0.05, 0.2, 0.1], [1, 2, 3],
                                                                   dtype=dtype).params()[2][0]).max()
    return out


@pytest.mark.slow
def test_avx2_family_trains_the_same_networks_as_avx512_bit_for_bit(tmp_path):
    """The AVX2 family, compiled for Haswell in a subprocess (a few minutes: a cold Numba cache), against the
    AVX-512 family here: every parameter, record and logit equal, bit for bit."""
    if isa.family() != "avx512":
        pytest.skip("needs a CPU that runs both families (AVX-512)")
    out = tmp_path / "avx2.npz"
    env = os.environ | isa.ISA_ENV["avx2"] | {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([sys.executable, __file__, str(out)], env=env, check=True)
    theirs = dict(np.load(out))
    assert theirs.pop("family") == "avx2"
    ours = trainings()
    assert sorted(theirs) == sorted(ours)
    differ = [k for k in ours if not np.array_equal(ours[k], theirs[k], equal_nan=True)]
    assert not differ, f"differ between the families: {differ}"
    # equal because the families agree, not because nothing happened: every hidden layer moved in training
    assert min(v for k, v in ours.items() if k.endswith("-moved")) > 1e-3


if __name__ == "__main__":   # the subprocess of the test above
    np.savez(sys.argv[1], family=isa.family(), **trainings())
