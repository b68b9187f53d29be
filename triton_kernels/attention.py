"""pydiffuse_triton::attention and ::attention_backward (DESIGN.md, op 5): FlashAttention-2.

    out = softmax(q k^T scale) v,   lse = logsumexp(q k^T scale)  (natural log, float32)

Forward: one program per (query block, b h) walks the key blocks with an online softmax in
float32 registers (scores prescaled by log2(e) for exp2); no N x N matrix is ever stored.
Backward (Dao, FlashAttention-2, 2023, Alg. 2), recomputing P = exp(S scale - lse):
    delta = rowsum(dO o O);  dV = P^T dO;  dS = P o (dO V^T - delta)
    dQ = scale dS K;  dK = scale dS^T Q
as three kernels: delta, then dK/dV (one program per key block, looping over queries) and dQ
(one program per query block, looping over keys); no atomics, so gradients are deterministic.

q, k, v, grad_out and out may be any [B, H, N, D] views whose last dimension is dense (a packed
qkv projection needs no copy); outputs are C-order. float32 dots run in full precision ("ieee");
float16/bfloat16 dots on tensor cores with float32 accumulation.
"""

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
HEAD_DIMS = (32, 64, 128)  # the launch configs below cover these (tests check _dispatch agrees)


@triton.jit
def _program(n, BLOCK: tl.constexpr):
    """(block, bh): this program's block of n rows and head b * heads + h. One flat grid axis
    (axis 1 stops at 65535 programs), blocks of one head adjacent so their K, V share L2."""
    blocks = tl.cdiv(n, BLOCK)
    pid = tl.program_id(0)
    return pid % blocks, pid // blocks


