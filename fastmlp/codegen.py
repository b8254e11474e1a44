"""Source generator for the register-blocked micro-kernels of the CPU backend.

A micro-kernel keeps an (MR x NR) tile of its output in scalar locals for the whole reduction loop; LLVM's SLP
vectorizer packs each row of NR scalars into SIMD registers, so the tile never touches memory until the epilogue.
Numba cannot spell SIMD types, and loops over a local array would keep the tile in memory (store-bound at ~50% of FMA
peak), hence generated straight-line code.

A tile must fit the register file of the CPU it runs on, with room for the operands it streams: one *family* of
kernels per register file (FAMILIES), each in a module of its own, and the engine compiles the family of the CPU
Numba compiles for (fastmlp.isa).  Every family computes every output as the same FMA chain in the same order (see
_dinp), so they train bit for bit the same networks on every CPU with FMA (tests/test_isa.py).

Weights are *packed*: a (K, J) matrix is stored flat, as its column panels one after another, each panel a (K, NR)
row-major block (see `panel_widths`): panel p of width w starting at column j0 occupies W[K*j0 : K*(j0 + w)].  A
kernel then streams one contiguous block, which the hardware prefetcher follows at any width; a (K, J) row-major
matrix would be read as K rows of NR floats, J floats apart, which the prefetcher loses once the matrix leaves the
cache (measured at the paper's width, D = 1000, H = 500: 53 against 98 GFLOP/s on one Zen 4 core).

Shape letters as in reference.py; every kernel reads rows of its A operand through an index array (``rows``), so
the first layer reads the minibatch straight out of the dataset without a gather copy.

``python -m fastmlp.codegen`` rewrites fastmlp/_microkernels.py; ``python -m fastmlp.codegen --check`` (run by CI)
exits 1 when the committed file differs from what it would write.
"""
import pathlib
from typing import NamedTuple

MR_ROWS = 5          # batch rows per tile in fwd and dinp_t, every family (B = 50 splits into 10 tiles)
PAD = 8              # D and H are padded to multiples of 8 floats: the narrow panel of every family


class Family(NamedTuple):
    """The tiles of one register file.  Accumulators are counted for float32 (float64 needs twice the registers)."""
    name: str
    vector_bits: int     # SIMD register width
    registers: int       # SIMD registers
    module: str          # the generated module (families with the same tiles share one)
    panels: tuple        # (wide, narrow) column-panel widths of packed weights; narrow = PAD covers every width
    dweight_rows: tuple  # input features per dweight tile, in a wide and in a narrow panel (each divides PAD)
    dinp_tiles: tuple    # (rows of W, minibatch columns) of the wide input-gradient tiles (_dinp); where a tile's
    #                      rows do not divide a block of PAD rows, its last tile overlaps the one before and writes
    #                      the shared rows again, with the same values
    dweight_at: bool     # the wide path's dweight reads its input transposed (see _dweight), and fwd_x writes it


FAMILIES = {
    # 32 x 512 bit (16 floats): fwd 5 x 32 holds 10 accumulators, dweight 8 x 32 16, dinp 8 x 32 16 and 6 x 56 24
    # (dweight from the input's rows: from its transpose whole trainings ran slower, docs/benchmarks.md)
    "avx512": Family("avx512", 512, 32, "_microkernels", (32, 8), (8, 8), ((8, 32), (6, 56)), False),
    # 16 x 256 bit (8 floats): fwd 5 x 16 holds 10 accumulators, dweight 4 x 16 8 (4 x 8 in a narrow panel: at
    # 8 x 8 LLVM kept one of dweight_t's accumulators on the stack), dinp 3 x 32 12 and 3 x 24 9, each with room
    # for the broadcasts and the streamed operand (bench/kernel_spills.py: 2 x 56, 4 x 24 and 6 x 16 put
    # accumulators on the stack); B = 50 is one 32-wide tile and one 24-wide (faster than 4 x 16 and 2 x 40:
    # bench/bench_kernels.py W4 --isa avx2, in docs/benchmarks.md)
    "avx2": Family("avx2", 256, 16, "_microkernels_avx2", (16, 8), (4, 4), ((3, 32), (3, 24)), True),
}
# anything else (NEON: 32 x 128 bit, 4 floats): as many float lanes as AVX2's register file, in twice the registers,
# so AVX2's tiles fit it with more room for operands; they share AVX2's module
FAMILIES["portable"] = FAMILIES["avx2"]._replace(name="portable", vector_bits=128, registers=32)


