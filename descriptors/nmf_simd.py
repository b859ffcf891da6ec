"""The sparse product of the NMF kernels with explicit SIMD vectors: rows of ``S B`` for a CSR
matrix ``S`` and a dense ``B`` whose rows are 4 or 8 float32 wide (one SSE / AVX register).

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

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

ACCUMULATORS = 4  # independent vector sums per row: covers the multiply-add latency (4-5 cycles)


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
    i64, i32 = ir.IntType(64), ir.IntType(32)
    vec = ir.VectorType(ir.FloatType(), width)
    fast = ("fast",)
    zero = ir.Constant(vec, [0.0] * width)
    undef = ir.Constant(vec, ir.Undefined)
    broadcast_mask = ir.Constant(ir.VectorType(i32, width), [0] * width)
    blk = builder.sext(blk, i64) if blk.type.width < 64 else blk
    n_rows = builder.sub(builder.extract_value(ptr_a.shape, 0), i64(1))
    b_stride = builder.extract_value(b_a.shape, 1)
    rows_stride = builder.extract_value(rows_a.shape, 1)

    def as_i64(value: ir.Value) -> ir.Value:
        return builder.sext(value, i64) if value.type.width < 64 else value

    def row_vector(data: ir.Value, row: ir.Value, stride: ir.Value) -> ir.Value:
        offset = builder.add(builder.mul(row, stride), blk)
        return builder.bitcast(builder.gep(data, [offset]), vec.as_pointer())

    def multiply_add(acc: ir.Value, p: ir.Value) -> ir.Value:
        j = as_i64(builder.load(builder.gep(idx_a.data, [p])))
        x = builder.load(builder.gep(val_a.data, [p]))
        xs = builder.shuffle_vector(builder.insert_element(undef, x, i32(0)), undef, broadcast_mask)
        b_row = builder.load(row_vector(b_a.data, j, b_stride), align=4)
        return builder.fadd(acc, builder.fmul(xs, b_row, flags=fast), flags=fast)

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
    stepped = [multiply_add(acc, builder.add(p, i64(a))) for a, acc in enumerate(sums)]
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
    first.add_incoming(multiply_add(first, q), rest_body)
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
