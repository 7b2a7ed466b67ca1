"""The SAM refiner: Match-model probabilities in, refined pseudo-labels out.

One call handles a whole batch: prompts for every (image, class) come from the Match prediction at
once, the images are encoded once each (or read from the embedding cache), and all prompts go through
the mask decoder together. The fused result is a multi-class pseudo-label and a confidence map in the
slices' own frame (no augmentation), which is what keeps cached embeddings valid.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..device import autocast, to_device
from ..evaluation.metrics import dice_per_class
from ..prior.prior import prompts_on_prior
from .base import SamBackend
from .cache import EmbeddingCache
from .fusion import fuse
from .prompts import Prompts, prompts_from_labels, prompts_from_probs

# Prompts decoded together (Refiner.decode), and decoded and backpropagated together when SAM learns (Refiner.learn),
# on a CPU. At 4 + 4, 256 px, 2 threads: the joint step's time the same as with 8 and with one backward of all 24
# prompts (paired ratios 0.993 and 0.996), its peak RSS 3.10 GiB against 3.28 (decodes in 8s) and 4.40 (one
# backward); 2 prompts a backward: 2.80 GiB for 1.036x the time (docs/benchmarks.md). At most this many: a run
# ends early rather than cut a slice's prompts apart (chunks()).
DECODE_CHUNK = 4
LEARN_CHUNK = 4
# On a GPU, where the step waits on the host and memory is plentiful, runs of up to 64: each run dispatches ~1 200
# ops whatever its size, and a 4 + 4 step 5 100 instead of 14 300 (benchmarks/step_ops.py; docs/benchmarks.md).
GPU_CHUNK = 64


def chunks(image_index: torch.Tensor, size: int) -> list[tuple[int, int]]:
    """Runs of at most ``size`` prompts, cut between slices where possible: SAM's decoder computes a slice's
    image side once for all of its prompts in a run (core/sam/two_way.py), so a slice split across two runs
    pays for it twice. A slice with more than ``size`` prompts takes several runs of its own."""
    if len(image_index) <= size:  # one run, without reading the indices back from a GPU
        return [(0, len(image_index))] if len(image_index) else []
    index = image_index.tolist()
    runs, start = [], 0
    while start < len(index):
        end = min(start + size, len(index))
        if end < len(index) and index[end] == index[end - 1]:  # would cut a slice: end the run before it
            first = end - 1
            while first > start and index[first - 1] == index[end]:
                first -= 1
            end = first if first > start else end
        runs.append((start, end))
        start = end
    return runs


def ring_classes(labels: torch.Tensor, num_classes: int) -> set[int]:
    """Classes that are rings around another class on most of the labeled slices where they appear.

    A box cannot tell a ring from the disk it encloses: SAM returns the disk and only the nested fusion carves the
    ring out again, exactly when the inner class's own mask is exact. From the painted slices' exact boxes that can
    look fine (the phantom's ring: Dice 0.87), from the Match model's boxes it does not (0.75 where the Match model
    had 0.93), so a ring keeps the Match model's label."""
    from scipy.ndimage import binary_fill_holes

    lab = labels.detach().cpu().numpy()
    rings = set()
    for k in range(1, num_classes):
        present = ringed = 0
        for sl in lab:
            mask = sl == k
            if not mask.any():
                continue
            present += 1
            hole = binary_fill_holes(mask) & ~mask
            inner = hole & (sl > 0)  # enclosed pixels of another foreground class
            ringed += int(hole.any() and inner.sum() * 2 >= hole.sum())
        if present and ringed * 2 >= present:
            rings.add(k)
    return rings


@dataclass
class PriorCheck:
    """The painted slices' prior as a check on SAM's masks (``Refiner.checked``): ``labels`` (B,H,W) at the masks'
    size, ``frame_labels`` (B,S,S) in the prompts' frame (the replacement boxes come from there), ``limit`` the
    share of a mask on another structure of the prior that replaces its prompt."""

    labels: torch.Tensor
    frame_labels: torch.Tensor
    limit: float


@dataclass
class Refined:
    """A refined pseudo-label batch: prompts in the S x S training frame, the rest there too except for an answer."""

    labels: torch.Tensor        # (B,S,S) long
    confidence: torch.Tensor    # (B,S,S) float in [0,1]
    prompts: Prompts
    mask_logits: torch.Tensor   # (P,S,S)
    iou: torch.Tensor           # (P,)
    learned: torch.Tensor | None = None  # the prompts SAM learned from, when it learns from a subset
    loss: torch.Tensor | None = None     # SAM's unlabeled loss, already backpropagated (``learn_toward``)


class Refiner:
    """Turns Match predictions into SAM-refined pseudo-labels, and fine-tunes SAM."""

    def __init__(self, sam: SamBackend, config: RunConfig, device: torch.device,
                 cache: EmbeddingCache | None = None) -> None:
        self.sam = sam
        self.config = config
        self.device = device
        self.cache = cache if cache is not None else EmbeddingCache(budget_mb=config.cache_budget_mb)
        # Classes SAM may refine (None: all, until calibrate() has measured them). A class SAM cannot
        # segment from a box (ACDC's myocardium ring: the box returns the filled disk) gets no prompt,
        # and the fusion keeps the Match model's label there.
        self.trusted: set[int] | None = None
        self.box_dice: dict[int, float] = {}
        self.rings: set[int] = set()
        # The slices as SAM sees them, indexed by cache key (``sam_images[keys]`` -> (B,1,s,s)): the engine
        # resizes them from the original slices at ``config.sam_size``, so SAM's encoder gets the sharp image
        # rather than the small training frame blown up. None: encode the images a call passes.
        self.sam_images = None

    @property
    def trains_encoder(self) -> bool:
        return self.config.sam_mode == "full"

    def embeddings(self, keys: Sequence[int], images: torch.Tensor) -> torch.Tensor:
        """Image embeddings for a batch: from the cache in 'decoder' mode, a live forward in 'full' mode.

        ``images`` are the canonical (un-augmented) slices (B,1,S,S) whose cache keys are ``keys``.
        """
        if self.sam_images is not None:
            images = self.sam_images[list(keys)]
        if self.trains_encoder:
            if not torch.is_grad_enabled() and not self.sam.image_encoder.training:
                # a slice at a time, as the cache encodes (in eval mode the same embeddings), without 0.6 GB
                # of activations per slice at once: 24 slices at once peaked at 17 GB
                return torch.cat([self.sam.encode(images[i:i + 1]) for i in range(images.shape[0])])
            # the encoder's forward SAM learns from runs under bf16 autocast like its training decodes
            # (config.sam_train_amp, CPUs with fast bf16): 0.6x its forward and backward
            with autocast(self.device, self.config.amp and self.config.sam_train_amp and self.device.type == "cpu"):
                return self.sam.encode(images).float()
        lookup = {k: i for i, k in enumerate(keys)}
        # On a CPU, batching the encoder buys no speed but multiplies its ~0.6 GB of activations per slice.
        batch = 16 if self.device.type == "cuda" else 1
        with autocast(self.device, self.config.amp and self.config.sam_encode_amp):
            return self.cache.embed(list(keys), lambda ks: images[[lookup[k] for k in ks]], self.sam,
                                    self.device, batch_size=batch)

    def decode(self, emb: torch.Tensor, prompts: Prompts,
               out_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits (P,S,S), or (P,H,W) at ``out_size``, and predicted IoU (P,) of each prompt, float32.

        A decode without gradients teaches SAM nothing (pseudo-labels of a step where SAM is frozen,
        previews, box edits, the calibration), so it runs under the run's bf16 autocast (``config.amp``,
        where the device has fast bf16): 0.68x the time on this project's CPU, 31 of 524 288 mask pixels
        different, a Start 1-11 % faster at the same Dice (docs/benchmarks.md, "Speed levers"). A decode
        SAM learns from does too on a CPU (``config.sam_train_amp``): the weights and their gradients stay
        float32, and SAM fine-tuned on ACDC reached the same Dice (benchmarks/sam_finetune.py, 0.79x its time)."""
        if len(prompts) == 0:
            s = self.config.size
            return emb.new_zeros((0, *(out_size or (s, s)))), emb.new_zeros((0,))
        # Each prompt carries its own copy of the image-side activations (~30 MB at 64 x 64 x 256 per tensor):
        # a preview of every slice decoded at once took a 15-slice volume's run from 2.7 to 3.8 GB.
        # In chunks the peak stays flat; the result is the same (prompts are decoded independently).
        logits, iou = [], []
        training = torch.is_grad_enabled()
        if not training or (self.config.sam_train_amp and self.device.type == "cpu"):
            amp = autocast(self.device, self.config.amp)
        else:
            amp = contextlib.nullcontext()
        for start, end in self.runs(prompts, DECODE_CHUNK):
            part = prompts.select(torch.arange(start, end))
            with amp:
                lg, io = self.sam.decode(emb, part.image_index, part.boxes, part.points, part.point_labels,
                                         frame_size=self.config.size, out_size=out_size)
            logits.append(lg.float())
            iou.append(io.float())
        return (logits[0], iou[0]) if len(logits) == 1 else (torch.cat(logits), torch.cat(iou))

    def runs(self, prompts: Prompts, size: int) -> list[tuple[int, int]]:
        """:func:`chunks` of ``prompts``, ``size`` at most on a CPU and ``GPU_CHUNK`` on a GPU."""
        return chunks(prompts.image_index, max(size, GPU_CHUNK) if self.device.type == "cuda" else size)

    @property
    def bbox_shift(self) -> int:
        """``config.bbox_shift``, in pixels of the Match model's frame (``config.size``); presets choose it
        (docs/benchmarks.md: tighter boxes from predictions, looser ones for the myocardium from exact boxes)."""
        return self.config.bbox_shift

    def prompts_for(self, probs: torch.Tensor) -> Prompts:
        """Prompts from the Match probabilities, for the trusted classes only (see :meth:`calibrate`)."""
        c = self.config
        prompts = prompts_from_probs(probs, conf_thresh=c.prompt_thresh, bbox_shift=self.bbox_shift,
                                     components=c.components, points=c.points, negative_points=c.negative_points)
        if self.trusted is None or len(prompts) == 0:
            return prompts
        keep = torch.tensor([int(k) in self.trusted for k in prompts.class_index.tolist()], dtype=torch.bool)
        return prompts.select(keep)

    @torch.no_grad()
    def calibrate(self, keys: Sequence[int], images: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
        """Measure, per class, how well SAM segments labeled slices from their ground-truth boxes, after
        the same fusion as refinement; trust the classes whose Dice reaches ``config.sam_trust_dice``.

        The labeled slices are the only ground truth there is: a class SAM cannot get right even from an
        exact box cannot be improved by SAM from the Match model's (worse) box. Returns {class: Dice}.
        """
        c = self.config
        prompts = prompts_from_labels(labels, c.num_classes, bbox_shift=self.bbox_shift, points=c.points,
                                      negative_points=c.negative_points, jitter=False).to(self.device)
        if len(prompts) == 0:
            return {}
        logits, _ = self.decode(self.embeddings(keys, images), prompts)
        fused, _ = fuse(logits.float(), prompts, c.num_classes, nested=c.nested_fusion)
        labels = labels.to(fused.device)
        dice = dice_per_class(fused, labels, c.num_classes, ignore=None)
        self.box_dice = {int(k): float(dice[k]) for k in sorted(set(prompts.class_index.tolist()))}
        # a class never seen on the labeled slices stays trusted: there is nothing to judge it by
        self.rings = ring_classes(labels, c.num_classes) if c.sam_trust_dice > 0 else set()
        self.trusted = {k for k in range(1, c.num_classes)
                        if self.box_dice.get(k, 1.0) >= c.sam_trust_dice and k not in self.rings}
        return dict(self.box_dice)

    def refine(self, probs: torch.Tensor, keys: Sequence[int], images: torch.Tensor,
               prompts: Prompts | None = None, emb: torch.Tensor | None = None,
               generator: torch.Generator | None = None, answer_probs: torch.Tensor | None = None,
               learn_toward: torch.Tensor | None = None, learn_weight: float = 1.0,
               prior_check: PriorCheck | None = None) -> Refined:
        """Refine Match probabilities ``probs`` (B,C,S,S) of the canonical slices ``images``.

        ``answer_probs`` (B,C,H,W), the same probabilities at the slices' own size (no gradients): prompts still
        come from ``probs``, but SAM's masks are upsampled to (H,W) and fused with ``answer_probs`` there, so the
        answer is not a training-frame label map blown up (a 128-px round trip alone costs ACDC's truth 0.06 Dice).

        ``learn_toward`` (B,S,S), the Match model's labels: SAM's unlabeled loss toward them, times
        ``learn_weight``, is backpropagated into SAM's gradients during this decode (:meth:`learn`), so the joint
        step decodes once for both the pseudo-labels and SAM's loss (``Refined.loss``); with
        ``config.sam_train_prompts`` only a random subset of the prompts (``Refined.learned``) is learned from.

        ``prior_check``: SAM's masks are checked against the painted slices' prior before the fusion (:meth:`checked`).
        """
        if prompts is None:
            prompts = self.prompts_for(probs)
        prompts = prompts.to(self.device)
        if emb is None:
            emb = self.embeddings(keys, images)
        size = None if answer_probs is None else tuple(answer_probs.shape[-2:])
        fused_in, loss = prompts, None  # the prompts as fuse() reads them: its frame is the masks' size
        learned = self.learning_subset(len(prompts), generator) if learn_toward is not None else None
        if size is not None:  # the answer: no gradients, masks decoded and fused at the slices' own size
            with torch.no_grad():
                logits, iou = self.decode(emb, prompts, out_size=size)
            fused_in, probs = replace(prompts, frame_size=size), answer_probs
        elif learn_toward is None:
            with torch.no_grad():
                logits, iou = self.decode(emb, prompts)
        else:
            keep = torch.arange(len(prompts)) if learned is None else learned
            rest = torch.ones(len(prompts), dtype=torch.bool)
            rest[keep] = False
            rest = rest.nonzero()[:, 0]
            part = prompts.select(keep)
            logits, iou, loss = self.learn(emb, part, self.targets(learn_toward.to(self.device), part), learn_weight)
            if len(rest):
                with torch.no_grad():
                    logits_rest, iou_rest = self.decode(emb.detach(), prompts.select(rest))
                order = to_device(torch.cat([keep, rest]).argsort(), logits.device)
                logits, iou = torch.cat([logits, logits_rest])[order], torch.cat([iou, iou_rest])[order]
        if prior_check is not None and len(prompts):
            prompts, logits, iou = self.checked(emb, prompts, logits, iou, prior_check, size)
            fused_in = prompts if size is None else replace(prompts, frame_size=size)
        labels, conf = fuse(logits.detach().float(), fused_in, self.config.num_classes,
                            iou_pred=iou.detach().float() if self.config.iou_confidence else None,
                            match_probs=probs.detach().float(),
                            nested=self.config.nested_fusion)
        return Refined(labels, conf, prompts, logits, iou, learned, loss)

    def checked(self, emb: torch.Tensor, prompts: Prompts, logits: torch.Tensor, iou: torch.Tensor,
                check: PriorCheck, size: tuple[int, int] | None) -> tuple[Prompts, torch.Tensor, torch.Tensor]:
        """The prompts, mask logits and IoU predictions after ``check``: a prompt whose mask lies mostly on another
        structure of the prior (``prompts_on_prior``) is replaced by its class's box on the prior."""
        keep = prompts_on_prior(logits.detach() > 0, prompts.image_index, prompts.class_index, check.labels,
                                check.limit)
        if bool(keep.all()):
            return prompts, logits, iou
        dropped = set(zip(prompts.image_index[~keep].tolist(), prompts.class_index[~keep].tolist()))
        ix = keep.nonzero()[:, 0]
        c = self.config
        alt = prompts_from_labels(check.frame_labels, c.num_classes, bbox_shift=self.bbox_shift, components=c.components,
                                  points=c.points, negative_points=c.negative_points).to(self.device)
        alt = alt.select(torch.tensor([pair in dropped for pair in zip(alt.image_index.tolist(),
                                                                       alt.class_index.tolist())], dtype=torch.bool))
        with torch.no_grad():
            alt_logits, alt_iou = self.decode(emb, alt, out_size=size)
        return (prompts.select(ix) + alt, torch.cat([logits[to_device(ix, logits.device)], alt_logits]),
                torch.cat([iou[to_device(ix, iou.device)], alt_iou]))

    def learn_labeled(self, keys: Sequence[int], images: torch.Tensor, labels: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """SAM fine-tuning on labeled slices: ground-truth boxes (jittered), BCE + Dice per prompt, backpropagated
        into SAM's gradients here (:meth:`learn`); returns the loss, detached."""
        # the same prompt kinds SAM will get at refinement time (box + points), with jittered boxes
        c = self.config
        prompts = prompts_from_labels(labels, c.num_classes, bbox_shift=self.bbox_shift, points=c.points,
                                      negative_points=c.negative_points, jitter=True,
                                      generator=generator).to(self.device)
        learned = self.learning_subset(len(prompts), generator)
        if learned is not None:
            prompts = prompts.select(learned)
        if len(prompts) == 0:
            return images.new_zeros(())
        with torch.enable_grad():
            emb = self.embeddings(keys, images)
            return self.learn(emb, prompts, self.targets(labels.to(self.device), prompts))[2]

    def learn(self, emb: torch.Tensor, prompts: Prompts, targets: torch.Tensor,
              weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backpropagate ``weight * mask_loss`` of ``prompts`` toward ``targets`` (P,S,S) now, ``LEARN_CHUNK``
        prompts at a time; returns their logits and IoU predictions and the loss, all detached.

        The loss is a mean over prompts, so the chunks' gradients, each weighed by its share, add up to the
        whole batch's: the same update, but only one chunk's decoder activations (~70 MB a prompt at 256 px)
        alive at a time, also beside the Match model's graph while that waits for its own backward. In `full`
        mode the chunks' gradients collect on a detached copy of the embeddings and go through the encoder once.
        """
        n = len(prompts)
        if n == 0:  # nothing to learn from (a Match model that predicts no structure yet)
            logits, iou = self.decode(emb, prompts)
            return logits, iou, emb.new_zeros(())
        leaf = emb.detach().requires_grad_() if emb.requires_grad else emb
        logits, iou, total = [], [], emb.new_zeros(())
        with torch.enable_grad():
            for start, end in self.runs(prompts, LEARN_CHUNK):
                idx = torch.arange(start, end)
                lg, io = self.decode(leaf, prompts.select(idx))
                loss = mask_loss(lg, targets[to_device(idx, targets.device)]) * (weight * len(idx) / n)
                loss.backward()
                logits.append(lg.detach())
                iou.append(io.detach())
                total = total + loss.detach()
            if leaf is not emb and leaf.grad is not None:
                emb.backward(leaf.grad)
        return torch.cat(logits), torch.cat(iou), total

    def learning_subset(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Indices of the prompts one of SAM's losses learns from: ``config.sam_train_prompts`` of the ``n``,
        drawn at random, or None for all of them (then nothing is drawn, so runs without it are unchanged)."""
        k = self.config.sam_train_prompts
        if k <= 0 or n <= k:
            return None
        return torch.randperm(n, generator=generator)[:k].sort().values

    def targets(self, labels: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        """SAM's training target per prompt: its class's mask, hole-filled when ``config.sam_fill_targets``.

        SAM is class-agnostic: from a box alone it cannot tell the myocardium (a ring) from the LV it
        encloses (a disk in a slightly smaller box). Trained on the ring, it learns to hollow out every
        disk-like object, and its LV from exact boxes fell from 0.97 to 0.49 Dice in 10 steps on the
        phantom. With filled targets every box means "the object filling it", as LiteMedSAM learned, and
        the nested fusion turns the myocardium's disk back into the ring (disk minus the smaller LV).
        Off by default: SAM gained from it on ACDC, the Match model did not (docs/benchmarks.md).
        """
        target = labels[prompts.image_index] == prompts.class_index[:, None, None]
        if self.config.sam_fill_targets and len(prompts):
            target = fill_holes(target)
        return target.float()


def fill_holes(masks: torch.Tensor) -> torch.Tensor:
    """Fill the holes of each 2-D mask in a (P,H,W) bool stack (scipy on the CPU, one call for all)."""
    from scipy import ndimage

    m = masks.detach().cpu().numpy()
    # empty planes before and after, and a structure that never links two planes: each mask's own
    # border is what its background must reach to stay background
    padded = np.pad(m, ((1, 1), (0, 0), (0, 0)))
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    filled = ndimage.binary_fill_holes(padded, structure=structure)[1:-1]
    return torch.from_numpy(filled).to(masks.device)


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits plus soft Dice, averaged over prompts (MedSAM's training loss)."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).flatten(1).sum(1)
    denom = prob.flatten(1).sum(1) + target.flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (denom + 1)
    return bce + dice.mean()