@triton.jit
def _head_base(ptr, bh, heads, stride_b, stride_h):
    """ptr advanced to head (b, h) of program bh = b * heads + h (int64 offsets)."""
    return ptr + (bh // heads).to(tl.int64) * stride_b + (bh % heads).to(tl.int64) * stride_h


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """tl.dot(a, b, acc). EMULATE_BF16 (Triton's interpreter on bfloat16, whose dot multiplies the
    raw bits: triton-lang/triton#11584) upcasts the operands: bf16 x bf16 products are exact in
    float32, so this matches the tensor cores up to summation order."""
    if EMULATE_BF16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _to(x, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """float32 x in ``dtype``, rounded to nearest even. EMULATE_BF16 rounds on the float32 bits
    first, as the interpreter's float32 -> bfloat16 cast truncates."""
    if EMULATE_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        x = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _attention_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
                          sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
                          heads, n_q, n_k, qk_scale,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          EVEN_N: tl.constexpr, PRECISION: tl.constexpr,
                          EMULATE_BF16: tl.constexpr):
    """Rows [pid_m BLOCK_M, +BLOCK_M) of head bh; qk_scale = scale log2(e)."""
    pid_m, bh = _program(n_q, BLOCK_M)
    q_ptr = _head_base(q_ptr, bh, heads, sqb, sqh)
    k_ptr = _head_base(k_ptr, bh, heads, skb, skh)
    v_ptr = _head_base(v_ptr, bh, heads, svb, svh)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < n_q
    q = tl.load(q_ptr + offs_m[:, None] * sqn + offs_d[None, :], mask=mask_m[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max, log2 units
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start in range(0, n_k, BLOCK_N):
        n = start + offs_n
        mask_n = n < n_k
        kt = tl.load(k_ptr + n[None, :] * skn + offs_d[:, None], mask=mask_n[None, :], other=0.0)
        s = _dot(q, kt, None, PRECISION, EMULATE_BF16) * qk_scale
        if not EVEN_N:
            s = tl.where(mask_n[None, :], s, float("-inf"))
        # The shift is 0 while a row has met only -inf scores (keys masked to -inf): no
        # -inf - -inf = NaN (FlashAttention's Check_inf); alpha = 0 on its first finite block.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - shift[:, None])
        alpha = tl.exp2(m_i - shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + n[:, None] * svn + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        acc = _dot(_to(p, v.dtype, EMULATE_BF16), v, acc * alpha[:, None], PRECISION, EMULATE_BF16)
        m_i = m_new
    acc = acc / l_i[:, None]
    row = bh.to(tl.int64) * n_q
    tl.store(lse_ptr + row + offs_m, (m_i + tl.log2(l_i)) * LN2, mask=mask_m)
    tl.store(o_ptr + (row + offs_m[:, None]) * HEAD_DIM + offs_d[None, :],
             _to(acc, o_ptr.dtype.element_ty, EMULATE_BF16), mask=mask_m[:, None])


@triton.jit
def _attention_bwd_delta_kernel(o_ptr, do_ptr, delta_ptr, sob, soh, son, sdb, sdh, sdn,
                                heads, n_q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO o O) in float32 for rows [pid_m BLOCK_M, +BLOCK_M) of head bh."""
    pid_m, bh = _program(n_q, BLOCK_M)
    o_ptr = _head_base(o_ptr, bh, heads, sob, soh)
    do_ptr = _head_base(do_ptr, bh, heads, sdb, sdh)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = offs_m[:, None] < n_q
    o = tl.load(o_ptr + offs_m[:, None] * son + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(do_ptr + offs_m[:, None] * sdn + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_ptr + bh.to(tl.int64) * n_q + offs_m, delta, mask=offs_m < n_q)


@triton.jit
def _attention_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                               sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
                               heads, n_q, n_k, scale,
                               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
                               EMULATE_BF16: tl.constexpr):
    """dK, dV of keys [pid_n BLOCK_N, +BLOCK_N) of head bh, over all query blocks."""
    pid_n, bh = _program(n_k, BLOCK_N)
    q_ptr = _head_base(q_ptr, bh, heads, sqb, sqh)
    k_ptr = _head_base(k_ptr, bh, heads, skb, skh)
    v_ptr = _head_base(v_ptr, bh, heads, svb, svh)
    do_ptr = _head_base(do_ptr, bh, heads, sdb, sdh)
    row = bh.to(tl.int64) * n_q
    lse_ptr += row
    delta_ptr += row
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_n = offs_n[:, None] < n_k
    k = tl.load(k_ptr + offs_n[:, None] * skn + offs_d[None, :], mask=mask_n, other=0.0)
    v = tl.load(v_ptr + offs_n[:, None] * svn + offs_d[None, :], mask=mask_n, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    qk_scale = scale * LOG2E
    for start in range(0, n_q, BLOCK_M):
        m = start + offs_m
        mask_m = m < n_q
        qt = tl.load(q_ptr + m[None, :] * sqn + offs_d[:, None], mask=mask_m[None, :], other=0.0)
        lse2 = tl.load(lse_ptr + m, mask=mask_m, other=0.0) * LOG2E
        pt = tl.exp2(_dot(k, qt, None, PRECISION, EMULATE_BF16) * qk_scale - lse2[None, :])
        # P^T's padding columns are 0 (a key of -inf meets a padding query of 0 in a NaN).
        pt = tl.where(mask_m[None, :], pt, 0.0)
        do = tl.load(do_ptr + m[:, None] * sdn + offs_d[None, :], mask=mask_m[:, None], other=0.0)
        dv = _dot(_to(pt, do.dtype, EMULATE_BF16), do, dv, PRECISION, EMULATE_BF16)
        delta = tl.load(delta_ptr + m, mask=mask_m, other=0.0)
        dpt = _dot(v, tl.trans(do), None, PRECISION, EMULATE_BF16)
        dst = pt * (dpt - delta[None, :])
        dk = _dot(_to(dst, qt.dtype, EMULATE_BF16), tl.trans(qt), dk, PRECISION, EMULATE_BF16)
    out = (bh.to(tl.int64) * n_k + offs_n[:, None]) * HEAD_DIM + offs_d[None, :]
    tl.store(dk_ptr + out, _to(dk * scale, dk_ptr.dtype.element_ty, EMULATE_BF16), mask=mask_n)
    tl.store(dv_ptr + out, _to(dv, dv_ptr.dtype.element_ty, EMULATE_BF16), mask=mask_n)


@triton.jit
def _attention_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                             sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
                             heads, n_q, n_k, scale,
                             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             EVEN_N: tl.constexpr, PRECISION: tl.constexpr,
                             EMULATE_BF16: tl.constexpr):
    """dQ of queries [pid_m BLOCK_M, +BLOCK_M) of head bh, over all key blocks."""
    pid_m, bh = _program(n_q, BLOCK_M)
    q_ptr = _head_base(q_ptr, bh, heads, sqb, sqh)
    k_ptr = _head_base(k_ptr, bh, heads, skb, skh)
    v_ptr = _head_base(v_ptr, bh, heads, svb, svh)
    do_ptr = _head_base(do_ptr, bh, heads, sdb, sdh)
    row = bh.to(tl.int64) * n_q
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < n_q
    q = tl.load(q_ptr + offs_m[:, None] * sqn + offs_d[None, :], mask=mask_m[:, None], other=0.0)
    do = tl.load(do_ptr + offs_m[:, None] * sdn + offs_d[None, :], mask=mask_m[:, None], other=0.0)
    lse2 = tl.load(lse_ptr + row + offs_m, mask=mask_m, other=float("inf")) * LOG2E
    delta = tl.load(delta_ptr + row + offs_m, mask=mask_m, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = scale * LOG2E
    for start in range(0, n_k, BLOCK_N):
        n = start + offs_n
        mask_n = n < n_k
        kt = tl.load(k_ptr + n[None, :] * skn + offs_d[:, None], mask=mask_n[None, :], other=0.0)
        vt = tl.load(v_ptr + n[None, :] * svn + offs_d[:, None], mask=mask_n[None, :], other=0.0)
        p = tl.exp2(_dot(q, kt, None, PRECISION, EMULATE_BF16) * qk_scale - lse2[:, None])
        if not EVEN_N:
            p = tl.where(mask_n[None, :], p, 0.0)
        dp = _dot(do, vt, None, PRECISION, EMULATE_BF16)
        ds = p * (dp - delta[:, None])
        dq = _dot(_to(ds, kt.dtype, EMULATE_BF16), tl.trans(kt), dq, PRECISION, EMULATE_BF16)
    tl.store(dq_ptr + (row + offs_m[:, None]) * HEAD_DIM + offs_d[None, :],
             _to(dq * scale, dq_ptr.dtype.element_ty, EMULATE_BF16), mask=mask_m[:, None])


def _dense_last(t: torch.Tensor) -> torch.Tensor:
    """t, or a copy whose last dimension is dense (the kernels take any other strides)."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _dot_args(dtype: torch.dtype) -> dict:
    """float32 dots in full precision ("ieee", not TF32); 16-bit ones on tensor cores (the
    precision flag is unused). bfloat16 is emulated under the interpreter (see _dot, _to)."""
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return {"PRECISION": "ieee" if dtype == torch.float32 else "tf32",
            "EMULATE_BF16": interpreted and dtype == torch.bfloat16}


def _block(n: int, cap: int) -> int:
    """A block of at most ``cap`` rows, no wider than n needs (and >= 16, tl.dot's minimum)."""
    return min(cap, max(16, triton.next_power_of_2(n)))


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4,
                 lambda: "pydiffuse: attention takes q, k, v of shape [B, H, N, D]")
    torch._check(q.shape[-1] in HEAD_DIMS,
                 lambda: f"pydiffuse: attention supports head dims {HEAD_DIMS}, got {q.shape[-1]}")
    torch._check(k.shape == v.shape and q.shape[:2] == k.shape[:2] and q.shape[3] == k.shape[3],
                 lambda: f"pydiffuse: attention shapes q {list(q.shape)}, k {list(k.shape)}, "
                         f"v {list(v.shape)} do not match ([B, H, Nq, D], [B, H, Nk, D] twice)")
    torch._check(q.dtype == k.dtype == v.dtype and q.dtype in (torch.float32, torch.float16,
                                                               torch.bfloat16),
                 lambda: "pydiffuse: attention takes q, k, v of one dtype: float32, float16 or "
                         f"bfloat16, got {q.dtype}, {k.dtype}, {v.dtype}")


# (rows per program, rows per step, num_warps, num_stages) by (float32?, D), for an H100: the
# largest tiles that compile for sm_90 without register spills (shared memory <= 131 KB).
# Forward: queries x keys; dK/dV: keys x queries; dQ: queries x keys. float32 dots run on the
# FMA units ("ieee"), whose register-hungry layouts want smaller tiles and 8 warps.
_FORWARD = {(False, 32): (128, 64, 4, 4), (False, 64): (128, 64, 4, 3),
            (False, 128): (128, 64, 8, 3), (True, 32): (64, 32, 8, 2),
            (True, 64): (64, 32, 8, 2), (True, 128): (64, 32, 8, 2)}
_DKDV = {(False, 32): (128, 32, 4, 3), (False, 64): (128, 32, 8, 3),
         (False, 128): (128, 32, 8, 3), (True, 32): (64, 32, 8, 2),
         (True, 64): (64, 16, 8, 2), (True, 128): (64, 16, 8, 2)}
_DQ = {(False, 32): (128, 32, 4, 3), (False, 64): (128, 32, 4, 3),
       (False, 128): (128, 32, 8, 3), (True, 32): (64, 32, 8, 2),
       (True, 64): (64, 32, 8, 2), (True, 128): (64, 32, 8, 2)}


def _config(table: dict, dtype: torch.dtype, head_dim: int, n_outer: int, n_inner: int,
            outer: str, inner: str) -> dict:
    """Launch config from ``table``: blocks shrunk to what n needs (>= 16, tl.dot's minimum)."""
    rows, step, warps, stages = table[(dtype == torch.float32, head_dim)]
    return {outer: _block(n_outer, rows), inner: _block(n_inner, step), "num_warps": warps,
            "num_stages": stages}


def _forward_config(dtype: torch.dtype, head_dim: int, n_q: int, n_k: int) -> dict:
    cfg = _config(_FORWARD, dtype, head_dim, n_q, n_k, "BLOCK_M", "BLOCK_N")
    return {**cfg, "EVEN_N": n_k % cfg["BLOCK_N"] == 0}


def _backward_config(dtype: torch.dtype, head_dim: int, n_q: int, n_k: int) -> tuple[dict, dict]:
    """(dK/dV, dQ) launch configs."""
    dkdv = _config(_DKDV, dtype, head_dim, n_k, n_q, "BLOCK_N", "BLOCK_M")
    dq = _config(_DQ, dtype, head_dim, n_q, n_k, "BLOCK_M", "BLOCK_N")
    return dkdv, {**dq, "EVEN_N": n_k % dq["BLOCK_N"] == 0}


@triton_op("pydiffuse_triton::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check(q, k, v)
    q, k, v = (_dense_last(t) for t in (q, k, v))
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    out = q.new_empty(q.shape)
    lse = q.new_empty((batch, heads, n_q), dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    torch._check(n_k > 0, lambda: "pydiffuse: attention needs at least one key (Nk = 0)")
    cfg = _forward_config(q.dtype, head_dim, n_q, n_k)
    grid = (triton.cdiv(n_q, cfg["BLOCK_M"]) * batch * heads,)
    wrap_triton(_attention_fwd_kernel)[grid](
        q, k, v, out, lse, *_strides(q), *_strides(k), *_strides(v), heads, n_q, n_k,
        scale * LOG2E.value, HEAD_DIM=head_dim, **_dot_args(q.dtype), **cfg)
    return out, lse


@triton_op("pydiffuse_triton::attention_backward", mutates_args=())
def attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       out: torch.Tensor, lse: torch.Tensor,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(q, k, v)
    torch._check(grad_out.shape == q.shape and out.shape == q.shape,
                 lambda: "pydiffuse: attention_backward's grad_out and out must have q's shape")
    grad_out, q, k, v, out = (_dense_last(t) for t in (grad_out, q, k, v, out))
    grad_out = grad_out.to(q.dtype)
    lse = lse.float().contiguous()
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    bh = batch * heads
    delta = torch.empty_like(lse)
    block = _block(n_q, 64)
    wrap_triton(_attention_bwd_delta_kernel)[(triton.cdiv(n_q, block) * bh,)](
        out, grad_out, delta, *_strides(out), *_strides(grad_out), heads, n_q,
        HEAD_DIM=head_dim, BLOCK_M=block, num_warps=4)
    args = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), heads, n_q, n_k, scale)
    dot_args = _dot_args(q.dtype)
    dkdv_cfg, dq_cfg = _backward_config(q.dtype, head_dim, n_q, n_k)
    wrap_triton(_attention_bwd_dkdv_kernel)[(triton.cdiv(n_k, dkdv_cfg["BLOCK_N"]) * bh,)](
        q, k, v, grad_out, lse, delta, dk, dv, *args, HEAD_DIM=head_dim, **dot_args, **dkdv_cfg)
    wrap_triton(_attention_bwd_dq_kernel)[(triton.cdiv(n_q, dq_cfg["BLOCK_M"]) * bh,)](
        q, k, v, grad_out, lse, delta, dq, *args, HEAD_DIM=head_dim, **dot_args, **dq_cfg)
    return dq, dk, dv
