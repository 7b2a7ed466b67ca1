"""The SAM refiner: Match-model probabilities in, refined pseudo-labels out.

One call handles a whole batch: prompts for every (image, class) come from the Match prediction at
once, the images are encoded once each (or read from the embedding cache), and all prompts go through
the mask decoder together. The fused result is a multi-class pseudo-label and a confidence map in the
slices' own frame (no augmentation), which is what keeps cached embeddings valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .config import RunConfig
from .fusion import fuse
from .prompts import Prompts, prompts_from_labels, prompts_from_probs
from .sam.base import SamBackend
from .sam.cache import EmbeddingCache


@dataclass
class Refined:
    """A refined pseudo-label batch, all in the slices' own S x S frame."""

    labels: torch.Tensor        # (B,S,S) long
    confidence: torch.Tensor    # (B,S,S) float in [0,1]
    prompts: Prompts
    mask_logits: torch.Tensor   # (P,S,S), with grad when SAM is training
    iou: torch.Tensor           # (P,)


class Refiner:
    """Turns Match predictions into SAM-refined pseudo-labels, and fine-tunes SAM."""

    def __init__(self, sam: SamBackend, config: RunConfig, device: torch.device,
                 cache: EmbeddingCache | None = None) -> None:
        self.sam = sam
        self.config = config
        self.device = device
        self.cache = cache if cache is not None else EmbeddingCache(budget_mb=config.cache_budget_mb)

    @property
    def trains_encoder(self) -> bool:
        return self.config.sam_mode == "full"

    def embeddings(self, keys: Sequence[int], images: torch.Tensor) -> torch.Tensor:
        """Image embeddings for a batch: from the cache in 'decoder' mode, a live forward in 'full' mode.

        ``images`` are the canonical (un-augmented) slices (B,1,S,S) whose cache keys are ``keys``.
        """
        if self.trains_encoder:
            return self.sam.encode(images)
        lookup = {k: i for i, k in enumerate(keys)}
        # On a CPU, batching the encoder buys no speed but multiplies its ~0.6 GB of activations per slice.
        batch = 16 if self.device.type == "cuda" else 2
        return self.cache.embed(list(keys), lambda ks: images[[lookup[k] for k in ks]], self.sam, self.device,
                                batch_size=batch)

    def decode(self, emb: torch.Tensor, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
        if len(prompts) == 0:
            s = self.config.size
            return emb.new_zeros((0, s, s)), emb.new_zeros((0,))
        return self.sam.decode(emb, prompts.image_index, prompts.boxes, prompts.points, prompts.point_labels,
                               frame_size=self.config.size)

    def prompts_for(self, probs: torch.Tensor) -> Prompts:
        c = self.config
        return prompts_from_probs(probs, conf_thresh=c.prompt_thresh, bbox_shift=c.bbox_shift,
                                  components=c.components, points=c.points, negative_points=c.negative_points)

    def refine(self, probs: torch.Tensor, keys: Sequence[int], images: torch.Tensor,
               prompts: Prompts | None = None, emb: torch.Tensor | None = None) -> Refined:
        """Refine Match probabilities ``probs`` (B,C,S,S) of the canonical slices ``images``.

        Gradients flow into SAM's logits when SAM is in training mode and grad is enabled, so the joint
        step can reuse this decode for SAM's unlabeled loss instead of decoding twice.
        """
        if prompts is None:
            prompts = self.prompts_for(probs)
        prompts = prompts.to(self.device)
        if emb is None:
            emb = self.embeddings(keys, images)
        logits, iou = self.decode(emb, prompts)
        labels, conf = fuse(logits.detach().float(), prompts, self.config.num_classes,
                            iou_pred=iou.detach().float() if self.config.iou_confidence else None,
                            match_probs=probs.detach().float(),
                            nested=self.config.nested_fusion)
        return Refined(labels, conf, prompts, logits, iou)

    def supervised_loss(self, keys: Sequence[int], images: torch.Tensor, labels: torch.Tensor,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """SAM fine-tuning on labeled slices: ground-truth boxes (jittered), BCE + Dice per prompt."""
        # the same prompt kinds SAM will get at refinement time (box + points), with jittered boxes
        c = self.config
        prompts = prompts_from_labels(labels, c.num_classes, bbox_shift=c.bbox_shift, points=c.points,
                                      negative_points=c.negative_points, jitter=True,
                                      generator=generator).to(self.device)
        if len(prompts) == 0:
            return images.new_zeros(())
        emb = self.embeddings(keys, images)
        logits, _ = self.decode(emb, prompts)
        target = (labels[prompts.image_index] == prompts.class_index[:, None, None]).float()
        return mask_loss(logits, target)

    def unlabeled_loss(self, refined: Refined, match_labels: torch.Tensor) -> torch.Tensor:
        """SAM toward the Match model's prediction on unlabeled slices (the paper weighs this 0.25)."""
        p = refined.prompts
        if len(p) == 0:
            return refined.mask_logits.new_zeros(())
        target = (match_labels[p.image_index] == p.class_index[:, None, None]).float()
        return mask_loss(refined.mask_logits, target)


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits plus soft Dice, averaged over prompts (MedSAM's training loss)."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).flatten(1).sum(1)
    denom = prob.flatten(1).sum(1) + target.flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (denom + 1)
    return bce + dice.mean()