def panel_widths(J, panels):
    """The column panels of a packed matrix with J columns (a multiple of 8): [(j0, width)], `panels` = (wide,
    narrow): wide ones, then narrow ones."""
    wide = J - J % panels[0]
    return [(j0, panels[0]) for j0 in range(0, wide, panels[0])] + [(j0, panels[1]) for j0 in range(wide, J,
                                                                                                   panels[1])]


def _row_panel(MR, NR, row, K, W, epilogue, each_x=lambda i: [], after=()):
    """The loop shared by fwd and dinp: for each tile of MR rows, c[i][j] = sum_k A_i[k] W[k, j0 + j] over one
    NR-wide column panel of the packed W (its block starts at K * j0), then per row the epilogue's lines (which see
    c{i}_{j} and must load before storing), then the lines `after`; each_x(i), lines run as x = A_i[k] streams by."""
    L = [f"    wb = {K} * j0"]
    L += [f"    for i0 in range(0, nbp, {MR}):"]
    L += [f"        a{i} = {row.format(i=i)}" for i in range(MR)]
    L += [f"        c{i}_{j} = zero" for i in range(MR) for j in range(NR)]
    L.append(f"        for k in range({K}):")
    L.append(f"            w = {W}[wb + k * {NR}:wb + k * {NR} + {NR}]")
    for i in range(MR):
        L.append(f"            x = a{i}[k]")
        L += ["            " + line for line in each_x(i)]
        L += [f"            c{i}_{j} += x * w[{j}]" for j in range(NR)]
    for i in range(MR):
        L += ["        " + line for line in epilogue(i)]
    L += ["        " + line for line in after]
    return L


def _store_transposed(out_row, rows, cols, value, indent=""):
    """Lines that store a tile's values (value(i, j), i < rows, j < cols) transposed: element i of out_row(j), the
    slice of the output that holds the tile's column j contiguously.  Each column goes through one slice with
    constant indices, which LLVM stores as vectors (scalar stores, each index tested for a negative value, cost a
    tenth of the tile)."""
    L = []
    for j in range(cols):
        L.append(f"{indent}t = {out_row(j)}")
        L += [f"{indent}t[{i}] = {value(i, j)}" for i in range(rows)]
    return L


def _fwd(MR, NR, transpose_a=False):
    """Column panel j0..j0+NR of out[:nbp] = relu(c * A[rows[:nbp]] @ W + s * bias), MR rows per tile; W (K, J)
    packed.  With ``tr`` the tile is also stored transposed into outT (J, Bt): the ReLU mask of dinp and the A operand
    of the next layer's dweight.  ``transpose_a`` (fwd_x, the first panel of the first layer): the tile's rows of A
    are also stored transposed into AT (K, Bt) as they stream by, the minibatch of the first layer's dweight."""
    def epilogue(i):
        out = [f"o = out[i0 + {i}, j0:j0 + {NR}]"]
        out += [f"v{i}_{j} = c * c{i}_{j} + s * bb[{j}]" for j in range(NR)]
        out += [f"v{i}_{j} = v{i}_{j} * (v{i}_{j} > zero)" for j in range(NR)]   # relu without a branch (SLP)
        out += [f"o[{j}] = v{i}_{j}" for j in range(NR)]
        return out
    after = ["if tr:"] + _store_transposed(lambda j: f"outT[j0 + {j}, i0:i0 + {MR}]", MR, NR,
                                           lambda i, j: f"v{i}_{j}", "    ")

    name, extra = (f"fwd_x_{MR}x{NR}", ", AT") if transpose_a else (f"fwd_{MR}x{NR}", "")
    L = [f"def {name}(out, outT, tr, A, rows, nbp, W, j0, K, bias, c, s{extra}):"]
    L.append(f"    bb = bias[j0:j0 + {NR}]")
    L.append("    zero = c - c   # typed zero: a literal 0 would promote float32 to float64")
    each_x = (lambda i: [f"AT[k, i0 + {i}] = x"]) if transpose_a else (lambda i: [])
    return L + _row_panel(MR, NR, "A[rows[i0 + {i}]]", "K", "W", epilogue, each_x, after)


