"""pydiffuse_triton::group_norm(_backward): group norm with affine, AdaGN and SiLU, fused.

    y = act((GN(x) w + bias) (1 + scale) + shift) = act(xhat A + B),  xhat = (x - mean) rstd,
    A = w (1 + scale),  B = bias (1 + scale) + shift  (per (b, c); mean, rstd per (b, g)).

Group (b, g) of x [B, C, *spatial] is a 2-D view [rows, cols] with unit column stride: [C/G, S]
(row stride S) in C-order, [S, C/G] (row stride C) channels-last; the channel axis is the rows or
the columns. A group whose padded tile fits FUSED_MAX elements is one program, in registers
(stats, then y; or the backward sums, then grad_x). Larger groups stream TILE-element tiles:
forward = per-split Welford partials (n, mean, M2) of each group, then a normalize pass whose
programs combine their group's partials (Chan et al.) before writing y; backward = per-(b, c)
sums of g xhat and g (g = dL/d pre) over spatial splits, a deterministic parameter pass
(fixed-order sums over splits and the batch), and a grad_x pass:
    grad_x = rstd (A g - m1 - xhat m2),  m1 = mean(A g),  m2 = mean(A g xhat),
the means over the group, from the per-channel sums. Statistics and sums in float32, the
forward's of x minus the group's first element (exact differences near a large mean). Split
counts aim at a fixed number of programs (4 per SM of an H100), not the device's, so results do
not depend on the device.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .common import kernel_format

FUSED_MAX = 4096  # a group whose padded tile holds at most this many elements is one program
FUSED_PROGRAM = 2048  # smaller groups are packed into programs of about this many elements
TILE = 2048  # elements per tile of the streaming passes (4 warps, 16 elements a thread)
MAX_SPLIT = 64  # most partials per group (forward) or per (b, channel block) (backward)
PARAM_BLOCK = 64  # channels per program of the parameter-gradient pass
TARGET_PROGRAMS = 4 * 132  # splits fill an H100 (132 SMs) four times over


def _tile(rows: int, cols: int, limit: int) -> tuple[int, int]:
    """A [BLOCK_R, BLOCK_K] power-of-two tile of at most `limit` elements over [rows, cols]."""
    bk = min(triton.next_power_of_2(cols), limit)
    return min(triton.next_power_of_2(rows), max(1, limit // bk)), bk


def _split(programs: int, tiles: int) -> tuple[int, int]:
    """(splits, tiles per split) so that programs * splits fills the device."""
    split = max(1, min(MAX_SPLIT, tiles, triton.cdiv(TARGET_PROGRAMS, max(programs, 1))))
    per_split = triton.cdiv(tiles, split)
    return triton.cdiv(tiles, per_split), per_split


def _warps(elements: int) -> int:
    return max(1, min(8, elements // 512))


def _tiling(rows: int, cols: int) -> dict:
    """TILE-element tiles over [rows, cols]: BLOCK_R, BLOCK_K, tiles_k (along cols), tiles,
    num_warps."""
    br, bk = _tile(rows, cols, TILE)
    tiles_k = triton.cdiv(cols, bk)
    return dict(BLOCK_R=br, BLOCK_K=bk, tiles_k=tiles_k, tiles=triton.cdiv(rows, br) * tiles_k,
                num_warps=_warps(br * bk))


# ---------------------------------------------------------------------------------------------
# Device helpers


@triton.jit
def _group_tile(t, base, rows, cols, row_stride, tiles_k, BLOCK_R: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """(offsets, mask, r, k) of tile t of a group's [rows, cols] view at element offset base."""
    r = (t // tiles_k) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = (t % tiles_k) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs = base + r.to(tl.int64)[:, None] * row_stride + k[None, :]
    return offs, (r < rows)[:, None] & (k < cols)[None, :], r, k


@triton.jit
def _channel_coefs(w_ptr, bias_ptr, scale_ptr, shift_ptr, c, bc, cmask, HAS_W: tl.constexpr,
                   HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr):
    """(A, B) of channels c (bc = b C + c their rows of scale and shift): pre = xhat A + B."""
    a = tl.full(c.shape, 1.0, tl.float32)
    bb = tl.zeros(c.shape, tl.float32)
    if HAS_W:
        a = tl.load(w_ptr + c, mask=cmask, other=1.0).to(tl.float32)
    if HAS_B:
        bb = tl.load(bias_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        s1 = 1.0 + tl.load(scale_ptr + bc, mask=cmask, other=0.0).to(tl.float32)
        a *= s1
        bb *= s1
    if HAS_SHIFT:
        bb += tl.load(shift_ptr + bc, mask=cmask, other=0.0).to(tl.float32)
    return a, bb


@triton.jit
def _along(v, CHANNELS_LAST: tl.constexpr):
    """A channel vector broadcast along the channel axis of a group tile (rows or columns)."""
    if CHANNELS_LAST:
        out = v[None, :]
    else:
        out = v[:, None]
    return out


@triton.jit
def _groups_tile(pid, bgs, groups, per_sample, group_stride, rows, cols, row_stride,
                 BLOCK_G: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """(bg, base, offsets, mask, r, k) of whole groups bg = pid BLOCK_G + [0, BLOCK_G) (base: the
    offset of each one's first element) as one [BLOCK_G, BLOCK_R, BLOCK_K] tile; int32 offsets
    (the launcher keeps x under 2^31 elements)."""
    bg = pid * BLOCK_G + tl.arange(0, BLOCK_G)
    r = tl.arange(0, BLOCK_R)
    k = tl.arange(0, BLOCK_K)
    base = (bg // groups) * per_sample + (bg % groups) * group_stride
    offs = base[:, None, None] + (r * row_stride)[None, :, None] + k[None, None, :]
    mask = (bg < bgs)[:, None, None] & (r < rows)[None, :, None] & (k < cols)[None, None, :]
    return bg, base, offs, mask, r, k


@triton.jit
def _groups_coefs(w_ptr, bias_ptr, scale_ptr, shift_ptr, bg, idx, bgs, groups, cpg,
                  HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr,
                  HAS_SHIFT: tl.constexpr):
    """(A, B) [BLOCK_G, len(idx)] of channels g cpg + idx of groups bg (b C + c = bg cpg + idx)."""
    cmask = (bg < bgs)[:, None] & (idx < cpg)[None, :]
    c = (bg % groups)[:, None] * cpg + idx[None, :]
    return _channel_coefs(w_ptr, bias_ptr, scale_ptr, shift_ptr, c,
                          bg[:, None] * cpg + idx[None, :], cmask, HAS_W, HAS_B, HAS_SCALE,
                          HAS_SHIFT)


@triton.jit
def _along3(v, CHANNELS_LAST: tl.constexpr):
    """[BLOCK_G, channels] broadcast along the channel axis of a [BLOCK_G, rows, cols] tile."""
    if CHANNELS_LAST:
        out = v[:, None, :]
    else:
        out = v[:, :, None]
    return out


@triton.jit
def _sum12(v):
    return tl.sum(tl.sum(v, axis=2), axis=1)


@triton.jit
def _silu(pre):
    return pre * tl.sigmoid(pre)


@triton.jit
def _silu_grad(dy, pre):
    """dy silu'(pre) = dy sig (1 + pre (1 - sig))."""
    sig = tl.sigmoid(pre)
    return dy * sig * (1.0 + pre * (1.0 - sig))


@triton.jit
def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.'s combination of two (count, mean, M2) summaries."""
    n = n_a + n_b
    w = n_b / tl.maximum(n, 1.0)
    delta = mean_b - mean_a
    return n, mean_a + delta * w, m2_a + m2_b + delta * delta * n_a * w


# ---------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _fwd_fused_kernel(x_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, mean_ptr, rstd_ptr,
                      bgs, groups, per_sample, cpg, group_stride, rows, cols, row_stride, n, eps,
                      HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr,
                      HAS_SHIFT: tl.constexpr, SILU: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                      BLOCK_G: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """BLOCK_G whole groups in one tile: two-pass mean and variance in registers of the data
    shifted by each group's first element (exact differences: robust to a large mean), then y."""
    bg, base, offs, mask, r, k = _groups_tile(tl.program_id(0), bgs, groups, per_sample,
                                              group_stride, rows, cols, row_stride, BLOCK_G,
                                              BLOCK_R, BLOCK_K)
    pivot = tl.load(x_ptr + base, mask=bg < bgs, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - pivot[:, None, None]
    mean = tl.sum(tl.sum(tl.where(mask, x, 0.0), axis=2), axis=1) / n
    xc = tl.where(mask, x - mean[:, None, None], 0.0)
    rstd = tl.rsqrt(_sum12(xc * xc) / n + eps)
    tl.store(mean_ptr + bg, pivot + mean, mask=bg < bgs)
    tl.store(rstd_ptr + bg, rstd, mask=bg < bgs)
    a, bb = _groups_coefs(w_ptr, bias_ptr, scale_ptr, shift_ptr, bg, k if CHANNELS_LAST else r,
                          bgs, groups, cpg, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT)
    y = xc * _along3(a * rstd[:, None], CHANNELS_LAST) + _along3(bb, CHANNELS_LAST)
    if SILU:
        y = _silu(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fwd_stats_kernel(x_ptr, part_ptr, groups, per_sample, group_stride, rows, cols, row_stride,
                      tiles_k, tiles, per_split, split, BLOCK_R: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """part[bg, split] = (n, mean, M2) of tiles [split * per_split, ...) of group bg, shifted by
    the group's first element: each tile's mean and M2 in registers (two passes), folded into
    the running summary (Chan et al.)."""
    pid = tl.program_id(0)
    bg, sp = pid // split, pid % split
    b, g = bg // groups, bg % groups
    base = b.to(tl.int64) * per_sample + g.to(tl.int64) * group_stride
    pivot = tl.load(x_ptr + base).to(tl.float32)
    n = 0.0
    mean = 0.0
    m2 = 0.0
    for t in range(sp * per_split, tl.minimum(sp * per_split + per_split, tiles)):
        offs, mask, r, k = _group_tile(t, base, rows, cols, row_stride, tiles_k, BLOCK_R,
                                       BLOCK_K)
        x = tl.where(mask, tl.load(x_ptr + offs, mask=mask).to(tl.float32) - pivot, 0.0)
        n_t = tl.sum(tl.sum(mask.to(tl.float32), axis=1), axis=0)
        mean_t = tl.sum(tl.sum(x, axis=1), axis=0) / n_t
        xc = tl.where(mask, x - mean_t, 0.0)
        n, mean, m2 = _chan(n, mean, m2, n_t, mean_t, tl.sum(tl.sum(xc * xc, axis=1), axis=0))
    tl.store(part_ptr + 3 * pid, n)
    tl.store(part_ptr + 3 * pid + 1, mean)
    tl.store(part_ptr + 3 * pid + 2, m2)


@triton.jit
def _fwd_apply_kernel(x_ptr, part_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, mean_ptr,
                      rstd_ptr, groups, per_sample, cpg, group_stride, rows, cols, row_stride,
                      tiles_k, tiles, split, eps, HAS_W: tl.constexpr,
                      HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
                      SILU: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                      SPLIT_BLOCK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Tile t of group bg: its statistics from the group's partials (of the data shifted by the
    group's first element), then y."""
    pid = tl.program_id(0)
    bg, t = pid // tiles, pid % tiles
    b, g = bg // groups, bg % groups
    i = tl.arange(0, SPLIT_BLOCK)
    p = part_ptr + 3 * (bg * split + i)
    n_i = tl.load(p, mask=i < split, other=0.0)
    mean_i = tl.load(p + 1, mask=i < split, other=0.0)
    n = tl.sum(n_i, axis=0)
    mean = tl.sum(n_i * mean_i, axis=0) / n
    d = mean_i - mean
    m2 = tl.sum(tl.load(p + 2, mask=i < split, other=0.0) + n_i * d * d, axis=0)
    rstd = tl.rsqrt(m2 / n + eps)
    base = b.to(tl.int64) * per_sample + g.to(tl.int64) * group_stride
    pivot = tl.load(x_ptr + base).to(tl.float32)
    if t == 0:
        tl.store(mean_ptr + bg, pivot + mean)
        tl.store(rstd_ptr + bg, rstd)
    offs, mask, r, k = _group_tile(t, base, rows, cols, row_stride, tiles_k, BLOCK_R, BLOCK_K)
    idx = k if CHANNELS_LAST else r
    a, bb = _channel_coefs(w_ptr, bias_ptr, scale_ptr, shift_ptr, g * cpg + idx,
                           bg * cpg + idx, idx < cpg, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = (x - pivot - mean) * _along(a * rstd, CHANNELS_LAST) + _along(bb, CHANNELS_LAST)
    if SILU:
        y = _silu(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _group_view(channels: int, spatial: int, groups: int, channels_last: bool) -> dict:
    """The [rows, cols] view of one group (module docstring) and its kernel arguments."""
    cpg = channels // groups
    if channels_last:
        return dict(cpg=cpg, group_stride=cpg, rows=spatial, cols=cpg, row_stride=channels)
    return dict(cpg=cpg, group_stride=cpg * spatial, rows=cpg, cols=spatial, row_stride=spatial)


def _check(x: torch.Tensor, num_groups: int) -> tuple[int, int, int]:
    """(B, C, S) of x [B, C, *spatial], C divisible by num_groups."""
    torch._check(x.dim() >= 2, lambda: f"group_norm needs x [B, C, *spatial], got {x.shape}")
    torch._check(num_groups > 0 and x.shape[1] % num_groups == 0,
                 lambda: f"group_norm: {x.shape[1]} channels in {num_groups} groups")
    return x.shape[0], x.shape[1], x[0, 0].numel() if x.shape[0] * x.shape[1] else 0


def _fused_config(x: torch.Tensor, bgs: int, rows: int, cols: int) -> dict | None:
    """Launch of the one-pass kernels when a group's padded tile fits FUSED_MAX elements (and x
    int32 offsets): BLOCK_G groups a program (FUSED_PROGRAM elements), 8 elements a thread."""
    br, bk = _tile(rows, cols, FUSED_MAX)
    if br < rows or bk < cols or x.numel() >= 2**31:
        return None
    block_g = min(triton.next_power_of_2(bgs), max(1, FUSED_PROGRAM // (br * bk)))
    return dict(grid=(triton.cdiv(bgs, block_g),), BLOCK_G=block_g, BLOCK_R=br, BLOCK_K=bk,
                num_warps=max(1, min(16, block_g * br * bk // 256)))


def _flags(weight, bias, scale, shift, silu, channels_last) -> dict:
    return dict(HAS_W=weight is not None, HAS_B=bias is not None, HAS_SCALE=scale is not None,
                HAS_SHIFT=shift is not None, SILU=silu, CHANNELS_LAST=channels_last)


def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


@triton_op("pydiffuse_triton::group_norm", mutates_args=())
def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
               bias: torch.Tensor | None, scale: torch.Tensor | None,
               shift: torch.Tensor | None, eps: float,
               silu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, channels, spatial = _check(x, num_groups)
    fmt = kernel_format(x)
    x = x.contiguous(memory_format=fmt)
    weight, bias, scale, shift = _contiguous(weight, bias, scale, shift)
    y = torch.empty_like(x, memory_format=fmt)
    mean = x.new_empty((batch, num_groups), dtype=torch.float32)
    rstd = torch.empty_like(mean)
    if x.numel() == 0:
        return y, mean.fill_(float("nan")), rstd.fill_(float("nan"))
    bgs, cl = batch * num_groups, fmt != torch.contiguous_format
    view = _group_view(channels, spatial, num_groups, cl)
    params = (weight, bias, scale, shift)
    flags = _flags(*params, silu, cl)
    per_sample, rows, cols = channels * spatial, view["rows"], view["cols"]
    n = float(rows * cols)  # elements of a group
    fused = _fused_config(x, bgs, rows, cols)
    if fused:
        wrap_triton(_fwd_fused_kernel)[fused.pop("grid")](
            x, *params, y, mean, rstd, bgs, num_groups, per_sample, **view, n=n, eps=eps,
            **flags, **fused)
        return y, mean, rstd
    # Statistics: C-order groups are contiguous, read as one flat row.
    stat_view = dict(rows=rows, cols=cols, row_stride=view["row_stride"]) if cl else dict(
        rows=1, cols=rows * cols, row_stride=0)
    stat_tiles = _tiling(stat_view["rows"], stat_view["cols"])
    split, per_split = _split(bgs, stat_tiles["tiles"])
    part = x.new_empty((bgs, split, 3), dtype=torch.float32)
    wrap_triton(_fwd_stats_kernel)[(bgs * split,)](
        x, part, num_groups, per_sample, view["group_stride"], **stat_view, **stat_tiles,
        per_split=per_split, split=split)
    tiles = _tiling(rows, cols)
    wrap_triton(_fwd_apply_kernel)[(bgs * tiles["tiles"],)](
        x, part, *params, y, mean, rstd, num_groups, per_sample, **view, **tiles, split=split,
        eps=eps, **flags, SPLIT_BLOCK=triton.next_power_of_2(split))
    return y, mean, rstd


# ---------------------------------------------------------------------------------------------
# Backward


@triton.jit
def _grad_pre(dy, xhat, a, bb, SILU: tl.constexpr):
    """g = dL/d pre from dy = dL/dy (SiLU's derivative recomputed from pre = xhat A + B)."""
    g = dy
    if SILU:
        g = _silu_grad(dy, xhat * a + bb)
    return g




@triton.jit
def _bwd_fused_kernel(dy_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr,
                      ds_ptr, db_ptr, dx_ptr, bgs, groups, per_sample, cpg, group_stride, rows,
                      cols, row_stride, n, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                      HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
                      CHANNELS_LAST: tl.constexpr, BLOCK_G: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """BLOCK_G whole groups in one tile: the per-channel sums ds = sum g xhat, db = sum g (into
    [B, C]), then grad_x."""
    bg, _, offs, mask, r, k = _groups_tile(tl.program_id(0), bgs, groups, per_sample,
                                           group_stride, rows, cols, row_stride, BLOCK_G, BLOCK_R,
                                           BLOCK_K)
    mean = tl.load(mean_ptr + bg, mask=bg < bgs, other=0.0)[:, None, None]
    rstd = tl.load(rstd_ptr + bg, mask=bg < bgs, other=0.0)[:, None, None]
    idx = k if CHANNELS_LAST else r
    a, bb = _groups_coefs(w_ptr, bias_ptr, scale_ptr, shift_ptr, bg, idx, bgs, groups, cpg,
                          HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT)
    xhat = (tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a3 = _along3(a, CHANNELS_LAST)
    gy = tl.where(mask, _grad_pre(dy, xhat, a3, _along3(bb, CHANNELS_LAST), SILU), 0.0)
    if CHANNELS_LAST:
        ds = tl.sum(gy * xhat, axis=1)
        db = tl.sum(gy, axis=1)
    else:
        ds = tl.sum(gy * xhat, axis=2)
        db = tl.sum(gy, axis=2)
    bc = bg[:, None] * cpg + idx[None, :]
    cmask = (bg < bgs)[:, None] & (idx < cpg)[None, :]
    tl.store(ds_ptr + bc, ds, mask=cmask)
    tl.store(db_ptr + bc, db, mask=cmask)
    m1 = (tl.sum(a * db, axis=1) / n)[:, None, None]
    m2 = (tl.sum(a * ds, axis=1) / n)[:, None, None]
    dx = (gy * a3 - m1 - xhat * m2) * rstd
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_reduce_kernel(dy_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, bias_ptr, scale_ptr,
                       shift_ptr, ds_ptr, db_ptr, groups, channels, spatial, cpg, c_blocks,
                       s_tiles, per_split, split, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                       HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, SILU: tl.constexpr,
                       CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr,
                       BLOCK_S: tl.constexpr):
    """ds[b, split, c] = sum g xhat, db[b, split, c] = sum g over the spatial tiles
    [split * per_split, ...) of a block of BLOCK_C channels of sample b ([BLOCK_C, BLOCK_S])."""
    pid = tl.program_id(0)
    b, rest = pid // (c_blocks * split), pid % (c_blocks * split)
    cb, sp = rest // split, rest % split
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < channels
    stat = b * groups + c // cpg
    mean = tl.load(mean_ptr + stat, mask=cmask, other=0.0)[:, None]
    rstd = tl.load(rstd_ptr + stat, mask=cmask, other=0.0)[:, None]
    a, bb = _channel_coefs(w_ptr, bias_ptr, scale_ptr, shift_ptr, c, b * channels + c, cmask,
                           HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT)
    a, bb = a[:, None], bb[:, None]
    base = b.to(tl.int64) * channels * spatial
    acc_ds = tl.zeros((BLOCK_C, BLOCK_S), tl.float32)
    acc_db = tl.zeros((BLOCK_C, BLOCK_S), tl.float32)
    for t in range(sp * per_split, tl.minimum(sp * per_split + per_split, s_tiles)):
        s = t * BLOCK_S + tl.arange(0, BLOCK_S)
        if CHANNELS_LAST:
            offs = base + s.to(tl.int64)[None, :] * channels + c[:, None]
        else:
            offs = base + c.to(tl.int64)[:, None] * spatial + s[None, :]
        mask = cmask[:, None] & (s < spatial)[None, :]
        xhat = (tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gy = tl.where(mask, _grad_pre(dy, xhat, a, bb, SILU), 0.0)
        acc_ds += gy * xhat
        acc_db += gy
    out = (b.to(tl.int64) * split + sp) * channels + c
    tl.store(ds_ptr + out, tl.sum(acc_ds, axis=1), mask=cmask)
    tl.store(db_ptr + out, tl.sum(acc_db, axis=1), mask=cmask)


@triton.jit
def _bwd_params_kernel(ds_ptr, db_ptr, w_ptr, bias_ptr, scale_ptr, gw_ptr, gbias_ptr,
                       gscale_ptr, gshift_ptr, batch, channels, split, HAS_W: tl.constexpr,
                       HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
                       SPLIT_BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per channel, in a fixed order: ds, db of (b, c) summed over the splits (kept in split 0
    for the grad_x pass); grad_scale = w ds + bias db, grad_shift = db;
    grad_weight = sum_b (1 + scale) ds, grad_bias = sum_b (1 + scale) db."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < channels
    i = tl.arange(0, SPLIT_BLOCK)[:, None]
    pmask = (i < split) & cmask[None, :]
    w = tl.full((BLOCK_C,), 1.0, tl.float32)
    bias = tl.zeros((BLOCK_C,), tl.float32)
    if HAS_W:
        w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    if HAS_B:
        bias = tl.load(bias_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    gw = tl.zeros((BLOCK_C,), tl.float32)
    gbias = tl.zeros((BLOCK_C,), tl.float32)
    for b in range(batch):
        row = b * channels  # [B, split, C] float32 sums: far below 2^31 elements
        p = row * split + i * channels + c[None, :]
        ds = tl.sum(tl.load(ds_ptr + p, mask=pmask, other=0.0), axis=0)
        db = tl.sum(tl.load(db_ptr + p, mask=pmask, other=0.0), axis=0)
        if split > 1:
            tl.store(ds_ptr + row * split + c, ds, mask=cmask)
            tl.store(db_ptr + row * split + c, db, mask=cmask)
        if HAS_SHIFT:
            tl.store(gshift_ptr + row + c, db.to(gshift_ptr.dtype.element_ty), mask=cmask)
        if HAS_SCALE:
            tl.store(gscale_ptr + row + c, (w * ds + bias * db).to(gscale_ptr.dtype.element_ty),
                     mask=cmask)
            s1 = 1.0 + tl.load(scale_ptr + row + c, mask=cmask, other=0.0).to(tl.float32)
            ds *= s1
            db *= s1
        gw += ds
        gbias += db
    if HAS_W:
        tl.store(gw_ptr + c, gw.to(gw_ptr.dtype.element_ty), mask=cmask)
    if HAS_B:
        tl.store(gbias_ptr + c, gbias.to(gbias_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _bwd_dx_kernel(dy_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr,
                   ds_ptr, db_ptr, dx_ptr, groups, channels, per_sample, cpg, group_stride,
                   rows, cols, row_stride, n, tiles_k, tiles, split, HAS_W: tl.constexpr,
                   HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
                   SILU: tl.constexpr, CHANNELS_LAST: tl.constexpr, CPG_BLOCK: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """grad_x of tile t of group bg; m1, m2 from the group's per-channel sums (split 0)."""
    pid = tl.program_id(0)
    bg, t = pid // tiles, pid % tiles
    b, g = bg // groups, bg % groups
    mean = tl.load(mean_ptr + bg)
    rstd = tl.load(rstd_ptr + bg)
    j = tl.arange(0, CPG_BLOCK)
    cj = g * cpg + j
    a_j, _ = _channel_coefs(w_ptr, bias_ptr, scale_ptr, shift_ptr, cj, bg * cpg + j, j < cpg,
                            HAS_W, False, HAS_SCALE, False)
    sums = b.to(tl.int64) * channels * split + cj
    inv_n = 1.0 / n
    m1 = tl.sum(a_j * tl.load(db_ptr + sums, mask=j < cpg, other=0.0), axis=0) * inv_n
    m2 = tl.sum(a_j * tl.load(ds_ptr + sums, mask=j < cpg, other=0.0), axis=0) * inv_n
    base = b.to(tl.int64) * per_sample + g.to(tl.int64) * group_stride
    offs, mask, r, k = _group_tile(t, base, rows, cols, row_stride, tiles_k, BLOCK_R, BLOCK_K)
    idx = k if CHANNELS_LAST else r
    a, bb = _channel_coefs(w_ptr, bias_ptr, scale_ptr, shift_ptr, g * cpg + idx,
                           bg * cpg + idx, idx < cpg, HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT)
    a, bb = _along(a, CHANNELS_LAST), _along(bb, CHANNELS_LAST)
    xhat = (tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dx = (_grad_pre(dy, xhat, a, bb, SILU) * a - m1 - xhat * m2) * rstd
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _grad_of(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The gradient buffer of a parameter: like it, or empty when it is absent."""
    return x.new_empty(0) if t is None else torch.empty_like(t)


def _reduce_tile(channels: int, spatial: int, channels_last: bool) -> tuple[int, int]:
    """[BLOCK_C, BLOCK_S] of the backward reduction: the contiguous axis first, TILE elements."""
    if channels_last:
        bc = min(triton.next_power_of_2(channels), 64)
        return bc, min(triton.next_power_of_2(spatial), max(1, TILE // bc))
    bs = min(triton.next_power_of_2(spatial), TILE)
    return min(triton.next_power_of_2(channels), max(1, TILE // bs)), bs


@triton_op("pydiffuse_triton::group_norm_backward", mutates_args=())
def group_norm_backward(
        grad_y: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
        num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
        scale: torch.Tensor | None, shift: torch.Tensor | None, silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, channels, spatial = _check(x, num_groups)
    fmt = kernel_format(x)
    x = x.contiguous(memory_format=fmt)
    dy = grad_y.contiguous(memory_format=fmt)
    mean, rstd, weight, bias, scale, shift = _contiguous(mean, rstd, weight, bias, scale, shift)
    dx = torch.empty_like(x, memory_format=fmt)
    grads = [_grad_of(t, x) for t in (weight, bias, scale, shift)]
    if x.numel() == 0:
        for grad in grads:
            grad.zero_()
        return dx, *grads
    bgs, cl = batch * num_groups, fmt != torch.contiguous_format
    view = _group_view(channels, spatial, num_groups, cl)
    params = (weight, bias, scale, shift)
    flags = _flags(*params, silu, cl)
    per_sample, rows, cols = channels * spatial, view["rows"], view["cols"]
    n = float(rows * cols)  # elements of a group
    fused = _fused_config(x, bgs, rows, cols)
    if fused:
        split = 1
        sums = x.new_empty((2, batch, split, channels), dtype=torch.float32)
        wrap_triton(_bwd_fused_kernel)[fused.pop("grid")](
            dy, x, mean, rstd, *params, sums[0], sums[1], dx, bgs, num_groups, per_sample,
            **view, n=n, **flags, **fused)
    else:
        bc, bs = _reduce_tile(channels, spatial, cl)
        c_blocks, s_tiles = triton.cdiv(channels, bc), triton.cdiv(spatial, bs)
        split, per_split = _split(batch * c_blocks, s_tiles)
        sums = x.new_empty((2, batch, split, channels), dtype=torch.float32)
        wrap_triton(_bwd_reduce_kernel)[(batch * c_blocks * split,)](
            dy, x, mean, rstd, *params, sums[0], sums[1], num_groups, channels, spatial,
            view["cpg"], c_blocks, s_tiles, per_split, split, **flags, BLOCK_C=bc, BLOCK_S=bs,
            num_warps=_warps(bc * bs))
    wrap_triton(_bwd_params_kernel)[(triton.cdiv(channels, PARAM_BLOCK),)](
        sums[0], sums[1], weight, bias, scale, *grads, batch, channels, split,
        HAS_W=weight is not None, HAS_B=bias is not None, HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None, SPLIT_BLOCK=triton.next_power_of_2(split),
        BLOCK_C=PARAM_BLOCK, num_warps=4)
    if not fused:
        tiles = _tiling(rows, cols)
        wrap_triton(_bwd_dx_kernel)[(bgs * tiles["tiles"],)](
            dy, x, mean, rstd, *params, sums[0], sums[1], dx, num_groups, channels, per_sample,
            **view, n=n, **tiles, split=split, **flags,
            CPG_BLOCK=triton.next_power_of_2(view["cpg"]))
    return dx, *grads
