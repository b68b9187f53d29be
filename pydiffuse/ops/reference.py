"""Pure-torch reference of every fused op: the truth for tests, the ``reference`` backend and the
benchmark baseline. Written for clarity, not speed; arithmetic in float32 (``upcast=float64``
available for error measurements).

All functions take the *packed* arguments the compiled backends take (see ``_packing.py``):
``coefs`` is a float32 tensor [NUM_STEP_COEFS, B], ``seeds`` an int64 tensor [1] or [B].
"""

import math

import torch

from ._packing import (
    COEF_INDEX,
    LANGEVIN_SNR,
    LANGEVIN_STEP_SIZE,
)

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_UNIFORM_SCALE = 4.6566127342e-10  # 2**-31, as Triton's uint_to_uniform_float
_MIN_UNIFORM = 1e-7


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product a*b, in int64 without overflow."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    t = a * b_lo
    u = a * b_hi + (t >> 16)
    lo = ((u & 0xFFFF) << 16) | (t & 0xFFFF)
    return u >> 16, lo


def philox4x32(key: torch.Tensor, c0, c1, c2, c3, rounds: int = 10):
    """Philox4x32-10 (Salmon et al. 2011) on int64 tensors holding uint32 words.

    key: int64 seed (low word k0, high word k1); c0..c3: the counter. Returns the 4 output words.
    """
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & _MASK32 for c in (c0, c1, c2, c3))
    for _ in range(rounds):
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_W0) & _MASK32, (k1 + _PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def _uint_to_uniform(w: torch.Tensor) -> torch.Tensor:
    """uint32 word -> float32 in [0, 1]: reinterpret as int32, fold the sign, scale by 2^-31."""
    w = torch.where(w >= 2**31, w - 2**32, w)
    w = torch.where(w < 0, -w - 1, w)
    return w.to(torch.float32) * _UNIFORM_SCALE


def noise(seeds: torch.Tensor, shape, step: int) -> torch.Tensor:
    """The noise stream N(seed, step, b, j) in float32, C-order over ``shape`` = [B, ...].

    One Philox4x32-10 call gives four normals: words (w0, w1, w2, w3) of key = seed and
    counter = (j // 4, b, step, 0); Box-Muller on the pair (w0, w1) for j % 4 in {0, 1} and on
    (w2, w3) for j % 4 in {2, 3}: r = sqrt(-2 log max(u_a, 1e-7)), theta = 2 pi u_b,
    z = r cos(theta) for even j, r sin(theta) for odd j (as curand_normal4 / tl.randn4x).
    Per-sample seeds ([B]): key = seeds[b] and counter b = 0, so a sample's noise follows its
    own seed wherever it sits in a batch.
    """
    batch = shape[0]
    per_sample = math.prod(shape[1:])
    device = seeds.device
    j = torch.arange(per_sample, device=device, dtype=torch.int64).expand(batch, per_sample)
    b = torch.arange(batch, device=device, dtype=torch.int64)[:, None].expand(batch, per_sample)
    seeds = seeds.to(torch.int64)
    if seeds.numel() == 1:
        key, counter_b = seeds.reshape(1, 1).expand(batch, per_sample), b
    else:
        key, counter_b = seeds.reshape(batch, 1).expand(batch, per_sample), torch.zeros_like(b)
    w0, w1, w2, w3 = philox4x32(key, j >> 2, counter_b, step & _MASK32, 0)
    second_pair = ((j >> 1) & 1).bool()
    u_a = _uint_to_uniform(torch.where(second_pair, w2, w0)).clamp_min(_MIN_UNIFORM)
    u_b = _uint_to_uniform(torch.where(second_pair, w3, w1))
    radius = torch.sqrt(-2.0 * torch.log(u_a))
    theta = 6.283185307179586 * u_b
    z = torch.where((j & 1).bool(), radius * torch.sin(theta), radius * torch.cos(theta))
    return z.reshape(shape)


def randn(seeds: torch.Tensor, shape, step: int, dtype: torch.dtype) -> torch.Tensor:
    """``noise`` cast to ``dtype``."""
    return noise(seeds, list(shape), step).to(dtype)


def _per_sample(row: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] coefficient row -> broadcastable [B, 1, ...]."""
    return row.reshape(-1, *([1] * (ndim - 1)))


def _resolve_noise(x, noise_tensor, seeds, step, dtype):
    if noise_tensor is not None:
        return noise_tensor.to(dtype)
    if seeds is not None:
        return noise(seeds, list(x.shape), step).to(dtype)
    return torch.zeros((), dtype=dtype, device=x.device)


def sample_step(x, out, out_uncond, coefs, noise_tensor, seeds, step, has_clip, learned_var,
                return_x0, upcast=torch.float32):
    """The step equation of every sampler (DESIGN.md, op 1):

    o = out_uncond + g (out - out_uncond);  x0 = cx x + co o;  x0 = clamp(x0, -clip, clip);
    eps = ex x + e0 x0;  next = m0 x0 + me eps + mx x + s z,
    with, for learned_var, s = coefs.s * exp(0.5 (f log_hi + (1 - f) log_lo)), f = (v + 1)/2.
    Returns (next, x0) in x's dtype; x0 is an empty tensor unless ``return_x0``. Arithmetic in
    ``upcast`` (float64 for float64 x).
    """
    upcast = torch.promote_types(x.dtype, upcast)
    c = {name: _per_sample(coefs[i].to(upcast), x.ndim) for name, i in COEF_INDEX.items()}
    xf = x.to(upcast)
    o, u, v = out, out_uncond, None
    if learned_var:
        channels = x.shape[1]
        o, v = out[:, :channels], out[:, channels:]
        u = None if u is None else u[:, :channels]
    o = o.to(upcast)
    if u is not None:
        u = u.to(upcast)
        o = u + c["guidance"] * (o - u)
    x0 = c["cx"] * xf + c["co"] * o
    if has_clip:
        x0 = torch.minimum(torch.maximum(x0, -c["clip"]), c["clip"])
    eps = c["ex"] * xf + c["e0"] * x0
    s = c["s"]
    if learned_var:
        frac = (v.to(upcast) + 1) / 2
        s = s * torch.exp(0.5 * (frac * c["log_hi"] + (1 - frac) * c["log_lo"]))
    z = _resolve_noise(x, noise_tensor, seeds, step, upcast)
    nxt = c["m0"] * x0 + c["me"] * eps + c["mx"] * xf + s * z
    x0_out = x0.to(x.dtype) if return_x0 else x.new_empty(0)
    return nxt.to(x.dtype), x0_out


def lincomb(tensors, coefs, upcast=torch.float32):
    """sum_i coefs[i] * tensors[i], coefs [n, B] per sample; result in tensors[0]'s dtype,
    arithmetic in ``upcast`` (float64 for float64 tensors)."""
    first = tensors[0]
    upcast = torch.promote_types(first.dtype, upcast)
    acc = torch.zeros(first.shape, dtype=upcast, device=first.device)
    for i, t in enumerate(tensors):
        acc = acc + _per_sample(coefs[i].to(upcast), first.ndim) * t.to(upcast)
    return acc.to(first.dtype)


def langevin_step(x, score, coefs, adaptive, per_sample_norm, noise_tensor, seeds, step,
                  return_mean, upcast=torch.float32):
    """One Langevin step: mean = x + e * score; next = mean + sqrt(2 e) z.

    e = step_size, or when ``adaptive`` (score-SDE corrector, Song et al. 2021, Alg. 4-5)
    e = 2 * step_size * (snr * |z| / |score|)^2 with |.| the L2 norm over each sample,
    averaged over the batch unless ``per_sample_norm``. Returns (next, mean or empty); arithmetic
    in ``upcast`` (float64 for float64 x).
    """
    upcast = torch.promote_types(x.dtype, upcast)
    step_size = coefs[LANGEVIN_STEP_SIZE].to(upcast)
    xf, sf = x.to(upcast), score.to(upcast)
    z = _resolve_noise(x, noise_tensor, seeds, step, upcast)
    if adaptive and x.shape[0] > 0:
        batch = x.shape[0]
        z_full = z.expand(x.shape)
        score_norm = sf.reshape(batch, -1).norm(dim=1)
        noise_norm = z_full.reshape(batch, -1).norm(dim=1)
        if not per_sample_norm:
            score_norm = score_norm.mean().expand(batch)
            noise_norm = noise_norm.mean().expand(batch)
        snr = coefs[LANGEVIN_SNR].to(upcast)
        step_size = 2 * step_size * (snr * noise_norm / score_norm) ** 2
    e = _per_sample(step_size, x.ndim)
    mean = xf + e * sf
    nxt = mean + torch.sqrt(2 * e) * z
    mean_out = mean.to(x.dtype) if return_mean else x.new_empty(0)
    return nxt.to(x.dtype), mean_out


def _attention_probs(q, k, scale, upcast):
    """(probabilities softmax(q kᵀ scale) [B, H, Nq, Nk], lse [B, H, Nq]) in ``upcast`` (or
    float64 for float64 inputs)."""
    dtype = torch.promote_types(q.dtype, upcast)
    scores = torch.matmul(q.to(dtype), k.to(dtype).transpose(-1, -2)) * scale
    lse = torch.logsumexp(scores, dim=-1)
    return torch.exp(scores - lse.unsqueeze(-1)), lse


def attention(q, k, v, scale, upcast=torch.float32):
    """out = softmax(q kᵀ · scale) v for q [B, H, Nq, D], k, v [B, H, Nk, D] (Vaswani et al.
    2017). Returns (out in q's dtype, lse [B, H, Nq] float32: the natural-log log-sum-exp of the
    scaled scores of each query)."""
    probs, lse = _attention_probs(q, k, scale, upcast)
    out = torch.matmul(probs, v.to(probs.dtype))
    return out.to(q.dtype), lse.to(torch.float32)


def attention_backward(grad_out, q, k, v, out, lse, scale, upcast=torch.float32):
    """(dq, dk, dv) of ``attention``, from P = softmax(q kᵀ scale) recomputed in full:
    dv = Pᵀ dO;  dP = dO vᵀ;  dS = P ∘ (dP − rowsum(dO ∘ O));  dq = dS k · scale;
    dk = dSᵀ q · scale. ``out`` and ``lse`` are recomputed here, not read."""
    probs, _ = _attention_probs(q, k, scale, upcast)
    dtype = probs.dtype
    g, vf = grad_out.to(dtype), v.to(dtype)
    o = torch.matmul(probs, vf)
    dv = torch.matmul(probs.transpose(-1, -2), g)
    dp = torch.matmul(g, vf.transpose(-1, -2))
    ds = probs * (dp - (g * o).sum(dim=-1, keepdim=True))
    dq = torch.matmul(ds, k.to(dtype)) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q.to(dtype)) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _grouped(t, num_groups):
    """[B, C, *spatial] -> [B, G, C / G * spatial]."""
    return t.reshape(t.shape[0], num_groups, math.prod(t.shape[1:]) // num_groups)


def _group_norm_parts(x, num_groups, weight, bias, scale, mean, rstd, dtype):
    """(xhat, u = xhat * weight + bias, 1 + scale) in ``dtype``, broadcastable to x's shape."""
    batch, channels = x.shape[:2]
    grouped = _grouped(x.to(dtype), num_groups)
    xhat = ((grouped - mean.to(dtype)[..., None]) * rstd.to(dtype)[..., None]).reshape(x.shape)
    per_channel = [1, channels] + [1] * (x.ndim - 2)
    per_sample = [batch, channels] + [1] * (x.ndim - 2)
    u = xhat if weight is None else xhat * weight.to(dtype).reshape(per_channel)
    u = u if bias is None else u + bias.to(dtype).reshape(per_channel)
    gain = 1 if scale is None else 1 + scale.to(dtype).reshape(per_sample)
    return xhat, u, gain


def group_norm(x, num_groups, weight, bias, scale, shift, eps, silu, upcast=torch.float32):
    """y = act((GN(x) * weight + bias) * (1 + scale) + shift) (DESIGN.md, op 4): GN over each
    group of C / G channels and every spatial position of a sample, biased variance (Wu & He
    2018); scale, shift [B, C] (AdaGN, Dhariwal & Nichol 2021); act = SiLU when ``silu``.
    Returns (y in x's dtype, mean [B, G] float32, rstd = 1 / sqrt(var + eps) [B, G] float32);
    arithmetic in ``upcast`` (float64 for float64 x)."""
    dtype = torch.promote_types(x.dtype, upcast)
    grouped = _grouped(x.to(dtype), num_groups)
    mean = grouped.mean(dim=2)
    rstd = torch.rsqrt(grouped.var(dim=2, correction=0) + eps)
    _, u, gain = _group_norm_parts(x, num_groups, weight, bias, scale, mean, rstd, dtype)
    z = u * gain
    if shift is not None:
        z = z + shift.to(dtype).reshape(list(shift.shape) + [1] * (x.ndim - 2))
    y = torch.nn.functional.silu(z) if silu else z
    return y.to(x.dtype), mean.to(torch.float32), rstd.to(torch.float32)


def group_norm_backward(grad_y, x, mean, rstd, num_groups, weight, bias, scale, shift, silu,
                        upcast=torch.float32):
    """The gradients of ``group_norm`` from its saved mean and rstd, by the chain rule
    (z = u (1 + scale) + shift, u = xhat weight + bias, g = dL/dz = grad_y act'(z)):

    grad_shift = sum_s g;  grad_scale = sum_s g u;  grad_bias = sum_{b,s} g (1 + scale);
    grad_weight = sum_{b,s} g (1 + scale) xhat;  with gx = g (1 + scale) weight,
    grad_x = rstd (gx - mean_group(gx) - xhat mean_group(gx xhat)).

    Returns (grad_x, grad_weight [C], grad_bias [C], grad_scale [B, C], grad_shift [B, C]), each in
    its input's dtype; the gradient of an absent parameter is an empty tensor."""
    dtype = torch.promote_types(x.dtype, upcast)
    channels = x.shape[1]
    xhat, u, gain = _group_norm_parts(x, num_groups, weight, bias, scale, mean, rstd, dtype)
    g = grad_y.to(dtype)
    if silu:
        z = u * gain
        if shift is not None:
            z = z + shift.to(dtype).reshape(list(shift.shape) + [1] * (x.ndim - 2))
        sig = torch.sigmoid(z)
        g = g * sig * (1 + z * (1 - sig))
    spatial = tuple(range(2, x.ndim))
    gu = g * gain

    def reduced(t, dims, like):
        if like is None:
            return x.new_empty(0)
        return (t.sum(dim=dims) if dims else t).to(like.dtype)

    grad_shift = reduced(g, spatial, shift)
    grad_scale = reduced(g * u, spatial, scale)
    grad_bias = reduced(gu, (0,) + spatial, bias)
    grad_weight = reduced(gu * xhat, (0,) + spatial, weight)
    gx = gu if weight is None else gu * weight.to(dtype).reshape([1, channels] + [1] * len(spatial))
    gx, xg = _grouped(gx, num_groups), _grouped(xhat, num_groups)
    grad_x = rstd.to(dtype)[..., None] * (gx - gx.mean(dim=2, keepdim=True)
                                          - xg * (gx * xg).mean(dim=2, keepdim=True))
    return (grad_x.reshape(x.shape).to(x.dtype), grad_weight, grad_bias, grad_scale, grad_shift)