def _dweight(MR, NR, panels, transposed=False, rows=False):
    """Column panel j0..j0+NR of W -= scale * A[rows[:nb]]^T dZ[:nb], MR input features per tile: the weight
    gradient fused with the SGD update, so dW is never stored.  W (K, J) packed: the panel is one (K, NR) block.

    The layer's input A comes in one of two forms.  dweight (the wide path): transposed, AT (K, Bt), which fwd
    writes (outT; for the first layer, fwd_x), so that a tile streams MR rows of it.  ``rows`` (dweight_r, and
    dweight_t): A[rows[b], k0:k0 + MR], one stream per minibatch row, which the prefetcher loses once A and W leave
    the cache (read at unsigned offsets into flat views of A and dZ, which keeps the loop to its loads and FMAs).
    On a narrow layer the stores of the transposed copies cost what the tile gains, and on AVX-512 the row form is
    faster (docs/benchmarks.md: the transposed form on every path and family, 651dca3).
    ``transposed`` (dweight_t, the narrow path's): the updated tile is also stored into W's transposed copy WT (J, K),
    packed.  A family reads AT on the wide path where that measured faster (Family.dweight_at).
    Every form takes both operands (A, rows and AT) and reads one, so that the engine calls any of them alike."""
    if transposed:
        L = [f"def dweight_t_{MR}x{NR}(W, WT, j0, K, A, rows, AT, dZ, nb, scale):"]
    else:
        L = [f"def dweight_{'r_' if rows else ''}{MR}x{NR}(W, j0, K, A, rows, AT, dZ, nb, scale):"]
    L.append("    zero = scale - scale")
    L.append("    wb = K * j0")
    wide, narrow = panels
    if transposed:   # WT (J, K) packed too: its column panels are `wide` up to K - K % wide, then `narrow`
        L.append("    J = W.shape[0] // K")
        L.append(f"    kwide = K - K % {wide}")
    if rows:   # flat views and unsigned offsets: see below
        L += ["    Af = A.reshape(-1)", "    dZf = dZ.reshape(-1)", "    KA = np.uint64(A.shape[1])",
              "    JD = np.uint64(dZ.shape[1])", "    j0u = np.uint64(j0)"]
        L += [f"    u{i} = np.uint64({i})" for i in range(max(MR, NR))]
    L.append(f"    for k0 in range(0, K, {MR}):")
    L += [f"        c{i}_{j} = zero" for i in range(MR) for j in range(NR)]
    if rows:
        L.append("        k0u = np.uint64(k0)")
    else:
        L += [f"        a{i} = AT[k0 + {i}]" for i in range(MR)]
    L.append("        for b in range(nb):")
    if rows:   # A[rows[b], k0 + i] and dZ[b, j0 + j] at unsigned offsets into flat views (u{i} is i as uint64):
        # slices A[rows[b], k0:k0 + MR] and dZ[b, j0:j0 + NR] would be clamped to the array at every sample
        # (LLVM did not hoist the tests), and a signed offset tested for a negative value at every load
        L.append("            ab = rows[b] * KA + k0u")
        L.append("            db = np.uint64(b) * JD + j0u")
        d = "dZf[db + u{j}]"
    else:
        L.append(f"            d = dZ[b, j0:j0 + {NR}]")
        d = "d[{j}]"
    for i in range(MR):
        L.append(f"            x = Af[ab + u{i}]" if rows else f"            x = a{i}[b]")
        L += [f"            c{i}_{j} += x * {d.format(j=j)}" for j in range(NR)]
    if transposed:   # WT[j, k] of the tile: in the panel of column k0 (all MR columns share it), row j
        # (a tile as tall as a narrow panel starts one; kwide is a multiple of narrow)
        narrow_start = "k0" if MR == narrow else f"k0 - k0 % {narrow}"
        L.append(f"        kq = k0 - k0 % {wide} if k0 < kwide else {narrow_start}")
        L.append(f"        wq = {wide} if k0 < kwide else {narrow}")
        L.append("        tb = J * kq + k0 - kq + j0 * wq")
    v = "v{i}_{j}" if transposed else "v{j}"   # the transposed form keeps the whole tile for WT's stores
    for i in range(MR):
        L.append(f"        w = W[wb + (k0 + {i}) * {NR}:wb + (k0 + {i}) * {NR} + {NR}]")
        L += [f"        {v.format(i=i, j=j)} = w[{j}] - scale * c{i}_{j}" for j in range(NR)]   # loads, then stores
        L += [f"        w[{j}] = {v.format(i=i, j=j)}" for j in range(NR)]
    if transposed:   # keep WT = W^T for the input-gradient kernel of the next step: row j of WT's panel holds
        # columns k0..k0+MR of W's row j contiguously
        L += _store_transposed(lambda j: f"WT[tb + {j} * wq:tb + {j} * wq + {MR}]", MR, NR,
                               lambda i, j: f"v{i}_{j}", "        ")
    return L


