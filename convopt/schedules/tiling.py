"""The register-tile rules of the x86 schedules, in one place: each schedule calls them to split its loops
and the cost formulas (cost/formulas.py) call the same functions, so a prediction describes the code
that runs.

Every rule takes the SIMD width ``lanes`` (Target.lanes); the register budget follows from it
(``vector_registers``: 32 zmm with AVX-512, 16 ymm with AVX2). An FMA kernel keeps about half the
registers as accumulators: the rest hold the broadcast inputs and the weight vectors it streams.
"""

from __future__ import annotations

import math

from ..target import vector_registers


def accumulators(lanes: int) -> int:
    """Vector accumulators of a register tile: half the vector registers (8 with AVX2, 16 with AVX-512)."""
    return vector_registers(lanes) // 2


def rows_outermost(*, weights: int, inputs: int, in_passes: bool = False) -> bool:
    """Whether a 1x1 conv's parallel loop runs over output rows outside channel blocks (each input row read
    once, the weights once per row) rather than blocks outside rows (each block's weights read once, the
    input once per block): the operand read again and again should be the smaller one, which stays in
    cache. ResNet-50's last stage (512 <-> 2048 channels at 7x7: 4 MB of weights, 100 KB of input) ran at
    22% of the FMA peak rows-outermost on a 2 MB-L2 Intel core: every row streamed the weights from L3.

    Unless the reduction runs in passes (``in_passes``: tile weights beyond the L1, reduction_chunk), also for
    weights up to twice the input: in a model the input was just written by the kernel before, partly by the
    other cores, and blocks outermost make every core read all of it. benchmarks/producer_consumer.py (Intel
    AVX-512, 2 cores), a 1x1 right after the depthwise conv writing its input: 256 channels at 14 px (weights
    1.3x the input) 103 us blocks outermost, 91 rows outermost (76 alone either way); 512 at 7 px (10x) level."""
    return weights <= inputs or (not in_passes and weights <= 2 * inputs)


PREFETCH_LINES_PER_ROW = 16  # cache lines of the next pass's weights prefetched per output row (all streams)
LINE_FLOATS = 16  # fp32 per 64-byte cache line


