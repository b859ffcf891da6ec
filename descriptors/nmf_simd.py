"""The NMF kernels' inner loops with explicit SIMD vectors: the sparse product (rows of ``S B``
for a CSR matrix ``S`` and a dense ``B`` whose rows are 4 or 8 float32 wide, one SSE / AVX
register) and the multiplicative update of the large factor V in that row layout, then its Gram
matrix (`mu_update_rows`: ~1.2x on the whole kernel at K = 8, as it saves the transposes between
layouts). The update and the Gram matrix are two passes over the rows: in one pass the partner's
Gram rows and the new Gram's accumulators (2 x kp vectors at kp = 8) did not fit the 16 AVX
registers, and the spills made the pass 1.6x slower than the two (12.8 vs 7.8 us per 1280 x 8
factor; same values, bit for bit); the Gram pass runs per tile of 8 accumulators for the same
reason (kp = 16: 44.5 -> 30.4 us for the whole step).

Why: the products ``X V^T`` and ``X^T U`` are ~85% of an NMF iteration (issue 16). Written as
numba loops over 8 scalar accumulators, LLVM kept them scalar (no SLP vectorization of the
gathered rows): ~8 FMAs in 8 dependent chains per non-zero entry, latency-bound. Here each
non-zero entry is one vector load of ``B``'s row and one vector multiply-add, over 4 independent
accumulators (consecutive entries rotate through them, so the adds do not wait on each other).
Measured on the 2-core AVX2 CPU, a 140 x 1280 activation map with 12k non-zeros: 4-7x faster
than the scalar loops at K = 4 to 16 (`benchmarks/bench_descriptors.py`; docs/results.md).

The loop is emitted as LLVM IR through a numba ``intrinsic`` (no C compiler at install, the same
numba cache as the kernels); LLVM lowers ``<8 x float>`` to whatever the CPU has (two SSE halves
without AVX, NEON on ARM). Rounding: the sum over a row's entries is taken in 4 interleaved partial
sums instead of one, so results differ from a sequential sum by float rounding only.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

ACCUMULATORS = 4  # independent vector sums per row: covers the multiply-add latency (4-5 cycles)


def _vector_at(builder: ir.IRBuilder, data: ir.Value, offset: ir.Value, width: int) -> ir.Value:
    """``&data[offset]`` as a pointer to ``<width x float>`` (loads and stores align 4: unaligned)."""
    return builder.bitcast(builder.gep(data, [offset]), ir.VectorType(ir.FloatType(), width).as_pointer())


def _splat(builder: ir.IRBuilder, x: ir.Value, width: int) -> ir.Value:
    """``<width x float>`` with every lane ``x``."""
    i32 = ir.IntType(32)
    undef = ir.Constant(ir.VectorType(ir.FloatType(), width), ir.Undefined)
    one = builder.insert_element(undef, x, i32(0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(i32, width), [0] * width))


def _multiply_add(builder: ir.IRBuilder, acc: ir.Value, x: ir.Value, v: ir.Value) -> ir.Value:
    """``acc + x * v`` through ``llvm.fma``, not fast ``fmul`` + ``fadd``: with those, LLVM may
    re-associate independent partial sums into one dependent chain."""
    name = f"llvm.fma.v{v.type.count}f32"
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v.type, [v.type] * 3), name)
    return builder.call(fma, [x, v, acc])


def _row_block_product(width: int):
    """An intrinsic ``f(indptr, indices, values, B, rows, blk)`` -> None that sets, for every row
    ``i`` of the CSR matrix, ``rows[i, blk:blk+width] = sum_p values[p] * B[indices[p],
    blk:blk+width]`` over ``p in [indptr[i], indptr[i+1])``. ``B`` and ``rows`` are C-contiguous
    float32 2-d arrays with at least ``blk + width`` columns (unchecked: the callers' invariant);
    indices are any integer type."""

    @intrinsic
    def row_block_product(typingctx, indptr, indices, values, B, rows, blk):
        sig = types.void(indptr, indices, values, B, rows, blk)

        def codegen(context, builder, signature, args):
            ptr_a, idx_a, val_a, b_a, rows_a = (
                context.make_array(ty)(context, builder, value) for ty, value in zip(signature.args[:5], args[:5], strict=True)
            )
            _emit(builder, width, ptr_a, idx_a, val_a, b_a, rows_a, args[5])
            return context.get_dummy_value()

        return sig, codegen

    return row_block_product


def _emit(builder: ir.IRBuilder, width: int, ptr_a, idx_a, val_a, b_a, rows_a, blk: ir.Value) -> None:
    """The loop nest: rows i, then entries p in steps of ACCUMULATORS (one vector sum each), then
    the remaining entries into the first sum; the sums added and stored."""
    i64 = ir.IntType(64)
    vec = ir.VectorType(ir.FloatType(), width)
    fast = ("fast",)
    zero = ir.Constant(vec, [0.0] * width)
    blk = builder.sext(blk, i64) if blk.type.width < 64 else blk
    n_rows = builder.sub(builder.extract_value(ptr_a.shape, 0), i64(1))
    b_stride = builder.extract_value(b_a.shape, 1)
    rows_stride = builder.extract_value(rows_a.shape, 1)

    def as_i64(value: ir.Value) -> ir.Value:
        return builder.sext(value, i64) if value.type.width < 64 else value

    def row_vector(data: ir.Value, row: ir.Value, stride: ir.Value) -> ir.Value:
        return _vector_at(builder, data, builder.add(builder.mul(row, stride), blk), width)

    def add_entry(acc: ir.Value, p: ir.Value) -> ir.Value:
        j = as_i64(builder.load(builder.gep(idx_a.data, [p])))
        x = _splat(builder, builder.load(builder.gep(val_a.data, [p])), width)
        return _multiply_add(builder, acc, x, builder.load(row_vector(b_a.data, j, b_stride), align=4))

    fn = builder.function
    entry = builder.block
    row_head, row_body = fn.append_basic_block("row_head"), fn.append_basic_block("row_body")
    step_head, step_body = fn.append_basic_block("step_head"), fn.append_basic_block("step_body")
    rest_head, rest_body = fn.append_basic_block("rest_head"), fn.append_basic_block("rest_body")
    row_end, done = fn.append_basic_block("row_end"), fn.append_basic_block("done")
    builder.branch(row_head)

    builder.position_at_end(row_head)
    i = builder.phi(i64)
    i.add_incoming(i64(0), entry)
    builder.cbranch(builder.icmp_signed("<", i, n_rows), row_body, done)

    builder.position_at_end(row_body)
    start = as_i64(builder.load(builder.gep(ptr_a.data, [i])))
    end = as_i64(builder.load(builder.gep(ptr_a.data, [builder.add(i, i64(1))])))
    builder.branch(step_head)

    builder.position_at_end(step_head)  # ACCUMULATORS entries per step, one into each sum
    p = builder.phi(i64)
    p.add_incoming(start, row_body)
    sums = []
    for _ in range(ACCUMULATORS):
        phi = builder.phi(vec)
        phi.add_incoming(zero, row_body)
        sums.append(phi)
    builder.cbranch(builder.icmp_signed("<=", builder.add(p, i64(ACCUMULATORS)), end), step_body, rest_head)

    builder.position_at_end(step_body)
    stepped = [add_entry(acc, builder.add(p, i64(a))) for a, acc in enumerate(sums)]
    p.add_incoming(builder.add(p, i64(ACCUMULATORS)), step_body)
    for phi, value in zip(sums, stepped, strict=True):
        phi.add_incoming(value, step_body)
    builder.branch(step_head)

    builder.position_at_end(rest_head)  # the last < ACCUMULATORS entries into the first sum
    q = builder.phi(i64)
    q.add_incoming(p, step_head)
    first = builder.phi(vec)
    first.add_incoming(sums[0], step_head)
    builder.cbranch(builder.icmp_signed("<", q, end), rest_body, row_end)

    builder.position_at_end(rest_body)
    first.add_incoming(add_entry(first, q), rest_body)
    q.add_incoming(builder.add(q, i64(1)), rest_body)
    builder.branch(rest_head)

    builder.position_at_end(row_end)
    total = first
    for acc in sums[1:]:
        total = builder.fadd(total, acc, flags=fast)
    builder.store(total, row_vector(rows_a.data, i, rows_stride), align=4)
    i.add_incoming(builder.add(i, i64(1)), row_end)
    builder.branch(row_head)

    builder.position_at_end(done)


row_block_product_8 = _row_block_product(8)
row_block_product_4 = _row_block_product(4)


# ---- the multiplicative update of a factor in the gather layout --------------------------------

MU_ROW_WIDTHS = (4, 8, 12, 16, 20, 24, 28, 32)  # padded ranks with an unrolled SIMD update


def _mu_update_rows(kp: int):
    """An intrinsic ``f(F, P, G, out)`` for factors in the gather layout (m, kp): for every row j,
    ``out[j] = F[j] * P[j] / max(F[j] @ G, 1e-7)`` with entries below 1e-30 flushed to 0 (the
    Lee-Seung update of a factor whose numerator is P and whose partner's Gram matrix is G,
    (kp, kp) zero-padded). Unrolled for this ``kp``: rows are vectors of 8 (a last block of 4)."""

    @intrinsic
    def mu_update(typingctx, F, P, G, out):
        return types.void(F, P, G, out), _codegen_on_arrays(_emit_mu_update, kp)

    return mu_update


def _gram_rows(kp: int):
    """An intrinsic ``f(F, gram)``: ``gram = F^T F`` (kp, kp) for F (m, kp) in the gather layout,
    as a sum of the rows' outer products in row order (a multiply-add per row into each of
    kp x blocks accumulators, kept in registers). Unrolled for this ``kp``."""

    @intrinsic
    def gram_rows(typingctx, F, gram):
        return types.void(F, gram), _codegen_on_arrays(_emit_gram, kp)

    return gram_rows


def _codegen_on_arrays(emit, kp: int):
    """An intrinsic's codegen that hands its array arguments' data structures to ``emit(builder,
    kp, *arrays)`` and returns nothing."""

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(ty)(context, builder, value) for ty, value in zip(signature.args, args, strict=True)]
        emit(builder, kp, *arrays)
        return context.get_dummy_value()

    return codegen


def _blocks(kp: int) -> list[tuple[int, int]]:
    """(offset, width) of a kp-wide row as vectors of 8 and a last one of 4."""
    return [(o, 8) for o in range(0, kp - kp % 8, 8)] + ([(kp - 4, 4)] if kp % 8 else [])


def _row_loop(builder: ir.IRBuilder, m: ir.Value, accumulators: list[ir.Value]):
    """Open ``for j in range(m)`` with loop-carried vectors starting at ``accumulators``; returns
    (j, their phis, close) where ``close(updated)`` ends the body with the updated vectors and
    leaves the builder after the loop."""
    i64 = ir.IntType(64)
    entry = builder.block
    head = builder.append_basic_block("rows_head")
    body = builder.append_basic_block("rows_body")
    done = builder.append_basic_block("rows_done")
    builder.branch(head)
    builder.position_at_end(head)
    j = builder.phi(i64)
    j.add_incoming(i64(0), entry)
    phis = []
    for start in accumulators:
        phi = builder.phi(start.type)
        phi.add_incoming(start, entry)
        phis.append(phi)
    builder.cbranch(builder.icmp_signed("<", j, m), body, done)
    builder.position_at_end(body)

    def close(updated: list[ir.Value]) -> None:
        after = builder.block
        for phi, value in zip(phis, updated, strict=True):
            phi.add_incoming(value, after)
        j.add_incoming(builder.add(j, i64(1)), after)
        builder.branch(head)
        builder.position_at_end(done)

    return j, phis, close


def _emit_mu_update(builder: ir.IRBuilder, kp: int, F_a, P_a, G_a, out_a) -> None:
    i64, f32 = ir.IntType(64), ir.FloatType()
    blocks = _blocks(kp)
    fast = ("fast",)

    def vec(width: int) -> ir.VectorType:
        return ir.VectorType(f32, width)

    def load_vec(data: ir.Value, offset: ir.Value, width: int) -> ir.Value:
        return builder.load(_vector_at(builder, data, offset, width), align=4)

    def store_vec(value: ir.Value, data: ir.Value, offset: ir.Value) -> None:
        builder.store(value, _vector_at(builder, data, offset, value.type.count), align=4)

    # the partner's Gram matrix, loop-invariant: G[b, block] for every b and block
    g_rows = [[load_vec(G_a.data, i64(b * kp + o), w) for o, w in blocks] for b in range(kp)]
    floor = {w: ir.Constant(vec(w), [1e-7] * w) for _, w in blocks}
    tiny = {w: ir.Constant(vec(w), [1e-30] * w) for _, w in blocks}
    zero = {w: ir.Constant(vec(w), [0.0] * w) for _, w in blocks}

    j, _, close = _row_loop(builder, builder.extract_value(F_a.shape, 0), [])
    base = builder.mul(j, i64(kp))
    f_scalars = [builder.load(builder.gep(F_a.data, [builder.add(base, i64(b))])) for b in range(kp)]
    for n_block, (o, w) in enumerate(blocks):
        # F[j] @ G[:, block] in two partial sums (even and odd b) to halve the add chain
        sums = [zero[w], zero[w]]
        for b in range(kp):
            sums[b % 2] = _multiply_add(builder, sums[b % 2], _splat(builder, f_scalars[b], w), g_rows[b][n_block])
        denominator = builder.fadd(sums[0], sums[1])
        below = builder.fcmp_ordered("<", denominator, floor[w], flags=fast)
        denominator = builder.select(below, floor[w], denominator)
        offset = builder.add(base, i64(o))
        ratio = builder.fdiv(builder.fmul(load_vec(F_a.data, offset, w), load_vec(P_a.data, offset, w), flags=fast),
                             denominator, flags=fast)
        ratio = builder.select(builder.fcmp_ordered(">=", ratio, tiny[w], flags=fast), ratio, zero[w])
        store_vec(ratio, out_a.data, offset)
    close([])


GRAM_TILE = 8  # Gram accumulators per pass over the rows: 8 vectors, the row and a splat fit 16 registers


def _emit_gram(builder: ir.IRBuilder, kp: int, F_a, gram_a) -> None:
    """gram[a, block] = sum_j F[j, a] * F[j, block], one pass over the rows per tile of up to
    GRAM_TILE rows a of one block: each accumulator's multiply-adds come in row order whatever
    the tiling (the same sums), and no pass holds more accumulators than the registers do (at
    kp = 16 one pass held 32 and spilled them on every row)."""
    i64, f32 = ir.IntType(64), ir.FloatType()
    m = builder.extract_value(F_a.shape, 0)
    for o, w in _blocks(kp):
        for a0 in range(0, kp, GRAM_TILE):
            tile = range(a0, min(kp, a0 + GRAM_TILE))
            zeros = [ir.Constant(ir.VectorType(f32, w), [0.0] * w) for _ in tile]
            j, sums, close = _row_loop(builder, m, zeros)
            base = builder.mul(j, i64(kp))
            row = builder.load(_vector_at(builder, F_a.data, builder.add(base, i64(o)), w), align=4)
            updated = []
            for acc, a in zip(sums, tile, strict=True):  # gram[a, block] += F[j, a] * F[j, block]
                x = builder.load(builder.gep(F_a.data, [builder.add(base, i64(a))]))
                updated.append(_multiply_add(builder, acc, _splat(builder, x, w), row))
            close(updated)
            for acc, a in zip(sums, tile, strict=True):
                builder.store(acc, _vector_at(builder, gram_a.data, i64(a * kp + o), w), align=4)


_mu4, _mu8, _mu12, _mu16, _mu20, _mu24, _mu28, _mu32 = (_mu_update_rows(kp) for kp in MU_ROW_WIDTHS)
_gram4, _gram8, _gram12, _gram16, _gram20, _gram24, _gram28, _gram32 = (_gram_rows(kp) for kp in MU_ROW_WIDTHS)
_FLOOR = np.float32(1e-7)
_TINY = np.float32(1e-30)


@njit(cache=True, nogil=True)
def mu_update_rows(F, P, G, out, gram):
    """``out = F * P / max(F @ G, 1e-7)`` row-wise (entries below 1e-30 flushed to 0) and
    ``gram = out^T out``, for F, P, out (m, kp) and G, gram (kp, kp), kp a multiple of 4: the
    unrolled SIMD update then the unrolled Gram pass up to kp = 32, plain loops above."""
    kp = F.shape[1]
    if kp == 4:
        _mu4(F, P, G, out)
        _gram4(out, gram)
    elif kp == 8:
        _mu8(F, P, G, out)
        _gram8(out, gram)
    elif kp == 12:
        _mu12(F, P, G, out)
        _gram12(out, gram)
    elif kp == 16:
        _mu16(F, P, G, out)
        _gram16(out, gram)
    elif kp == 20:
        _mu20(F, P, G, out)
        _gram20(out, gram)
    elif kp == 24:
        _mu24(F, P, G, out)
        _gram24(out, gram)
    elif kp == 28:
        _mu28(F, P, G, out)
        _gram28(out, gram)
    elif kp == 32:
        _mu32(F, P, G, out)
        _gram32(out, gram)
    else:
        _mu_update_rows_loops(F, P, G, out, gram)


@njit(cache=True, nogil=True, fastmath=True)
def _mu_update_rows_loops(F, P, G, out, gram):
    m, kp = F.shape
    gram[:, :] = 0.0
    for j in range(m):
        for o in range(kp):
            denominator = np.float32(0.0)
            for b in range(kp):
                denominator += F[j, b] * G[b, o]
            v = F[j, o] * P[j, o] / max(denominator, _FLOOR)
            out[j, o] = v if v >= _TINY else np.float32(0.0)
        for a in range(kp):
            for o in range(kp):
                gram[a, o] += out[j, a] * out[j, o]