def _dinp_t(MR, NR):
    """Column panel j0..j0+NR of dZp[:nbp] = c * (dZ[:nbp] @ WT) * (Ap[:nbp] > 0), MR rows per tile: the input
    gradient of a narrow layer, from the transposed copy WT (J, K), packed, that dweight_t keeps.  This is the
    forward kernel's loop with a ReLU-mask epilogue.  (A dot-product form on W itself would avoid the copy, but its
    lane sums defeat the SLP vectorizer and run 30x slower.)"""
    def epilogue(i):
        out = [f"o = dZp[i0 + {i}, j0:j0 + {NR}]", f"ap = Ap[i0 + {i}, j0:j0 + {NR}]"]
        # all loads before any store: o may alias Ap as far as LLVM knows, and interleaving would stop SLP
        out += [f"v{j} = c * c{i}_{j} * (ap[{j}] > zero)" for j in range(NR)]   # branch-free ReLU mask
        out += [f"o[{j}] = v{j}" for j in range(NR)]
        return out

    L = [f"def dinp_t_{MR}x{NR}(dZp, Ap, dZ, nbp, WT, j0, J, c):"]
    L.append("    zero = c - c")
    return L + _row_panel(MR, NR, "dZ[i0 + {i}]", "J", "WT", epilogue)


