"""The Match model: a small 2D UNet trained the UniMatch way.

Shape follows the UNet that UniMatch/SSL4MIS use on ACDC (written here from the paper's description):
five encoder stages of two 3x3 conv-BN-LeakyReLU layers with dropout between them, 2x2 max-pool down,
2x2 transposed-conv up, skip connections by concatenation, a 3x3 output conv. With the default
channels 16/32/64/128/256 and 1 input / 4 output channels it has 1.81 M parameters.

UniMatch feature perturbation (``need_fp=True``): the encoder runs once; every encoder feature map is
concatenated along the batch with a ``Dropout2d(p=0.5)`` copy of itself and the decoder decodes both
halves in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError

__all__ = ["MaskDropout", "UNet", "count_parameters"]

#: Feature-perturbation dropout probability (UniMatch: ``nn.Dropout2d(0.5)``).
FP_DROPOUT = 0.5
_SLOPE = 0.01  # LeakyReLU negative slope (PyTorch default, as in the reference UNet)


class MaskDropout(nn.Dropout):
    """``nn.Dropout`` whose mask, on a CPU, comes from 16 random bits an element instead of ``bernoulli_``.

    PyTorch's CPU dropout draws one Mersenne-Twister number per element: it took a tenth of the Match model's
    training step on this project's CPU (docs/benchmarks.md, "Dropout masks from random bits"). Here one
    64-bit draw gives four elements 16 bits each, kept where the bits reach ``p`` x 2^16: the same keep
    probability to 1/65536, the same 1/(1 - p) scale, from the same seeded generator, at a third of the time.
    Other devices, evaluation and ``p = 0`` take ``F.dropout`` (a GPU's is one fused kernel).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or not _dense(x):
            return F.dropout(x, self.p, self.training, self.inplace)
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        keep = words.view(torch.int16)[:n] >= round(self.p * 65536) - 32768
        # A mask in the input's dtype (bool times bf16 takes a slow mixed-type loop, forward and backward;
        # bool to bf16 by way of uint8 is a plain conversion) and in its memory order (channels-last here).
        mask = keep.view(torch.uint8).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * mask.as_strided(x.shape, x.stride())


def _dense(x: Tensor) -> bool:
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


class ConvBlock(nn.Sequential):
    """conv3x3-BN-LeakyReLU, dropout, conv3x3-BN-LeakyReLU.

    The LeakyReLUs work in place: BatchNorm's backward needs only its input, so its output need not be
    kept beside the activation's (a fifth of the graph's saved bytes; the same numbers to the bit).
    """

    def __init__(self, in_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(_SLOPE, inplace=True),
            MaskDropout(dropout),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(_SLOPE, inplace=True),
        )


class UpBlock(nn.Module):
    """Transposed-conv x2 up, concatenate the skip, then a ConvBlock (no dropout in the decoder)."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, skip_ch, kernel_size=2, stride=2)
        self.conv = ConvBlock(2 * skip_ch, out_ch, 0.0)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """UniMatch-style UNet returning logits ``(B, num_classes, H, W)``; H and W must be multiples of 16."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
    ) -> None:
        super().__init__()
        channels, dropout = tuple(int(c) for c in channels), tuple(float(p) for p in dropout)
        if len(channels) != 5 or len(dropout) != 5:
            raise ConfigError(
                f"The UNet needs exactly 5 channel widths and 5 dropout rates (got {len(channels)} and "
                f"{len(dropout)}); pass e.g. channels=(16, 32, 64, 128, 256)."
            )
        if in_channels < 1 or num_classes < 2 or min(channels) < 1:
            raise ConfigError(
                "The UNet needs at least 1 input channel, 2 classes and positive channel widths; "
                "check the model settings."
            )
        if not all(0.0 <= p < 1.0 for p in dropout):
            raise ConfigError(f"Dropout rates must lie in [0, 1), got {dropout}.")
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.channels, self.dropout = channels, dropout

        self.enc = nn.ModuleList([ConvBlock(in_channels, channels[0], dropout[0])])
        for i in range(1, 5):
            self.enc.append(ConvBlock(channels[i - 1], channels[i], dropout[i]))
        self.dec = nn.ModuleList(UpBlock(channels[i], channels[i - 1], channels[i - 1]) for i in range(4, 0, -1))
        self.head = nn.Conv2d(channels[0], num_classes, 3, padding=1)

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder features, finest first (5 maps at strides 1, 2, 4, 8, 16)."""
        feats = [self.enc[0](x)]
        for block in self.enc[1:]:
            feats.append(block(F.max_pool2d(feats[-1], 2)))
        return feats

    def decode(self, feats: Sequence[Tensor]) -> Tensor:
        """Decode encoder features (finest first) to logits."""
        x = feats[-1]
        for block, skip in zip(self.dec, reversed(feats[:-1])):
            x = block(x, skip)
        return self.head(x)

    def forward(self, x: Tensor, need_fp: bool = False, fp_start: int = 0) -> Tensor | tuple[Tensor, Tensor]:
        """Logits for ``x`` (B, in_channels, H, W); with ``need_fp`` also the feature-perturbed logits.

        ``need_fp=True`` returns ``(logits, logits_fp)``. The perturbation is always applied when asked
        for (as UniMatch's freshly built ``nn.Dropout2d`` is), whatever ``self.training`` says.
        ``fp_start`` perturbs only samples ``x[fp_start:]`` (``logits_fp`` then has ``B - fp_start``
        rows): UniMatch decodes a perturbed copy of the labeled half too and throws it away; skipping it
        saves decoder work. Note that in train mode the decoder's BatchNorm statistics are then taken
        over ``B + (B - fp_start)`` samples instead of ``2B``.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise DataError(
                f"The UNet expects images shaped (batch, {self.in_channels}, H, W), got {tuple(x.shape)}; "
                "add the channel axis or check the number of input channels."
            )
        h, w = x.shape[-2:]
        if h % 16 or w % 16:
            raise DataError(
                f"Image size {h}x{w} is not a multiple of 16, which the UNet's 4 poolings need; "
                "resize or pad the slices (e.g. to 256x256)."
            )
        feats = self.encode(x)
        if not need_fp:
            return self.decode(feats)
        if not 0 <= fp_start < x.shape[0]:
            raise ConfigError(f"fp_start must be in [0, {x.shape[0]}) for a batch of {x.shape[0]}, got {fp_start}.")
        both = [torch.cat([f, F.dropout2d(f[fp_start:], FP_DROPOUT, training=True)]) for f in feats]
        out = self.decode(both)
        return out[: x.shape[0]], out[x.shape[0] :]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
