"""``FusedAttnProcessor``: diffusers' ``AttnProcessor2_0`` with its group norm on
``pydiffuse.ops.group_norm`` and its attention on ``pydiffuse.ops.attention``, set through
diffusers' own ``Attention.set_processor``."""

from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from ...ops import attention, group_norm, unsupported_reason


def head_dim(attn: Attention) -> int:
    return attn.inner_dim // attn.heads


def attention_unfusable(attn: Attention) -> str:
    """Why ``FusedAttnProcessor`` cannot stand in for ``attn``'s processor, or ''."""
    if type(attn.processor) is not AttnProcessor2_0:
        return f"its processor is {type(attn.processor).__name__}, not AttnProcessor2_0"
    if attn.group_norm is not None and type(attn.group_norm) is not nn.GroupNorm:
        return f"its group norm is a {type(attn.group_norm).__name__}"
    if attn.spatial_norm is not None:
        return "a spatial norm"
    if attn.inner_kv_dim != attn.inner_dim or attn.inner_dim % attn.heads:
        return f"{attn.inner_kv_dim} key channels for {attn.inner_dim} query channels " \
               f"in {attn.heads} heads"
    return ""


class FusedAttnProcessor:
    """Self- or cross-attention of a diffusers ``Attention`` as ``AttnProcessor2_0`` computes it:

        h = GN(x) (if attn.group_norm); c = ctx (or h; norm_cross if set)
        q, k, v = to_q(h), to_k(c), to_v(c), split into heads (norm_q, norm_k if set)
        out = to_out(softmax(q kᵀ / sqrt(D)) v) (+ x with residual_connection) / rescale

    with the norm and the attention fused. An attention mask, a deprecated positional argument,
    or an input the chosen backend cannot run (its head dim on a GPU, float64) goes to the
    ``original`` processor, which computes the same thing unfused.
    """

    def __init__(self, original: AttnProcessor2_0):
        self.original = original

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs):
        if (attention_mask is not None or args or kwargs
                or unsupported_reason(hidden_states.device, hidden_states.dtype,
                                      head_dim=head_dim(attn))):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                 *args, **kwargs)
        residual = x = hidden_states
        if attn.group_norm is not None:  # over [B, C, H, W], or [B, C, N] of x [B, N, C]
            norm = attn.group_norm
            x = group_norm(x if x.ndim == 4 else x.transpose(1, 2), norm.num_groups, norm.weight,
                           norm.bias, norm.eps)
            if residual.ndim == 3:
                x = x.transpose(1, 2)
        if x.ndim == 4:  # [B, C, H, W] -> [B, HW, C]: a view when x is channels_last
            x = x.flatten(2).transpose(1, 2)
        context = x if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
        q, k, v = (t.unflatten(-1, (attn.heads, head_dim(attn))).transpose(1, 2)
                   for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = attention(q, k, v).transpose(1, 2).flatten(2)
        out = attn.to_out[1](attn.to_out[0](out))
        if residual.ndim == 4:
            out = out.transpose(1, 2).reshape(residual.shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
