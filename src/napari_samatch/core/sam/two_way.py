"""SAM's two-way transformer with the image side of its first layer computed once per image, not per prompt.

The mask decoder's transformer takes one copy of the image tokens per prompt. In its first layer those copies
are still all alike for the prompts of one slice (no mask prompt: the dense embedding is one learned vector),
so three of the layer's projections of 4096 image tokens (the token-to-image attention's keys and values,
the image-to-token attention's queries) give the same result for each of them. :func:`two_way` computes
them once per image and hands each prompt its image's rows; from the image-to-token attention's output on,
the copies differ and everything runs per prompt as before. Same arithmetic as the stock forward (equal to
float rounding); about a fifth of a decode's multiply-adds when a slice has three prompts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _heads(x: Tensor, n: int) -> Tensor:
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)


def _attend(attn: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """segment_anything's ``Attention.forward`` from already projected q, k, v."""
    n = attn.num_heads
    q, k, v = _heads(q, n), _heads(k, n), _heads(v, n)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    out = (weights @ v).transpose(1, 2)
    return attn.out_proj(out.reshape(*out.shape[:2], -1))


def shareable(transformer: nn.Module) -> bool:
    """Whether ``transformer`` is segment_anything's TwoWayTransformer, whose layout :func:`two_way` follows."""
    layers = getattr(transformer, "layers", None)
    if type(transformer).__name__ != "TwoWayTransformer" or not layers:
        return False
    first = layers[0]
    return all(hasattr(first, name) for name in ("self_attn", "cross_attn_token_to_image", "mlp",
                                                   "cross_attn_image_to_token", "norm4")) \
        and all(hasattr(transformer, name) for name in ("final_attn_token_to_image", "norm_final_attn"))


def two_way(transformer: nn.Module, images: Tensor, pos: Tensor, tokens: Tensor,
            index: Tensor) -> tuple[Tensor, Tensor]:
    """``transformer(images[index], pos, tokens)`` for prompts ``tokens`` (P, T, C) on ``images`` (B, C, h, w).

    Returns the prompt tokens (P, T, C) and the image tokens (P, h*w, C), as the stock forward does. Shares
    only when there are more prompts than images: pass only the images some prompt uses.
    """
    if not shareable(transformer) or index.numel() <= images.shape[0]:
        return transformer(images[index], pos, tokens)  # nothing to share
    keys = images.flatten(2).transpose(1, 2)  # (B, h*w, C)
    key_pe = pos.flatten(2).transpose(1, 2)
    first = transformer.layers[0]

    queries = tokens
    if first.skip_first_layer_pe:
        queries = first.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + tokens
        queries = queries + first.self_attn(q=q, k=q, v=queries)
    queries = first.norm1(queries)

    t2i = first.cross_attn_token_to_image
    keys_pe = keys + key_pe
    k_img, v_img = t2i.k_proj(keys_pe), t2i.v_proj(keys)  # once per image
    queries = first.norm2(queries + _attend(t2i, t2i.q_proj(queries + tokens), k_img[index], v_img[index]))
    queries = first.norm3(queries + first.mlp(queries))

    i2t = first.cross_attn_image_to_token
    q_img = i2t.q_proj(keys_pe)  # once per image
    q = queries + tokens
    keys = first.norm4(keys[index] + _attend(i2t, q_img[index], i2t.k_proj(q), i2t.v_proj(queries)))

    for layer in transformer.layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
    out = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
    return transformer.norm_final_attn(queries + out), keys
