"""SAM learns chunk by chunk (``Refiner.learn``): its losses are backpropagated a few prompts at a time, as they
are computed, and the gradients are those of one backward of the whole batch's loss. The real bundled
LiteMedSAM weights, on the CPU."""

from __future__ import annotations

import pytest
import torch

from napari_samatch.core.config import preset
from napari_samatch.core.sam import load_sam
from napari_samatch.core.sam import refiner as refiner_module
from napari_samatch.core.sam.prompts import Prompts
from napari_samatch.core.sam.refiner import Refiner, mask_loss

torch.set_num_threads(1)

IMAGE_INDEX = torch.tensor([0, 0, 0, 1, 1, 1])
CLASS_INDEX = torch.tensor([1, 2, 3, 1, 2, 3])
BOXES = torch.tensor([[30, 40, 120, 150], [100, 100, 200, 220], [90, 110, 180, 200], [10, 10, 60, 80],
                      [50, 60, 200, 200], [70, 80, 150, 160]], dtype=torch.float32)


@pytest.fixture(scope="module")
def lite():
    return load_sam("litemedsam")


def _prompts() -> Prompts:
    n = len(IMAGE_INDEX)
    return Prompts(image_index=IMAGE_INDEX, class_index=CLASS_INDEX, boxes=BOXES, points=None, point_labels=None,
                   scores=torch.ones(n), num_images=2, frame_size=(256, 256))


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _labels() -> torch.Tensor:
    y = torch.zeros(2, 256, 256, dtype=torch.long)
    y[0, 50:140, 40:110], y[0, 120:200, 110:190], y[1, 20:70, 15:55], y[1, 80:190, 70:190] = 1, 3, 2, 1
    return y


@pytest.mark.parametrize("mode", ["decoder", "full"])
def test_chunked_learning_gives_the_whole_batchs_gradients(lite, monkeypatch, mode):
    """At most two prompts a chunk (four chunks, as a chunk cuts no slice's three prompts where it can avoid it)
    against one backward of every prompt's loss at once: the same loss, logits and gradients, in `decoder` mode
    (cached embeddings) and in `full` mode (through the encoder)."""
    monkeypatch.setattr(refiner_module, "LEARN_CHUNK", 2)
    config = preset("quick", size=256, device="cpu", sam_mode=mode, sam_train_amp=False)
    refiner = Refiner(lite, config, torch.device("cpu"))
    images = torch.rand(2, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    prompts, weight = _prompts(), 0.25
    targets = refiner.targets(_labels(), prompts)
    lite.freeze_for(mode)
    lite.train(True)
    try:
        emb = lite.encode(images) if mode == "full" else lite.encode(images).detach()
        logits, _ = refiner.decode(emb, prompts)
        whole = weight * mask_loss(logits, targets)
        whole.backward()
        expected = _grads(lite)
        emb = lite.encode(images) if mode == "full" else emb
        chunked_logits, iou, loss = refiner.learn(emb, prompts, targets, weight)
        got = _grads(lite)
    finally:
        lite.train(False)
        lite.freeze_for("decoder")
    assert not loss.requires_grad and not chunked_logits.requires_grad and iou.shape == (6,)
    torch.testing.assert_close(loss, whole.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked_logits, logits.detach(), atol=1e-4, rtol=1e-4)
    assert got.keys() == expected.keys()
    assert any(".image_encoder." in n or n.startswith("image_encoder") for n in got) == (mode == "full")
    for name, g in expected.items():
        # the same sums in another order: rounding relative to the largest gradient (the encoder's first
        # convolution sums over every pixel of both slices)
        torch.testing.assert_close(got[name], g, atol=max(1e-6, 1e-4 * float(g.abs().max())), rtol=2e-3, msg=name)


def test_no_prompt_to_learn_from_is_no_loss(lite):
    """A Match model that predicts no structure yet gives no prompt: the refinement learns nothing, quietly."""
    refiner = Refiner(lite, preset("quick", size=256, device="cpu"), torch.device("cpu"))
    empty = _prompts().select(torch.zeros(len(IMAGE_INDEX), dtype=torch.bool))
    probs = torch.zeros(2, 4, 256, 256)
    probs[:, 0] = 1
    refined = refiner.refine(probs, [0, 1], torch.zeros(2, 1, 256, 256), prompts=empty,
                             emb=torch.zeros(2, 256, 64, 64), learn_toward=torch.zeros(2, 256, 256, dtype=torch.long))
    assert float(refined.loss) == 0 and refined.mask_logits.shape[0] == 0 and not refined.labels.any()


def test_a_joint_steps_sam_losses_are_backpropagated_apart_from_the_match_models(lite):
    """In the joint step SAM's unlabeled loss is backpropagated during the refinement (SAM has gradients when
    the Match model's backward starts), its labeled loss after that backward, and the step trains SAM."""
    from napari_samatch.core.data.datasets import phantom
    from napari_samatch.core.engine.engine import Engine

    data, _, _ = phantom(shape=(6, 64, 64))
    config = preset("standard", size=64, sam_size=256, batch_labeled=1, batch_unlabeled=1, device="cpu",
                    eval_every=0, checkpoint_every=0, sam_every=1, num_classes=data.num_classes,
                    class_names=list(data.class_names))
    engine = Engine(data, config)
    engine.sam_optimizer()
    seen = {}
    unet_first = next(p for p in engine.train_unet.parameters())

    def note_sam_grads(_grad):
        seen.setdefault("sam_grads", [p.grad is not None for p in engine.sam.mask_decoder.parameters()])

    hook = unet_first.register_hook(note_sam_grads)
    before = {n: p.detach().clone() for n, p in engine.sam.mask_decoder.named_parameters()}
    logs = engine.step("joint")
    hook.remove()
    assert any(seen["sam_grads"])  # SAM's unlabeled loss was already backpropagated
    assert {"loss_sam_u", "loss_sam_x"} <= logs.keys() and all(v == v for v in logs.values())
    assert any(not torch.equal(p, before[n]) for n, p in engine.sam.mask_decoder.named_parameters())

