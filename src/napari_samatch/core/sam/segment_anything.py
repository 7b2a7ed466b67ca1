"""Segment-Anything ViT backend (SAM ViT-B/L/H and MedSAM), built from Meta's ``segment_anything``.

With ``model_type='auto'`` the architecture is read off the checkpoint's tensor shapes, so any
ViT size works (including tiny test models). Normalisation differs by model: SAM expects 0..255
pixels standardised by ImageNet mean/std; MedSAM ViT-B expects [0, 1] pixels.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from .base import SamBackend, load_checked, read_state_dict, resolve_device

MODEL_TYPES = ("auto", "vit_b", "vit_l", "vit_h", "medsam")
_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """Everything needed to build a segment-anything model (defaults: SAM ViT-B at 1024)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_abs_pos: bool = True
    prompt_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8  # not visible in tensor shapes: SAM always uses 8
    iou_head_depth: int = 3
    iou_head_hidden: int = 256
    num_multimask: int = 3

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


PRESETS = {
    "vit_b": SamConfig(),
    "vit_l": SamConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


def _count(state: dict[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def infer_config(state: dict[str, Tensor], path: str | Path = "checkpoint") -> SamConfig:
    """Read the encoder/decoder sizes off a segment-anything state_dict (CheckpointError if not one)."""
    if "image_encoder.patch_embed.seq.0.c.weight" in state:
        raise CheckpointError(f"SAM checkpoint {path} is a LiteMedSAM model. Choose the 'litemedsam' backend.")
    needed = ["image_encoder.patch_embed.proj.weight", "image_encoder.neck.0.weight",
              "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
              "prompt_encoder.mask_downscaling.3.weight", "mask_decoder.mask_tokens.weight",
              "mask_decoder.transformer.layers.0.mlp.lin1.weight",
              "mask_decoder.iou_prediction_head.layers.0.weight", "image_encoder.blocks.0.mlp.lin1.weight"]
    absent = [k for k in needed if k not in state]
    if absent:
        raise CheckpointError(f"SAM checkpoint {path} is not a segment-anything model (no {absent[0]}). "
                              "Use a SAM/MedSAM ViT checkpoint, or the 'litemedsam' backend.")
    dim, _, patch, _ = state["image_encoder.patch_embed.proj.weight"].shape
    depth = _count(state, "image_encoder.blocks.")
    pos = state.get("image_encoder.pos_embed")
    grid = int(pos.shape[1]) if pos is not None else 1024 // int(patch)
    rel = [state.get(f"image_encoder.blocks.{i}.attn.rel_pos_h") for i in range(depth)]
    if any(r is None for r in rel):
        raise CheckpointError(f"SAM checkpoint {path} has no relative position tables, so its attention "
                              "layout cannot be inferred. Pass model_type='vit_b', 'vit_l' or 'vit_h'.")
    head_dim = int(rel[0].shape[1])
    spans = [(int(r.shape[0]) + 1) // 2 for r in rel]
    global_idx = tuple(i for i, s in enumerate(spans) if s == grid)
    windows = {s for s in spans if s != grid}
    if len(windows) > 1:
        raise CheckpointError(f"SAM checkpoint {path} mixes attention window sizes {sorted(windows)}; "
                              "this layout is not supported.")
    return SamConfig(
        embed_dim=int(dim), depth=depth, num_heads=max(1, int(dim) // head_dim),
        global_attn_indexes=global_idx, img_size=grid * int(patch), patch_size=int(patch),
        window_size=windows.pop() if windows else 0,
        mlp_ratio=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / float(dim),
        out_chans=int(state["image_encoder.neck.0.weight"].shape[0]),
        qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in state,
        use_abs_pos=pos is not None,
        prompt_dim=2 * int(state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape[1]),
        mask_in_chans=int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        decoder_depth=_count(state, "mask_decoder.transformer.layers."),
        decoder_mlp_dim=int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
        iou_head_depth=_count(state, "mask_decoder.iou_prediction_head.layers."),
        iou_head_hidden=int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
        num_multimask=int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
    )


def build_modules(cfg: SamConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Build (image_encoder, prompt_encoder, mask_decoder) through segment_anything's ``Sam``."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
            num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, out_chans=cfg.out_chans, qkv_bias=cfg.qkv_bias,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), use_abs_pos=cfg.use_abs_pos, use_rel_pos=True,
            window_size=cfg.window_size, global_attn_indexes=cfg.global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_dim, image_embedding_size=(cfg.grid, cfg.grid),
            input_image_size=(cfg.img_size, cfg.img_size), mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.num_multimask,
            transformer=TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=cfg.prompt_dim,
                                          mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_heads),
            transformer_dim=cfg.prompt_dim, iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden,
        ),
        pixel_mean=list(_PIXEL_MEAN), pixel_std=list(_PIXEL_STD),
    )
    return sam.image_encoder, sam.prompt_encoder, sam.mask_decoder


class SegmentAnything(SamBackend):
    """A segment-anything ViT model behind the SamBackend interface.

    ``normalization`` is 'sam' (0..255 standardised by pixel mean/std, Meta's SAM) or 'unit'
    ([0, 1] pixels, MedSAM).
    """

    def __init__(self, cfg: SamConfig = SamConfig(), normalization: str = "sam") -> None:
        if normalization not in ("sam", "unit"):
            raise ConfigError(f"Unknown SAM normalisation {normalization!r}. Use 'sam' or 'unit'.")
        super().__init__(*build_modules(cfg))
        self.config = cfg
        self.normalization = normalization
        self.name = "medsam" if normalization == "unit" else "sam"
        self.input_size = cfg.img_size
        self.embed_shape = (cfg.prompt_dim, cfg.grid, cfg.grid)
        self.register_buffer("pixel_mean", torch.tensor(_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def _normalise(self, x: Tensor) -> Tensor:
        if self.normalization == "unit":
            return x
        return (x * 255.0 - self.pixel_mean) / self.pixel_std

    def metadata(self) -> dict:
        meta = super().metadata()
        meta["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()}
        return meta


def load_segment_anything(
    checkpoint: str | Path | None, model_type: str = "auto", device: str | torch.device = "cpu"
) -> SegmentAnything:
    """Load a SAM ViT-B/L/H or MedSAM checkpoint (weights_only) and return it in eval mode.

    ``model_type``: 'vit_b' / 'vit_l' / 'vit_h' (fixed SAM architectures), 'medsam' (shape-inferred,
    [0, 1] pixels) or 'auto' (shape-inferred; normalisation from a file written by ``save``, else
    [0, 1] when the file name contains 'medsam', else SAM's).
    """
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"Unknown SAM model type {model_type!r}. Use one of {', '.join(MODEL_TYPES)}.")
    if checkpoint is None:
        raise CheckpointError("The 'sam' backend needs a checkpoint file (e.g. sam_vit_b_01ec64.pth or "
                              "medsam_vit_b.pth); none is bundled. Download one and give its path.")
    dev = resolve_device(device)
    path = Path(checkpoint)
    state, meta = read_state_dict(path)
    if model_type in PRESETS:
        cfg, normalization = PRESETS[model_type], "sam"
        what = f"SAM {model_type}"
    else:
        cfg = infer_config(state, path)
        if model_type == "medsam":
            normalization = "unit"
        elif meta.get("normalization") in ("sam", "unit"):
            normalization = meta["normalization"]
        else:
            normalization = "unit" if "medsam" in path.name.lower() else "sam"
        what = "inferred segment-anything"
    model = SegmentAnything(cfg, normalization)
    load_checked(model, state, path, what)
    return model.to(dev).eval()
