"""Per-prompt SAM masks -> one multi-class refined pseudo-label and a confidence map.

The rule, in plain words:

1. Every prompt's mask logits become a probability with a sigmoid (SAM's masks are independent binary
   masks; they are never averaged as logits nor passed through a softmax).
2. Prompts of the same image and class (e.g. one per component) are combined with the pixel-wise
   maximum: the class is present where any of its masks says so.
3. A pixel is a *candidate* for class c where that probability exceeds 0.5. Classes without a prompt
   have probability 0: SAM said nothing about them.
4. Where several classes are candidates:
   * ``nested=True`` (default): the class whose candidate mask in that image is **smaller** wins. Boxes
     around a ring (the myocardium) make SAM return the filled disk; the LV inside it is smaller, so
     the LV keeps its pixels and the myocardium becomes disk minus LV - the ring.
   * ``nested=False``: the class with the highest probability wins.
   Ties go to the lower class index.
5. A pixel with no candidate is background.
6. With ``match_probs`` (the Match model's softmax, B x C x H x W): where the Match model's argmax is a
   foreground class that had **no prompt** in that image, the pixel keeps the Match label, even under
   another class's SAM mask. SAM could not speak for that class; without this rule a lone myocardium
   box (whose mask is the filled disk) would swallow an LV that was too small to be prompted. The
   Match label's own (low) confidence then keeps such pixels out of a thresholded loss.

Confidence (in [0, 1]): the winning class's probability (times the winning prompt's IoU prediction
when ``iou_pred`` is given); for background ``1 - max_c p_c`` over the prompted classes; for a fallback
pixel the Match probability of its label. With ``match_probs``, pixels where the Match argmax disagrees
with the final label have their confidence multiplied by ``disagreement_scale`` (default 1.0, no change;
0.5 drops every disagreement below the 0.95 loss threshold, i.e. trains only where both models agree).

Caveat: without ``match_probs`` an image with no prompt at all is background with confidence 1.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, DataError
from .prompts import Prompts


def fuse(
    mask_logits: torch.Tensor,
    prompts: Prompts,
    num_classes: int,
    iou_pred: torch.Tensor | None = None,
    match_probs: torch.Tensor | None = None,
    nested: bool = True,
    disagreement_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse SAM mask logits (P, H, W), one per prompt, into labels (B, H, W) and confidence (B, H, W).

    ``mask_logits`` must already be in the prompts' frame (``prompts.frame_size``); a (P, 1, H, W) tensor
    is accepted too. ``iou_pred`` (P,) scales confidence; ``match_probs`` (B, C, H, W) enables the
    fallback and the disagreement rule. Outputs carry no gradient. See the module docstring for the rule.
    """
    if num_classes < 2:
        raise ConfigError(f"num_classes counts background too and must be at least 2, got {num_classes}.")
    b, (h, w) = prompts.num_images, prompts.frame_size
    n, cf, hw = len(prompts), num_classes - 1, h * w
    if mask_logits.dim() == 4 and mask_logits.shape[1] == 1:
        mask_logits = mask_logits[:, 0]
    if tuple(mask_logits.shape) != (n, h, w):
        raise DataError(f"Expected one {h}x{w} mask per prompt ({n}, {h}, {w}), got {tuple(mask_logits.shape)}; "
                        "upsample SAM's low-resolution masks to the prompts' frame first.")
    dev = mask_logits.device
    prompts = prompts.to(dev)
    if n:  # the four extremes read back at once: on a GPU each read waits for the device
        ci, ii = prompts.class_index.long(), prompts.image_index.long()
        c_lo, c_hi, i_lo, i_hi = torch.stack([ci.min(), ci.max(), ii.min(), ii.max()]).tolist()
        if c_lo < 1 or c_hi >= num_classes:
            raise DataError(f"A prompt's class lies outside 1..{num_classes - 1}; check num_classes.")
        if i_lo < 0 or i_hi >= b:
            raise DataError(f"A prompt's image lies outside 0..{b - 1}; check the prompts' num_images.")

    # pseudo-labels are targets: no gradient flows through the fusion
    prob = torch.sigmoid(mask_logits.detach().float()).reshape(n, hw)
    plane = (prompts.image_index * cf + prompts.class_index - 1).long()
    idx = plane.view(n, 1).expand(n, hw)
    p_cls = torch.zeros(b * cf, hw, device=dev).scatter_reduce(0, idx, prob, "amax")
    prompted = torch.zeros(b * cf, dtype=torch.bool, device=dev)
    prompted[plane] = True

    # IoU of the prompt that gives each class its maximum at each pixel
    iou_map = None
    if iou_pred is not None:
        iou = iou_pred.detach().float().reshape(-1).to(dev).clamp(0.0, 1.0)
        if iou.numel() != n:
            raise DataError(f"iou_pred has {iou.numel()} values for {n} prompts; pass one per prompt.")
        winner = prob >= p_cls[plane]
        iou_map = torch.zeros(b * cf, hw, device=dev).scatter_reduce(
            0, idx, iou.view(n, 1) * winner, "amax")
        iou_map = iou_map.view(b, cf, h, w)

    p_cls = p_cls.view(b, cf, h, w)
    cand = p_cls > 0.5
    if nested:
        # priority per image: smaller candidate area first, the class index breaks ties
        area = cand.flatten(2).sum(2)  # (B, C-1)
        order = torch.argsort(area * num_classes + torch.arange(cf, device=dev).view(1, cf), dim=1)
        priority = torch.empty_like(order).scatter_(1, order, torch.arange(cf, 0, -1, device=dev).expand(b, cf))
        priority = priority.float().view(b, cf, 1, 1).expand(b, cf, h, w)
    else:
        priority = p_cls
    # running winner over the few classes (a reduction over dim 1 is slow on the CPU); ties keep the first
    best = torch.full((b, h, w), -1.0, device=dev)
    win = torch.zeros((b, h, w), dtype=torch.long, device=dev)
    p_win = torch.zeros((b, h, w), device=dev)
    iou_win = torch.ones((b, h, w), device=dev)
    p_max = torch.zeros((b, h, w), device=dev)
    for j in range(cf):
        p_max = torch.maximum(p_max, p_cls[:, j])
        better = cand[:, j] & (priority[:, j] > best)
        best = torch.where(better, priority[:, j], best)
        win = torch.where(better, j + 1, win)
        p_win = torch.where(better, p_cls[:, j], p_win)
        if iou_map is not None:
            iou_win = torch.where(better, iou_map[:, j], iou_win)
    any_fg = win > 0
    labels = win
    conf = torch.where(any_fg, p_win * iou_win, 1.0 - p_max)

    if match_probs is not None:
        if tuple(match_probs.shape) != (b, num_classes, h, w):
            raise DataError(f"match_probs must have shape ({b}, {num_classes}, {h}, {w}), "
                            f"got {tuple(match_probs.shape)}.")
        mp = match_probs.detach().float().to(dev)
        m_conf, m_arg = mp.max(dim=1)
        unprompted = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=dev),
                                ~prompted.view(b, cf)], dim=1)  # (B, C); background counts as prompted
        fallback = unprompted.gather(1, m_arg.flatten(1)).view(b, h, w)
        labels = torch.where(fallback, m_arg, labels)
        conf = torch.where(fallback, m_conf, conf)
        conf = torch.where(m_arg != labels, conf * disagreement_scale, conf)
    return labels, conf.clamp(0.0, 1.0)