def reduction_chunk(channels: int, weights_per_channel: int, l1_bytes: int, *, layer_weights: int = 0,
                    l2_bytes: int | None = None, rows: int | None = None) -> int | None:
    """Input channels per pass of a channel-vectorized conv's reduction, when the weights one register tile
    reads over the whole reduction (``channels`` x ``weights_per_channel`` floats: the tile's output channels
    x kernel taps) exceed twice the L1: the largest divisor of ``channels`` whose weights fit half the L1
    (at least half that many, and 4), so that they serve every output row of the tile's channels from L1;
    the accumulators of all the rows are stored between passes. None: one pass.

    Also in at least two passes when the layer's weights (``layer_weights`` floats) fill half the L2
    (``l2_bytes``) or more: in a model they come from L3 or memory on every call, and the kernel then prefetches
    each pass's weights during the one before (prefetch.py), which one pass can't. Measured with the weights
    cycled through 96 MB (Intel AVX-512, 48 KB L1, 2 MB L2), one pass -> passes: 1x1 512->2048 at 7x7 373 ->
    294 us (4 MB), 512->1024 stride 2 at 28x28 623 -> 537 (2 MB), 256->1024 at 14x14 277-283 -> 262-266
    (1 MB); level: 256->512 stride 2 at 56x56 (512 KB), 128->512 at 28x28 (256 KB).

    Measured alone on an Intel AVX-512 core (48 KB L1, 32-channel tiles, blocked tensors, warm weights), one
    pass -> passes: 1x1 2048->512 at 7x7 505 -> 415 us (128-channel passes; 64: 464, 256: 433), 1024->256 at
    14x14 429-488 -> 357-366, 1024->2048 stride 2 917 -> 855; 3x3 512->512 stride 2 at 14x14 918 -> 779
    (direct), 1192 -> 830 (im2win), im2win's stride-2 3x3s at 28 and 56 px 1.4-1.5x; 1x1s with 512 input
    channels (64 KB of weights) level, with 256 (32 KB, within twice the L1) 15% slower.

    Given the output ``rows`` a pass runs in one task (``pass_rows``), passes also small enough that the next
    one's weights come in at most PREFETCH_LINES_PER_ROW lines a row (prefetch.py), the largest such divisor of
    at least 4 channels. Passes of half the L1 asked for 18-46 lines a row, and with the weights in no cache
    (cycled through 64 MB of copies, as in a model whose weights exceed the L3) the prefetch no longer hid the
    memory. Measured alone (Zen 5, AVX-512, 48 KB L1, 2-block tiles, blocked tensors), weights in no cache,
    half-L1 passes -> at most 16 lines a row: 1x1 736->736 at 8 px 184 -> 46 channels a pass 186 -> 139 us
    (warm weights 136 -> 135), 1152->192 at 7 px 192 -> 48 channels 62.5 -> 44.6, 400->400 at 7 px 100 -> 50
    42.4 -> 35.5, 2048->512 at 7 px 128 -> 32 216 -> 196 (64: 193), 3x3 512->512 at 7 px 16 -> 4 channels 552
    -> 445 (warm 475 -> 432; 8: 445), 3x3 256->256 at 14 px 16 -> 8 464 -> 439; 1024->512 and 1024->256 at 14
    px level."""
    fits = l1_bytes // 2 // (4 * weights_per_channel)
    if 4 * channels * weights_per_channel <= 2 * l1_bytes:
        if l2_bytes is None or 4 * layer_weights < l2_bytes // 2:
            return None
        chunk = divisor_tile(channels, range(min(fits, channels // 2), 0, -1))
        chunk = chunk if chunk and chunk >= 4 else None
    else:
        chunk = divisor_tile(channels, range(fits, 0, -1))
        chunk = chunk if chunk and chunk >= max(4, fits / 2) else None
    if chunk and rows:
        # smaller passes where the next one's weights would be prefetched in bursts of more than
        # PREFETCH_LINES_PER_ROW lines a row (prefetch.py spreads them over the pass's ``rows``)
        cap = PREFETCH_LINES_PER_ROW * LINE_FLOATS * rows // weights_per_channel
        chunk = divisor_tile(channels, range(min(chunk, cap), 3, -1)) or chunk
    return chunk


UNROLLS = (1, 2, 4, 8, 16)


def reduction_unroll(channels: int) -> int:
    """Input channels per unrolled step of a 1x1 conv's reduction (channel-vectorized direct and im2win
    kernels): 4 when they divide the reduction (2, else 1). Not unrolled, every input channel recomputes its
    blocked input's address (an integer multiply, shifts and masks: 8 instructions beside a 2 x 7 tile's 14
    FMAs and 9 loads), which left the loop bound by instruction issue, not by the FMA ports. Measured alone
    (Intel AVX-512, 2 cores, blocked tensors, fastest of 5 interleaved rounds), not unrolled -> by 4: 256->256
    at 14 px 80.4 -> 72.7 us, 128->128 at 28 px 77.3 -> 72.3, 96->24 at 56 px 60.4 -> 55.1, 32->192 at 28 px
    31.3 -> 29.0; in passes 960->160 at 7 px 50.0 -> 45.5, 1024->256 at 14 px 320 -> 305, 512->2048 at 7 px
    319 -> 307; by 8 or 16 no better than by 4. (Unrolling a 3x3 conv's channels inside its taps: 64->64 at
    56 px 661 -> 707 us, so k x k convs keep their loops.)"""
    return next(u for u in (4, 2, 1) if channels % u == 0)


def reduction_unrolls(channels: int, default: int) -> list[int]:
    """Unroll depths of a 1x1 conv's reduction the design space may choose: those of ``UNROLLS`` that divide it."""
    return sorted({default} | {u for u in UNROLLS if channels % u == 0})


def static_makespan(sizes: list[int], cores: int) -> int:
    """The longest share of a parallel loop over tasks of ``sizes``, as TVM's pool splits it: ceil(T / cores)
    consecutive tasks per thread."""
    share = -(-len(sizes) // cores)
    return max(sum(sizes[i:i + share]) for i in range(0, len(sizes), share))


def spreads_over_channels(pixel_tiles: int, cores: int) -> bool:
    """Whether a GEMM parallel over its tiles of output pixels also takes its tiles of output channels in
    parallel: when the pixel tiles alone split unevenly over the cores (small maps: 4x4 is one tile of 16
    pixels, which ran on one core; 7x7 seven tiles of 7, four against three)."""
    return static_makespan([1] * pixel_tiles, cores) * cores > 1.1 * pixel_tiles


def pass_rows(tiles: int, rows: int, cores: int) -> int:
    """Output rows a chunked reduction's pass runs in one parallel task (its rows split in ``row_groups``)."""
    return -(-rows // row_groups(tiles, rows, cores))


def row_groups(tiles: int, rows: int, cores: int) -> int:
    """Groups of output rows a chunked reduction's parallel loop adds to its ``tiles`` channel tiles, so that the
    cores share the work evenly: the fewest (each group reads the tile's weights again) whose static split is
    within 10% of an even one, else the most even. One group when the tiles alone divide well: 960->160 at
    7x7 has 5 tiles of 2 blocks, 3 tasks against 2 on a 2-core machine (21 rows against 14); in 2 groups of 4
    and 3 rows, 18 against 17."""
    best, best_span = 1, None
    for groups in range(1, rows + 1):
        per = -(-rows // groups)  # split(rows, [groups, per]): the last group holds the rest
        if (groups - 1) * per >= rows:
            continue  # an empty group
        sizes = [min(per, rows - i * per) for i in range(groups)]
        span = static_makespan(sizes * tiles, cores)
        if span * cores <= 1.1 * tiles * rows:
            return groups
        if best_span is None or span < best_span:
            best, best_span = groups, span
    return best


TILE_FLOOR = 0.5  # module constant, read at call time (benchmarks/kernel_constant_ab.py compares 0.75, the old floor)


def pick_tile(extent: int, target: int) -> int:
    """Largest divisor of ``extent`` in [``TILE_FLOOR`` x target, target]; else ``target`` (a guarded tail).

    A guarded tail costs far more than a smaller tile: the tile's loop is unrolled, so every unrolled column
    of every tile carries its bounds test (the tile index is a variable), and a depthwise conv whose taps are
    unrolled too tests each column at each tap. Alone, Intel AVX-512, floor 3/4 (until session 56) -> 1/2:
    depthwise 768 channels 9x9 at 18 px with GELU (convmixer_768_32 at 128 px) 394 -> 128 us (tiles of 16 and
    a guarded one -> 9), 3x3 256 channels at 18 px 27.2 -> 14.6; direct (blocked) 3x3 64 -> 64 at 10 px 43.9 ->
    27.7, stride 2 at 20 px 59.1 -> 39.4, 1x1 256 -> 256 at 10 px 70.1 -> 32.3 (8 + guarded -> 5 columns).
    Maps of 10, 20 and 40 columns come with 160 and 320 px inputs, 18 with 288."""
    if extent <= target:
        return extent
    lo = max(1, math.ceil(target * TILE_FLOOR))
    for t in range(target, lo - 1, -1):
        if extent % t == 0:
            return t
    return target


def divisor_tile(n: int, candidates) -> int | None:
    """The first candidate that divides ``n`` (and is at most n), or None."""
    return next((c for c in candidates if c <= n and n % c == 0), None)


def channel_block(out_per_group: int, lanes: int) -> int:
    """Output channels per block: one vector when a group is at least that wide, else the group itself
    (depthwise: 1; the kernels then vectorize over output columns)."""
    return lanes if out_per_group >= lanes else max(out_per_group, 1)


def vectorizes_channels(block: int, lanes: int) -> bool:
    """The direct and im2win kernels vectorize over the channel block when it fills half a vector."""
    return block >= max(4, lanes // 2)


def channel_tile(blocks: int, block: int, lanes: int, out_width: int | None = None) -> tuple[int, int]:
    """(channel blocks per register tile, vectors per block) of the channel-vectorized direct/im2win kernels:
    two blocks of one vector each when the blocks pair up, else three when they come in threes and 3 x 4
    columns fit the accumulators (AVX-512), else one; on rows too narrow to fill half the accumulators with
    that (``out_width``: a tile never spans rows), as many blocks as ``whole_row_blocks`` allows.

    Each step of the reduction loads a weight vector per block and broadcasts an input per column, so a tile
    of t blocks x w columns makes t * w FMAs for t + w loads: one block (1 x 14: 14 FMAs, 15 loads) left the
    kernel bound by its loads. 3 x 5 measured 2.0-2.3x faster than 1 x 14 on 3-block 1x1 convs (160->40 and
    96->48, Intel AVX-512), 1.2x on 15 blocks (720->240); 4 x 4 was slower than 2 x 8 where both apply."""
    vectors = -(-block // lanes)
    if vectors != 1:
        return 1, vectors
    tile = paired_blocks(blocks, lanes)
    if out_width is not None and 2 * tile * out_width <= accumulators(lanes):  # half the accumulators idle or more
        tile = max(tile, whole_row_blocks(blocks, out_width, lanes))
    return tile, 1


def paired_blocks(blocks: int, lanes: int) -> int:
    """The channel tile whatever the row: 2 blocks where they pair up, 3 where they come in threes and 3 x 4
    columns fit the accumulators, else 1 (channel_tile)."""
    if blocks % 2 == 0:
        return 2
    return 3 if blocks % 3 == 0 and 3 * 4 <= accumulators(lanes) else 1


def whole_row_blocks(blocks: int, out_width: int, lanes: int) -> int:
    """Channel blocks per register tile on a row narrower than the accumulators: the most blocks dividing
    ``blocks`` whose tile of the whole row fits the registers with a weight vector per block and a broadcast
    beside it (t x (w + 1) + 1 < the vector registers). On 4x4 maps (a 128 px input's last stage) one block
    x 4 columns left the kernel bound by its loads and the FMA latency (4 chains): measured alone (Zen 5,
    AVX-512, blocked in and out) 400->400 1x1 19.6 -> 12.5 us with 5 blocks, 2048->512 1x1 78.6 -> 70.5 us
    and 512->512 3x3 173 -> 154 us with 4 blocks instead of 2. 7-column rows (a 224 px input's last stage) keep
    their tile: 2 x 7 fills 14 of the 16 accumulators, and 3 x 7 measured level (direct and im2win, six 7x7
    layers) but for one layer 1.3x slower (1152->192 1x1, direct)."""
    limit = vector_registers(lanes) - 2
    return max((t for t in range(1, blocks + 1) if blocks % t == 0 and t * (out_width + 1) <= limit), default=1)


MIN_PADDED_BLOCKS = 11  # an extra block costs at most 1/11 (9%) more work


def output_blocks(groups: int, out_per_group: int, lanes: int, out_width: int) -> int:
    """Output-channel blocks the direct and im2win kernels compute (their packed weight's first axis): a
    block per ``channel_block`` channels of each group, and for one group of channel-vectorized blocks whose
    count leaves a register tile of one block (``channel_tile``: no factor 2 or 3, a row too wide to widen the
    tile), one zero block more when there are at least ``MIN_PADDED_BLOCKS``, so that tiles of two blocks fit:
    1 x 7 tiles (7 FMAs to 8 loads, 7 accumulator chains) left such kernels bound by loads and the FMA latency.
    The epilogue stores the real channels only.

    Measured alone (Zen 5, AVX-512, direct, blocked in and out), real count -> one block more: 1x1 400->400 at
    7 px 40.4 -> 34.9 us (im2win 41.3 -> 35.1), 1024->400 at 7 px 99.8 -> 87.3, 3x3 400->400 at 7 px 344 -> 301,
    1x1 400->400 at 14 px 135 -> 131, 208->208 at 14 px 38.6 -> 35.6, 176->176 at 7 px 8.0 -> 7.3; fewer
    blocks, where the zero block is a larger share, lose or break even: 112->112 at 28 px (7 blocks) 41.3 ->
    43.3, 672->112 at 14 px 62.7 -> 62.1, 240->80 at 14 px (5) 16.1 -> 18.0, 3x3 80->80 at 14 px 44.4 -> 52.6."""
    block = channel_block(out_per_group, lanes)
    blocks = groups * -(-out_per_group // block)
    if (groups == 1 and blocks >= MIN_PADDED_BLOCKS and vectorizes_channels(block, lanes)
            and channel_tile(blocks, block, lanes, out_width)[0] == 1):
        return blocks + 1
    return blocks


PAIR_GROUPS = True  # module constant, read at build time (benchmarks/kernel_constant_ab.py compares without)


def paired_groups(groups: int, in_channels: int, out_channels: int, lanes: int) -> bool:
    """Whether the direct kernel computes two groups in one vector: where a group's output channels fill
    exactly half of one (RegNet's and ResNeXt's 8-channel groups with AVX-512, 4-channel ones with AVX2) and
    both sides fill whole channel blocks, so that the model passes them blocked (passes/block_layout.py).
    Lane 2i + h of block j is channel i of group 2j + h, its input read as the pair (channel c of group 2j,
    of group 2j + 1), adjacent in an interleaved copy: one 64-bit broadcast (vbroadcastsd) an FMA of the
    whole width, where blocks of half a vector made two half-width FMAs for the same loads. From and to
    NCHW the interleaving is a gather each way (0.94-1.5x the unpaired kernel's time where the channels don't
    fill blocks: not paired; a conv of whole blocks that block_layout leaves NCHW, at a graph's edge, pays it)."""
    return (PAIR_GROUPS and groups > 1 and 2 * (out_channels // groups) == lanes
            and in_channels % lanes == 0 and out_channels % lanes == 0)


def column_tile(out_width: int, blocks: int, block: int, lanes: int) -> int:
    """Output columns per register tile of the channel-vectorized direct/im2win kernels: the accumulators
    left after the channel tile (2 x 4 with AVX2, 2 x 8 with AVX-512), a divisor of the row when one is close;
    the whole row where the channel tile was widened for it (channel_tile)."""
    tile, vectors = channel_tile(blocks, block, lanes, out_width)
    if vectors == 1 and tile != paired_blocks(blocks, lanes):  # widened for a narrow row
        return out_width
    return pick_tile(out_width, max(1, accumulators(lanes) // (tile * vectors)))


def channel_tiles(blocks: int, default: int) -> list[int]:
    """Channel blocks per register tile the design space may choose: 1, 2 when the blocks pair up, 3 when
    they come in threes."""
    return sorted({default, 1} | {t for t in (2, 3) if blocks % t == 0})


def column_tiles(out_width: int, default: int, lanes: int) -> list[int]:
    """Output columns per register tile the design space may choose: up to all the accumulators, each
    dividing the row exactly when the default does (the epilogue's vectorization depends on that, and a
    sampled value must not change a Python branch: the search replays traces, it doesn't rerun this)."""
    divides = out_width % default == 0
    limit = min(out_width, accumulators(lanes))
    return sorted({default} | {t for t in range(2, limit + 1) if (out_width % t == 0) == divides})


def row_tile(out_width: int, lanes: int) -> int:
    """Output columns per tile of the column-vectorized (depthwise) direct kernel: the whole row when it
    fits in 8 vectors (independent accumulators), else a divisor made of 8..3 vectors, else 4 vectors."""
    if out_width <= 8 * lanes:
        return out_width
    return divisor_tile(out_width, [k * lanes for k in range(8, 2, -1)]) or 4 * lanes


def group_row_tile(out_width: int, lanes: int) -> int:
    """Output columns per tile of the column-vectorized direct kernel over groups of 2..lanes/2 channels (its
    register tile is the group's channels x this many columns): a divisor of the row between half a vector
    and a vector, else the whole row when it fits in one, else a divisor of at least 4, else the depthwise
    rule. Wider tiles measured slower (Zen 4, 4-channel groups, 56 px: 14 columns 1.0, 28 2.7, the whole row
    5.8; a tile that does not divide the row is unrolled, not vectorized: 16 of 56 ran 6x slower)."""
    tile = divisor_tile(out_width, range(lanes, lanes // 2 - 1, -1))
    if tile is None and out_width <= lanes:
        tile = out_width
    return tile or divisor_tile(out_width, range(lanes // 2, 3, -1)) or row_tile(out_width, lanes)


BAND_ROWS = (8, 4, 2, 1)


def band_rows(rows: int, tasks_per_row: int, cores: int) -> int:
    """Output rows per parallel task of the depthwise kernel on blocked input: the most of ``BAND_ROWS`` that
    still leaves 4 parallel tasks per core (``tasks_per_row`` bands side by side: batch x channel blocks). Until
    session 47 the kernel copied a band's padded input rows into a buffer that stayed in L1, once for up to 8
    output rows; now it reads the input in place, and the band is the work of one task."""
    for r in BAND_ROWS:
        if tasks_per_row * -(-rows // r) >= 4 * cores:
            return min(r, rows)
    return 1


def ring_band_rows(k: int, s: int, out_rows: int, rows: int, top: int, bands: int) -> list[int]:
    """Rows of a ring's producer (``rows`` rows, ``top`` rows of zero padding above) that each of ``bands``
    bands of a k x k, stride s consumer's ``out_rows`` output rows computes (the fused kernels' rings): a
    band's own rows, and its first k - s rows again where the band above computed them too."""
    th = -(-out_rows // bands)
    return [len(range(max(top, b * th * s), min(rows + top, (min(out_rows, b * th + th) - 1) * s + k)))
            for b in range(-(-out_rows // th))]


def col_copy_vector(out_width: int, lanes: int) -> int | None:
    """Output columns copied per vector by im2col's unroll stage: a vector or half of one dividing the row
    (None: copied one by one). Measured alone (Zen 5, AVX-512, 3x3 convs, blocked in and out), scalar ->
    vector copies: 14->14 at 32x32 49.8 -> 26.0 us, 28->28 at 16x16 27.4 -> 18.1, 32->32 at 32x32 139 -> 92,
    stride 2 16->16 at 64x64 68 -> 43 (the input's columns a stride apart are gathered); 64->64 at 56x56 in 8-column
    vectors level (596-637 -> 622)."""
    return next((v for v in (lanes, lanes // 2) if out_width % v == 0), None)


def gemm_tile(pixels: int, out_per_group: int, out_channels: int, lanes: int) -> tuple[str, int, int, int]:
    """im2col's GEMM register tile (mode, m, tile_o, tile_p): see schedules/im2col.py."""
    budget = accumulators(lanes)
    # channel vectors where the pixels don't fill whole ones: the lanes, else a half or a quarter of them (at
    # least 4) dividing the channels, not one guarded pixel vector per row of a 4 x lanes tile (56 -> 56 3x3
    # at 14x14 ran 217 us so, 8% of peak, 4.5x its 48 and 64 channel neighbours; 72 -> 72 at 7x7 610 us)
    width = next((w for w in (lanes, lanes // 2, lanes // 4) if w >= 4 and out_per_group % w == 0), None)
    if pixels % lanes and width:
        ot = 2 if (out_channels // width) % 2 == 0 else 1
        return "o", width, ot, max(d for d in range(1, budget // ot + 1) if pixels % d == 0)
    mr = next(m for m in (4, 2, 1) if out_per_group % m == 0)
    if pixels % lanes:
        return "p", mr, mr, lanes
    v = max(v for v in range(1, budget // mr + 1) if pixels % (v * lanes) == 0)
    return "p", mr, mr, v * lanes


def gemm_accumulators(pixels: int, out_per_group: int, out_channels: int, lanes: int) -> float:
    """Vector accumulators of im2col's register tile (fractional when a pixel vector has a guarded tail)."""
    mode, width, tile_o, tile_p = gemm_tile(pixels, out_per_group, out_channels, lanes)
    if mode == "o":
        return tile_o * tile_p * width / lanes  # narrower vectors count as their share of a full one
    if pixels % lanes:
        return tile_o * pixels / (-(-pixels // lanes) * lanes)
    return tile_o * tile_p / lanes


def winograd_tile_width(tiles: int) -> int:
    """Winograd's batched-GEMM register-tile width over tiles (6, 5 or 4): the fewest padded tiles per unit of
    GEMM efficiency (2 x tt accumulators: 12 keep both FMA pipes busy, 8 are latency-bound)."""
    return min((6, 5, 4), key=lambda tt: -(-tiles // tt) * tt / {6: 1.0, 5: 0.95, 4: 0.8}[tt])


def fft_vector_budget(lanes: int) -> int:
    """Accumulator vectors of the FFT's GEMM tiles: 12 of 16 registers (its rows reuse one broadcast), 24 of 32."""
    return vector_registers(lanes) * 3 // 4


def fft_gemm_tile(rows: int, vectors: int, lanes: int, max_rows: int = 8) -> tuple[int, int]:
    """(rows, vectors) of an FFT GEMM register tile: divisors of ``rows`` and ``vectors`` within the budget,
    the most balanced (most reuse per load)."""
    best, best_score = (1, 1), -1.0
    budget = fft_vector_budget(lanes)
    for mt in range(1, min(rows, max_rows) + 1):
        if rows % mt:
            continue
        for nv in range(1, vectors + 1):
            if vectors % nv or mt * nv > budget:
                continue
            score = mt * nv / (mt + nv) + 0.01 * mt * nv
            if score > best_score:
                best, best_score = (mt, nv), score
    return best


def divisor_tiles(extent: int, limit: int, default: int) -> list[int]:
    """Tiles the design space may choose for a loop that must split exactly: the divisors of ``extent`` up
    to ``limit``, and the default."""
    return sorted({default} | {d for d in range(1, min(extent, limit) + 1) if extent % d == 0})


def columns_outermost(rows: int, columns: int) -> bool:
    """Whether the dense kernel's parallel tiles walk the row tiles inside each column tile (each column tile's
    weights read once, the input once per column tile) rather than the column tiles inside each row tile (the
    input read once, the whole weight once per row tile): the operand read again should be the smaller one,
    the input [rows, K] or the weight [columns, K], as for 1x1 convs (``rows_outermost``). A batch-1 row
    keeps the order of before (one row tile: the same loops). Measured (Intel AVX-512, 2 cores, alone), 49 x
    448 -> 1792 with 7 x 2 tiles: 320 -> 235 us (the 3.2 MB weight, beyond the L2, had streamed from L3 once a
    row tile); efficientformer_l1 0.967 end to end."""
    return ROWS_INSIDE_COLUMNS and 1 < rows < columns


ROWS_INSIDE_COLUMNS = True  # module constant, read at build time (benchmarks/constant_ab.py compares without)
DENSE_ROW_TILES = (6, 4, 7, 5, 3, 2)  # the dense kernel's row tiles, the first dividing M taken (dense_tile)


def dense_tile(rows: int, blocks: int, lanes: int) -> tuple[int, int]:
    """(rows, vectors of output columns) of the dense kernel's register tile (schedules/dense.py).

    One row (a batch-1 classifier) streams its weight: a few independent vectors per tile, and at least 16
    tiles so both cores stay busy to the end. Several rows: the first of ``DENSE_ROW_TILES`` dividing M, with
    the rest of the accumulators across output vectors, like a GEMM micro-kernel. A one-row tile over many
    rows loads a weight vector per FMA and reads the whole weight once a row: a transformer MLP over 7 x 7
    tokens (efficientformer_l1's 448 -> 1792 and back, M = 49, which no tile of 6, 4, 3 or 2 rows divides) ran
    at 50 GFLOP/s, 9.5x its roofline bound, with 1 x 28 tiles."""
    budget = accumulators(lanes)
    if rows == 1:
        return 1, max(d for d in range(1, budget + 1) if blocks % d == 0 and (d == 1 or blocks // d >= 16))
    mt = divisor_tile(rows, DENSE_ROW_TILES) or 1
    return mt, max(d for d in range(1, budget // mt + 1) if blocks % d == 0)
