"""One training step of each kind: supervised, UniMatch, SAM fine-tuning, and the joint SAM-Match step.

Every function takes canonical (un-augmented) slices, draws its own augmentation from the generator,
and returns a scalar loss to backpropagate plus a dict of detached scalar tensors for the log (the engine reads
them once the whole step is queued: on a GPU each ``.item()`` makes the host wait for the device). UniMatch and
SAM-Match share one function and differ only in where the pseudo-label comes from: the Match model's
own weak-view prediction, or SAM's refinement of it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..device import to_device
from ..match.augment import apply_cutmix, cutmix_masks, invert, random_geometry, strong_view, warp
from ..match.losses import supervised_loss, unimatch_total, unsupervised_loss
from ..match.unet import UNet
from ..prior.prior import fuse_prior
from ..sam.refiner import Refiner

# (weak-view probabilities, weak-view affine) -> (pseudo-label, confidence, other losses for the log, already
# backpropagated: SAM's own)
PseudoFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]


def read_logs(logs: dict[str, torch.Tensor]) -> dict[str, float]:
    """A step's log as plain floats, read from the device at once: one wait for it rather than one per value."""
    names = list(logs)
    return dict(zip(names, torch.stack([logs[n].float().reshape(()) for n in names]).tolist())) if names else {}


def weak_labeled(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    theta = to_device(random_geometry(x.shape[0], gen), x.device)
    return warp(x, theta, mode="bilinear"), warp(y, theta, mode="nearest", fill=0)


def supervised_step(unet: UNet, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                    amp=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x_w, y_w = weak_labeled(x, y, gen)
    with amp:
        logits = unet(x_w)
    loss = supervised_loss(logits.float(), y_w)
    return loss, {"loss": loss.detach(), "loss_x": loss.detach()}


def self_pseudo(probs_w: torch.Tensor, theta: torch.Tensor):
    """UniMatch's pseudo-label: the weak view's own argmax and its probability."""
    conf, label = probs_w.max(dim=1)
    return label, conf, {}


def unimatch_step(unet: UNet, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, gen: torch.Generator,
                  conf_thresh: float, pseudo_fn: PseudoFn = self_pseudo,
                  amp=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The UniMatch loss on a labeled batch (x, y) and an unlabeled batch u.

    CutMix partners are the same unlabeled batch rolled by one (and their pseudo-labels rolled alike),
    so the pseudo-labels of a step are computed once; UniMatch draws a second unlabeled batch instead,
    which would double SAM's work for the same mixing statistics.
    """
    bx, bu, s = x.shape[0], u.shape[0], u.shape[-1]
    x_w, y_w = weak_labeled(x, y, gen)
    theta_u = to_device(random_geometry(bu, gen), u.device)
    u_w = warp(u, theta_u, mode="bilinear")
    u_s1, u_s2 = strong_view(u_w, gen), strong_view(u_w, gen)
    m1 = to_device(cutmix_masks(bu, s, s, gen), u.device)
    m2 = to_device(cutmix_masks(bu, s, s, gen), u.device)
    u_s1 = apply_cutmix(u_s1, u_s1.roll(1, 0), m1)
    u_s2 = apply_cutmix(u_s2, u_s2.roll(1, 0), m2)

    with amp:
        logits, logits_fp = unet(torch.cat([x_w, u_w]), need_fp=True)
        logits_s = unet(torch.cat([u_s1, u_s2]))
    pred_x, pred_w = logits.float().split([bx, bu])
    pred_fp = logits_fp.float()[bx:]
    pred_s1, pred_s2 = logits_s.float().chunk(2)

    probs_w = F.softmax(pred_w.detach(), dim=1)
    pseudo, conf, extra = pseudo_fn(probs_w, theta_u)
    p1 = apply_cutmix(pseudo, pseudo.roll(1, 0), m1)
    c1 = apply_cutmix(conf, conf.roll(1, 0), m1)
    p2 = apply_cutmix(pseudo, pseudo.roll(1, 0), m2)
    c2 = apply_cutmix(conf, conf.roll(1, 0), m2)

    loss_x = supervised_loss(pred_x, y_w)
    loss_s1 = unsupervised_loss(pred_s1, p1, c1, conf_thresh)
    loss_s2 = unsupervised_loss(pred_s2, p2, c2, conf_thresh)
    loss_fp = unsupervised_loss(pred_fp, pseudo, conf, conf_thresh)
    loss = unimatch_total(loss_x, loss_s1, loss_s2, loss_fp)
    logs = {"loss_x": loss_x.detach(), "loss_s": (loss_s1.detach() + loss_s2.detach()) / 2,
            "loss_fp": loss_fp.detach(), "mask_ratio": (conf >= conf_thresh).float().mean()}
    logs.update({name: value.detach() for name, value in extra.items()})
    logs["loss"] = loss.detach() + sum(v.detach() for v in extra.values())
    return loss, logs


def samatch_pseudo(refiner: Refiner, keys: list[int], u: torch.Tensor, train_sam: bool,
                   sam_weight: float, prior: tuple[torch.Tensor, torch.Tensor, float] | None = None,
                   generator: torch.Generator | None = None) -> PseudoFn:
    """SAM-Match's pseudo-label: SAM refines the Match prediction in the slice's own frame.

    The weak-view probabilities are warped back to the slice's frame (the inverse affine), refined with
    the cached embedding, and the refined label is warped forward again with the same affine. Pixels the
    weak view rotated in from outside get label -1 and confidence 0 (ignored by the losses).
    """

    def pseudo(probs_w: torch.Tensor, theta: torch.Tensor):
        probs = warp(probs_w, invert(theta), mode="bilinear")
        if prior is not None:  # the painted slices' interpolation, in the slice's own frame like SAM
            probs = fuse_prior(probs, *prior)
        # SAM's unlabeled loss (toward the Match model's labels) is backpropagated within this decode
        learn = train_sam and sam_weight > 0
        with torch.set_grad_enabled(learn):
            refined = refiner.refine(probs, keys, u, generator=generator, learn_weight=sam_weight,
                                     learn_toward=probs.argmax(1) if learn else None)
        label = warp(refined.labels, theta, mode="nearest", fill=-1)
        conf = warp(refined.confidence[:, None], theta, mode="nearest")[:, 0]
        # for the log only: its gradients are in SAM's already
        extra = {} if refined.loss is None else {"loss_sam_u": refined.loss}
        return label, conf, extra

    return pseudo
