"""The interface every SAM backend implements, and the batched prompt decoder they share.

A backend owns three modules named as in Segment Anything checkpoints (``image_encoder``,
``prompt_encoder``, ``mask_decoder``), so ``state_dict()`` keys match the original files and a
backend can be saved and loaded back with the same loader.

Frames: the caller works in its *training frame*, a square of side S (usually 256). ``encode``
resizes images into the backend's own input frame (256 for LiteMedSAM, 1024 for SAM ViT), and
``decode`` scales prompts from the training frame into the input frame and returns logits
upsampled back to the training frame.
"""

from __future__ import annotations

import abc
import hashlib
import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import atomic_write_bytes, check_state_fits, load_weights_only
from ..device import conv_memory_format, select_device, tune_cpu_allocator
from ..errors import CheckpointError, ConfigError, DataError, StorageError
from .two_way import two_way
from .upscaling import PatchUpsample, upscale_masks

MODES = ("decoder", "full")


def token_major(x: Tensor) -> Tensor:
    """``x`` (B, C, h, w) stored channels-last, so that the two-way transformer's ``flatten(2).permute(0, 2, 1)``
    is a contiguous (B, h*w, C) view. From NCHW that view is transposed, and every positional-encoding add,
    autocast cast and projection of the image tokens after it walked memory across the grain (on a CPU
    the joint step took 1.05-1.08x as long; docs/benchmarks.md, "The image tokens' layout")."""
    return x.contiguous(memory_format=torch.channels_last)


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known fine-tuning mode, else raise ConfigError."""
    if mode not in MODES:
        raise ConfigError(f"Unknown SAM fine-tuning mode {mode!r}. Use one of {', '.join(MODES)}.")
    return mode


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """'auto' / 'cpu' / 'cuda[:i]' / 'mps' or a torch.device -> a usable device (ConfigError if not)."""
    dev = select_device(str(device))
    if dev.type == "cpu":
        tune_cpu_allocator()
    return dev


class SamBackend(nn.Module, abc.ABC):
    """A promptable segmenter: ``encode`` images once, ``decode`` many prompts against the embeddings.

    Subclasses set ``name``, ``input_size`` and ``embed_shape`` and implement ``_normalise``.
    """

    name: str = "sam"
    input_size: int = 1024
    embed_shape: tuple[int, int, int] = (256, 64, 64)
    #: how ``_normalise`` maps [0, 1] pixels (part of the encoder fingerprint)
    normalization: str = "unit"

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.finetune_mode = "full"  # nothing frozen until freeze_for() says otherwise
        self._encoder_format = torch.contiguous_format  # the encoder's weights' layout (see encode)
        for m in mask_decoder.modules():
            if type(m) is nn.ConvTranspose2d and PatchUpsample.fits(m):
                m.__class__ = PatchUpsample  # same parameters and state_dict keys, 3-8x faster on a CPU

    # ------------------------------------------------------------------ encoder
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @abc.abstractmethod
    def _normalise(self, x: Tensor) -> Tensor:
        """Map (B, 3, input_size, input_size) pixels in [0, 1] to what the image encoder expects."""

    def encode(self, images: Tensor) -> Tensor:
        """Encode (B, 1|3, S, S) images in [0, 1] (training frame) to (B, *embed_shape) embeddings."""
        if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[2] != images.shape[3]:
            raise DataError(
                f"SAM encode needs square images shaped (B, 1 or 3, S, S); got {tuple(images.shape)}. "
                "Resize or pad slices to a square training frame first."
            )
        x = images.to(device=self.device, dtype=torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = x.shape[-1]
        if size != self.input_size:
            # antialias only matters when shrinking; it avoids aliasing of fine structures.
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=size > self.input_size)
        fmt = conv_memory_format(x.device)
        if self._encoder_format != fmt:  # once, and again after a move to another kind of device
            self.image_encoder.to(memory_format=fmt)
            self._encoder_format = fmt
        return self.image_encoder(self._normalise(x).contiguous(memory_format=fmt))

    # ------------------------------------------------------------------ decoder
    def decode_lowres(
        self,
        embeddings: Tensor,
        image_index: Tensor,
        boxes: Tensor | None = None,
        points: Tensor | None = None,
        point_labels: Tensor | None = None,
        frame_size: int = 256,
    ) -> tuple[Tensor, Tensor]:
        """Decode P prompts over B images in one pass; return low-res logits (P, 1, 4h, 4w) and IoU (P,).

        Unlike the stock ``MaskDecoder.predict_masks`` (which repeats *all* images for every prompt),
        each prompt here picks its own image embedding with ``embeddings[image_index]``.
        """
        n = int(image_index.shape[0])
        if boxes is None and points is None:
            raise DataError("SAM decode needs boxes, points or both; got neither.")
        if boxes is not None and tuple(boxes.shape) != (n, 4):
            raise DataError(f"Boxes must be shaped (P, 4) with P={n}; got {tuple(boxes.shape)}.")
        if points is not None and (points.ndim != 3 or points.shape[0] != n or points.shape[2] != 2):
            raise DataError(f"Points must be shaped (P, K, 2) with P={n}; got {tuple(points.shape)}.")
        dev = embeddings.device
        h, w = embeddings.shape[-2:]
        if n == 0:
            empty = embeddings.new_zeros((0, 1, 4 * h, 4 * w))
            return empty, embeddings.new_zeros((0,))
        scale = self.input_size / float(frame_size)
        pts = None
        if points is not None:
            if point_labels is None:
                point_labels = torch.ones(points.shape[:2], dtype=torch.long, device=dev)
            if tuple(point_labels.shape) != tuple(points.shape[:2]):
                raise DataError(f"Point labels must be shaped (P, K)={tuple(points.shape[:2])}; "
                                f"got {tuple(point_labels.shape)}.")
            pts = (points.to(dev, torch.float32) * scale, point_labels.to(dev))
        bx = boxes.to(dev, torch.float32) * scale if boxes is not None else None
        sparse, dense = self.prompt_encoder(points=pts, boxes=bx, masks=None)

        md = self.mask_decoder
        # the images some prompt uses, each once (no mask prompts: the dense embedding is one vector)
        used, index = torch.unique(image_index.to(dev), return_inverse=True)
        images = token_major(embeddings[used] + dense[:1])
        pos = token_major(self.prompt_encoder.get_dense_pe())  # (1, C, h, w): broadcasts over prompts
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(n, -1, -1), sparse.to(out_tokens.dtype)], dim=1)
        hs, src = two_way(md.transformer, images, pos, tokens, index)
        # single-mask output = mask token 0; skip the three multimask heads entirely
        hyper = md.output_hypernetworks_mlps[0](hs[:, 1, :])  # (P, C/8)
        masks = upscale_masks(md.output_upscaling, src, hyper, h, w)
        iou = md.iou_prediction_head(hs[:, 0, :])[:, 0]
        return masks, iou

    def decode(
        self,
        embeddings: Tensor,
        image_index: Tensor,
        boxes: Tensor | None = None,
        points: Tensor | None = None,
        point_labels: Tensor | None = None,
        frame_size: int = 256,
        out_size: tuple[int, int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Decode prompts given in the S x S training frame; return logits (P, S, S) and IoU (P,).

        ``image_index[p]`` says which embedding prompt p belongs to; ``boxes`` are xyxy pixels,
        ``points`` xy pixels with labels 1 (foreground), 0 (background) or -1 (padding). ``out_size``
        (H, W): logits at that size instead (the slices' own, for the answer), straight from SAM's mask.
        """
        size = tuple(out_size) if out_size is not None else (frame_size, frame_size)
        low, iou = self.decode_lowres(embeddings, image_index, boxes, points, point_labels, frame_size)
        if low.shape[0] == 0:
            return low.new_zeros((0, *size)), iou
        logits = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
        return logits[:, 0], iou

    # ------------------------------------------------------------------ fine-tuning
    def trainable_parameters(self, mode: str) -> list[nn.Parameter]:
        """Parameters that train in ``mode``: 'decoder' (prompt encoder + mask decoder) or 'full'."""
        if check_mode(mode) == "full":
            return list(self.parameters())
        return [*self.prompt_encoder.parameters(), *self.mask_decoder.parameters()]

    def freeze_for(self, mode: str) -> SamBackend:
        """Set ``requires_grad`` for ``mode``; in 'decoder' mode the encoder also stays in eval mode."""
        check_mode(mode)
        for p in self.image_encoder.parameters():
            p.requires_grad_(mode == "full")
        for p in [*self.prompt_encoder.parameters(), *self.mask_decoder.parameters()]:
            p.requires_grad_(True)
        self.finetune_mode = mode
        return self.train(self.training)  # puts a frozen encoder into eval mode

    def train(self, mode: bool = True) -> SamBackend:
        """Switch train/eval mode, touching only the modules whose mode changes.

        A frozen encoder ('decoder' mode) stays in eval mode: it must not update BatchNorm statistics
        (TinyViT has BN). Switches are skipped when nothing changes because TinyViT rebuilds its
        attention-bias buffers on every ``train()`` call: about 0.25 s on a CPU, once per SAM step and
        once per box edit before this guard.
        """
        mode = bool(mode)
        frozen = getattr(self, "finetune_mode", "full") == "decoder"
        self.training = mode
        for child in self.children():
            want = False if (frozen and child is self.image_encoder) else mode
            if any(m.training != want for m in child.modules()):
                child.train(want)
        return self

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, Any]:
        """What a loader needs besides the weights (stored next to them by ``save``)."""
        return {"backend": self.name, "input_size": int(self.input_size),
                "normalization": self.normalization, "format": 1}

    def save(self, path: str | Path) -> Path:
        """Write ``{"model": state_dict, "samatch": metadata}``; loadable with weights_only=True."""
        path = Path(path)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        buffer = io.BytesIO()
        torch.save({"model": state, "samatch": self.metadata()}, buffer)
        try:  # temp file + fsync + rename: a failure leaves no half-written file
            atomic_write_bytes(path, buffer.getvalue())
        except StorageError as exc:
            raise StorageError(f"Could not write the SAM checkpoint {path}: {exc}") from exc
        return path

    def fingerprint(self, part: str = "all") -> str:
        """A short hash of the weights: 'all', or 'encoder' (what cached embeddings depend on)."""
        if part not in ("all", "encoder"):
            raise ConfigError(f"Unknown fingerprint part {part!r}. Use 'all' or 'encoder'.")
        module = self if part == "all" else self.image_encoder
        digest = hashlib.sha256(f"{self.name}|{self.input_size}|{self.normalization}".encode())
        for key, tensor in module.state_dict().items():
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{key}|{tuple(t.shape)}|{t.dtype}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()[:16]


# ---------------------------------------------------------------------- checkpoint reading


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load a plain weights file safely (``weights_only=True``); return (state_dict, samatch metadata).

    Accepts a bare state_dict, ``{"model": ...}`` or ``{"state_dict": ...}``; strips a DataParallel
    ``module.`` prefix. Every failure is a CheckpointError with one sentence for the user.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"SAM checkpoint {path} does not exist or is not a file. Check the path.")
    obj = load_weights_only(path, f"SAM checkpoint {path}")
    meta: dict[str, Any] = {}
    if isinstance(obj, dict):
        if isinstance(obj.get("samatch"), dict):
            meta = obj["samatch"]
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"SAM checkpoint {path} holds no state_dict (a mapping of names to tensors). "
                              "Save it with torch.save(model.state_dict(), path).")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj), meta


def load_checked(model: nn.Module, state: dict[str, Tensor], path: str | Path, what: str) -> None:
    """Load ``state`` strictly into ``model``; a key or shape mismatch is a CheckpointError naming keys."""
    check_state_fits(model, state, f"SAM checkpoint {path}", what,
                     "Pick the backend/model type that matches the file.")
