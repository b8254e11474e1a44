"""The Numba kernels of cpu.py, driven through Engine, against the float64 reference.

Shapes cross every tile edge on purpose: H = 13, 21 (not multiples of 8), H = 40 (one 32-wide panel plus one
8-wide panel), H = 72 (two 32-wide panels, so a packed block starts past the first), B = 7, 17 (not multiples of the
5-row tile), D = 11 (odd), N = 37 (last minibatch short).
"""
import numpy as np
import pytest

from fastmlp import cpu, reference
from fastmlp.cpu_engine import Engine
from conftest import DTYPES, SIGMA_B2, assert_close, make_data, network as _network, scales as _scales, tol

SHAPES = [(13, 1, 7), (21, 2, 17), (40, 3, 7), (72, 2, 7)]   # (H, L, B)
PARAMS = ["standard", "ntk"]


def _engine(x, y, H, L, B, param, dtype, lrs=(0.05, 0.2, 0.5), seeds=(3, 4, 5), **kw):
    return Engine(x, y, H, L, B, list(lrs), list(seeds), param=param, dtype=dtype, sigma_b2=SIGMA_B2[param], **kw)


def _assert_params_close(actual, expected, op, dtype):
    for (W, b), (W_ref, b_ref) in zip(actual, expected):
        assert_close(W, W_ref, op, dtype)
        assert_close(b, b_ref, op, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("H, L, B", SHAPES)
def test_forward(data_small, H, L, B, param, dtype):
    x, y = data_small
    e = _engine(x, y, H, L, B, param, dtype)
    params = e.params()
    ref, _ = reference.forward(params, _scales(e), x)                      # (M, N, C)
    logits = e.logits(x)
    assert logits.shape == ref.shape and logits.dtype == dtype
    assert_close(logits, ref, "forward", dtype)
    # again with non-zero biases everywhere (standard initialization has none), set through set_params
    g = np.random.default_rng(H)
    params = [(W, 0.5 * g.standard_normal(b.shape)) for W, b in params]
    e.set_params(params)
    ref, _ = reference.forward(params, _scales(e), x)
    assert_close(e.logits(x), ref, "forward", dtype)
    assert_close(e.logits(x[:3]), ref[:, :3], "forward", dtype)          # fewer samples than one row tile


@pytest.mark.parametrize("wide", [False, True], ids=["copy", "from-W"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("H, L, B", SHAPES)
def test_one_epoch(data_small, H, L, B, param, dtype, wide):
    """train_epochs(1) equals reference.train_steps over the epoch's ceil(N / B) minibatches, every network, on both
    input-gradient paths (a transposed copy of the weights, or W itself; each width forced onto both)."""
    x, y = data_small
    e = _engine(x, y, H, L, B, param, dtype, wide=wide)
    assert e.wide is wide
    init = e.params()
    e.train_epochs(1)
    got = e.params()
    n_steps = -(-len(x) // B)
    for m in range(e.M):
        ref, losses = reference.train_steps(_network(init, m), _scales(e), x, y, e.lrs[m], e.seeds[m],
                                            np.arange(len(x)), B, n_steps)
        _assert_params_close(_network(got, m), ref, "step", dtype)
        # the test can fail: the step moved the parameters far beyond the tolerance
        moved = max(np.abs(W - W0).max() for (W, _), (W0, _) in zip(ref, _network(init, m)))
        assert moved > 100 * tol("step", dtype)[0]
        assert_close(e.train_loss[m], losses.mean(), "loss", dtype)         # mean minibatch loss of the epoch
    assert np.all(e.epochs == 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H, L, B", [(16, 2, 50), (40, 3, 80)])
def test_one_epoch_wide_input_gradient_tiles(data_medium, H, L, B, dtype):
    """The input gradient from W with its wide tiles: B = 50 pads to 56 columns (one 56-wide tile on AVX-512, a
    32-wide and a 24-wide one on AVX2), B = 80 to a 32-wide and a 56-wide one on AVX-512 (88), to a 32-wide and two
    24-wide ones on AVX2 (80); at Hp = 16 and 40 the last 6-row tile of AVX-512 and the last 3-row tiles of AVX2
    overlap the ones before (neither 6 nor 3 divides them)."""
    avx512 = cpu.FAMILY.dinp_tiles == ((8, 32), (6, 56))
    assert cpu.dinp_columns(cpu.round_up(B, cpu.MR_ROWS)) == {50: 56, 80: 88 if avx512 else 80}[B]
    test_one_epoch(data_medium, H, L, B, "standard", dtype, True)   # 300 samples: several steps, the last short


@pytest.mark.parametrize("Bp", range(5, 400, 5))
def test_dinp_columns_pad_the_minibatch_to_whole_tiles(Bp):
    """Bt holds Bp with less padding than one DC-wide tile (32 on AVX-512), and _wide_tiles finds the layout
    dinp_columns chose, of DC- and EC-wide tiles (EC = 56)."""
    DC, EC = cpu.DC, cpu.EC
    Bt = cpu.dinp_columns(Bp)
    n56 = cpu._wide_tiles(Bt)
    assert Bp <= Bt < Bp + DC and Bt - EC * n56 >= 0 and (Bt - EC * n56) % DC == 0
    assert Bt == min(EC * n + DC * a for n in range(10) for a in range(30) if EC * n + DC * a >= Bp)


@pytest.mark.parametrize("Bp", [5, 50, 80, 120, 175])
def test_transposed_gradients_are_stored_tile_by_tile(Bp):
    """The wide input gradient's operand layout: to_tiles puts the columns of each of dinp_columns' tiles in one
    contiguous (H, width) block, in order, and _transpose_tile (the output layer's gradient, stored so) writes the
    same array from the untransposed rows, leaving the columns past nbp alone."""
    H, Bt = 16, cpu.dinp_columns(Bp)
    M = np.arange(Bt * H, dtype=np.float32).reshape(Bt, H)
    tiled = cpu.to_tiles(np.ascontiguousarray(M.T))
    assert tiled.shape == (H * Bt,) and sorted(tiled) == sorted(M.ravel())
    b56 = Bt - cpu.EC * cpu._wide_tiles(Bt)
    tiles = [(b0, cpu.DC) for b0 in range(0, b56, cpu.DC)] + [(b0, cpu.EC) for b0 in range(b56, Bt, cpu.EC)]
    assert sum(w for _, w in tiles) == Bt
    for b0, w in tiles:
        np.testing.assert_array_equal(tiled[H * b0:H * (b0 + w)].reshape(H, w), M[b0:b0 + w].T)
    out = np.full(H * Bt, -1, np.float32)
    for b0, w in tiles:
        cpu._transpose_tile.py_func(out, M, b0, w, H, Bp)
    written = out != -1
    assert np.array_equal(out[written], tiled[written]) and written.sum() == H * Bp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("H, L", [(21, 2), (40, 3)])
def test_gradient_from_parameter_change(H, L, param, dtype):
    """With N == B an epoch is one full-batch step, so (P_before - P_after) / lr is the gradient, for either lr."""
    N = B = 17
    x, y = make_data(N, 11, seed=2)
    lrs = (0.25, 1.0)
    e = _engine(x, y, H, L, B, param, dtype, lrs=lrs, seeds=(9, 9))     # one seed: same network, two lrs
    init = e.params()
    _, grads = reference.loss_and_grads(_network(init, 0), _scales(e), x, y)
    e.train_epochs(1)
    after = e.params()
    for m, lr in enumerate(lrs):
        for l in range(L + 1):
            for t in range(2):
                # float32: the parameters themselves are rounded, which costs ~eps * |P| / lr in the quotient
                assert_close((init[l][t][m] - after[l][t][m]) / lr, grads[l][t][0], "step", dtype)
    assert max(np.abs(dP).max() for dW_db in grads for dP in dW_db) > 100 * tol("step", dtype)[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("H, L, B", SHAPES)
def test_evaluate(data_medium, H, L, B, param, dtype):
    """Error counts equal the reference exactly (float32: apart from near-ties); summed losses within tolerance."""
    x, y = data_medium
    x, y = x[:137], y[:137]                        # 137: crosses the Bp-row chunks of evaluation
    e = _engine(x, y, H, L, B, param, dtype)
    e.train_epochs(1)                              # trained a little, so the networks disagree on some samples
    params = e.params()
    logits, _ = reference.forward(params, _scales(e), x)
    keep = np.ones(len(x), bool)
    if dtype == np.float32:
        # a sample whose two logits differ by less than float32 rounding of a sum over H may flip; drop it
        keep = (np.abs(logits[..., 1] - logits[..., 0]) >= 1e-5).all(axis=0)
        assert keep.mean() > 0.95
    err_ref, loss_ref = reference.evaluate(params, _scales(e), x[keep], y[keep])
    err, loss = e.evaluate(x[keep], y[keep])
    n = keep.sum()
    np.testing.assert_array_equal(err, np.rint(err_ref * n).astype(np.int64))
    assert 0 < err.min() and err.max() < n         # counts that could be wrong either way
    assert_close(loss, loss_ref * n, "evaluate", dtype)


@pytest.mark.parametrize("K, J", [(16, 8), (16, 40), (11 * 8, 104), (8, 72)])
def test_packed_weights_are_column_panels_one_after_another(K, J):
    """pack's layout as codegen states it: panel (j0, w) is the (K, w) block at K * j0; unpack inverts it."""
    W = np.random.default_rng(K + J).standard_normal((2, K, J))
    P = cpu.pack(W)
    assert P.shape == (2, K * J)
    widths = [w for _, w in cpu.panel_widths(J)]
    assert sum(widths) == J and set(widths) <= set(cpu.FAMILY.panels) and widths == sorted(widths, reverse=True)
    for j0, w in cpu.panel_widths(J):
        assert np.array_equal(P[:, K * j0:K * (j0 + w)].reshape(2, K, w), W[:, :, j0:j0 + w])
    assert np.array_equal(cpu.unpack(P, K, J), W)


@pytest.mark.parametrize("wide", [False, True], ids=["copy", "from-W"])
def test_one_network_split_over_threads_equals_it_on_one_thread(data_medium, wide):
    """Fewer networks than threads: the leftover networks train one at a time with every thread (each GEMM split
    by panels), and give the very numbers of one thread per network, through fit and its stop checks."""
    x, y = data_medium
    results = {}
    for threads, M in ((1, 1), (2, 1), (3, 1), (1, 3), (2, 3)):
        got = []
        # 264: eight 32-wide panels and one 8-wide; with B = 50, 2 and 3 threads' rows of dinp end in overlapping
        # 6-row tiles
        for H, L, B in ((40, 3, 17), (13, 4, 7), (264, 2, 50)):
            e = Engine(x, y, H, L, B, [0.05, 0.3, 0.1][:M], [1, 2, 3][:M], threads=threads, wide=wide)
            res = e.fit(max_epochs=3)
            got.append((e.params(), [(r.epochs, r.train_loss, r.train_error) for r in res]))
        results[threads, M] = got
    for M in (1, 3):
        for (params, res), (params1, res1) in zip(results[1, M], results[2, M]):
            for (W, b), (W1, b1) in zip(params, params1):
                assert np.array_equal(W, W1) and np.array_equal(b, b1)
            np.testing.assert_array_equal(np.array(res, float), np.array(res1, float))
    for (params, _), (params3, _) in zip(results[1, 1], results[3, 1]):
        assert all(np.array_equal(W, W3) for (W, _), (W3, _) in zip(params, params3))
    # the networks moved: equal because the schedules agree, not because nothing happened
    assert not np.array_equal(results[1, 1][2][0][0][0], Engine(x, y, 264, 2, 50, [0.05], [1]).params()[0][0])


@pytest.mark.parametrize("J, T", [(8, 2), (40, 3), (104, 2), (504, 2), (504, 16)])
def test_split_panels_cover_every_panel_once_and_evenly(J, T):
    bounds = cpu.split_panels(J, T)
    widths = [w for _, w in cpu.panel_widths(J)]
    assert bounds[0] == 0 and bounds[-1] == len(widths) and np.all(np.diff(bounds) >= 0) and len(bounds) == T + 1
    shares = [sum(widths[bounds[t]:bounds[t + 1]]) for t in range(T)]
    assert sum(shares) == J and max(shares) - J / T <= cpu.NR    # no thread more than one panel above its share