def _dinp(MR, NR, panels):
    """The (MR, NR) tile at (k0, b0) of dZp^T = c * (W @ dZ^T) * (Ap^T > 0): the input gradient of a wide layer,
    computed from the layer's own packed W (K, J), the transposed gradient dZT (J, Bt) and the
    transposed activations ApT (K, Bt) that fwd writes with ``tr``.  dZT and the tile's output dZpT (K, Bt) are
    stored flat, tile by tile (cpu.to_tiles): the columns b0..b0+NR of a tile are one contiguous (J, NR) block at
    J * b0, so the reduction streams one block instead of reading part of every row of a (J, Bt) matrix.  Its loop
    reads W and dZT through one slice per panel, so no index in it needs Numba's test for a negative value, and
    loads one vector of d at a time for all MR rows, which keeps AVX2's 3 x 32 tile (12 accumulators, 3
    broadcasts, 1 load: all 16 registers) off the stack (docs/benchmarks.md has the kernel's rates before and
    after).  Its columns are minibatch rows, so a tile's
    width NR is a number of rows the minibatch is padded to (Family.dinp_tiles, cpu.dinp_columns): the rate per padded
    FLOP hardly depends on it from 32 up, and below it falls (measured on one Zen 4 core at H = 504: 8 x 32 at 92
    GFLOP/s, 6 x 56 at 97, 6 x 40 at 97, 2 x 56 at 77; 8 x 24 at 75, 8 x 16 at 42, 8 x 8 at 36).  B = 50 is one
    6 x 56 tile wide (89% of it useful) instead of two 8 x 32 ones (78%).

    The reduction runs over j = 0..J-1 in order, through W's 32-wide panels and then its 8-wide ones (rows k0..k0+MR
    of a panel are one contiguous block), so every output is the same FMA chain as c * sum_j dZ[b, j] W[k, j]
    from j = 0, whatever the tile.  The tile is stored twice: as rows of dZpT (K, Bt), the next dinp's operand, and
    transposed into dZp (Bt, K), the next dweight's; that costs 1/H of transposing the weights, which a kernel
    reading W's transpose would need after every update."""
    wide, narrow = panels
    L = [f"def dinp_{MR}x{NR}(dZp, dZpT, ApT, dZT, W, k0, b0, K, J, c):"]
    L.append("    zero = c - c")
    L.append(f"    dz = dZT[J * b0:J * (b0 + {NR})].reshape((J, {NR}))")
    L += [f"    c{i}_{n} = zero" for i in range(MR) for n in range(NR)]
    for width, panels in ((wide, f"range(0, J - J % {wide}, {wide})"), (narrow, f"range(J - J % {wide}, J, {narrow})")):
        L.append(f"    for j0 in {panels}:")
        L.append(f"        w = W[K * j0 + k0 * {width}:K * j0 + (k0 + {MR}) * {width}]")
        L.append(f"        dp = dz[j0:j0 + {width}]")
        L.append(f"        for jj in range({width}):")
        L.append("            d = dp[jj]")
        L += [f"            x{i} = w[{i * width} + jj]" for i in range(MR)]
        for g in range(0, NR, 8):   # a vector of d at a time, for every row: one load of it live, not NR / 8
            L += [f"            c{i}_{n} += x{i} * d[{n}]" for i in range(MR) for n in range(g, min(g + 8, NR))]
    for i in range(MR):
        L.append(f"    o = dZpT[K * b0 + (k0 + {i}) * {NR}:K * b0 + (k0 + {i + 1}) * {NR}]")
        L.append(f"    ap = ApT[k0 + {i}, b0:b0 + {NR}]")
        # branch-free ReLU mask; all loads before any store (o may alias ap as far as LLVM knows)
        L += [f"    v{i}_{n} = c * c{i}_{n} * (ap[{n}] > zero)" for n in range(NR)]
        L += [f"    o[{n}] = v{i}_{n}" for n in range(NR)]
    return L + _store_transposed(lambda n: f"dZp[b0 + {n}, k0:k0 + {MR}]", MR, NR, lambda i, n: f"v{i}_{n}", "    ")


def source(family):
    """The whole generated module of a Family as text."""
    parts = [
        '"""Generated by fastmlp/codegen.py (python -m fastmlp.codegen): register-blocked micro-kernels.',
        "",
        "Do not edit by hand; see codegen.py for what each kernel computes and why it is written out like this.",
        '"""',
        "import numpy as np",
        "from numba import njit",
        "",
        "from .jitcache import StraightLine",
        "",
        "_jit = njit(fastmath={'contract'}, cache=True, pipeline_class=StraightLine)",
        "",
    ]
    panels, kmr = family.panels, family.dweight_rows
    kernels = [_fwd(MR_ROWS, nr) for nr in panels]
    if family.dweight_at:
        kernels += [_fwd(MR_ROWS, nr, transpose_a=True) for nr in panels]
        kernels += [_dweight(mr, nr, panels) for mr, nr in zip(kmr, panels)]
    kernels += [_dweight(mr, nr, panels, rows=True) for mr, nr in zip(kmr, panels)]
    kernels += [_dweight(mr, nr, panels, transposed=True, rows=True) for mr, nr in zip(kmr, panels)]
    kernels += [_dinp_t(MR_ROWS, nr) for nr in panels] + [_dinp(MR, NR, panels) for MR, NR in family.dinp_tiles]
    for lines in kernels:
        parts += ["", "@_jit"] + lines + [""]
    return "\n".join(parts)


def targets():
    """{path of a generated module: its text}, one module per distinct set of tiles."""
    here = pathlib.Path(__file__).parent
    return {here / f"{family.module}.py": source(family) for family in FAMILIES.values()}


if __name__ == "__main__":
    import sys
    if "--check" in sys.argv:   # CI: the committed files are what this generator writes
        stale = [path.name for path, text in targets().items() if not path.exists() or path.read_text() != text]
        if stale:
            sys.exit(f"{', '.join(stale)} out of date: run python -m fastmlp.codegen")
        print(", ".join(path.name for path in targets()) + " up to date")
    else:
        for path, text in targets().items():
            path.write_text(text)
            print(f"wrote {path}")
