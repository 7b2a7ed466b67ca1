"""SAM backends: safe checkpoint loading, batched decoding equal to the stock decoder, tiny ViT models."""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import pytest
import torch

from napari_samatch.core.errors import CheckpointError, ConfigError
from napari_samatch.core.sam import litemedsam as lm
from napari_samatch.core.sam import load_sam
from napari_samatch.core.sam.segment_anything import load_segment_anything

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lite():
    return load_sam("litemedsam")


def _stock(model, emb1, boxes=None, points=None):
    """The stock prompt encoder + mask decoder, for one image's prompts."""
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
    low, iou = model.mask_decoder(image_embeddings=emb1, image_pe=model.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                  multimask_output=False)
    return low, iou[:, 0]


# ---------------------------------------------------------------------- LiteMedSAM loading
def test_bundled_litemedsam_loads_with_hash(lite):
    path = lm.bundled_checkpoint_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == lm.ASSET_SHA256
    assert len(lite.state_dict()) == lm.ASSET_TENSORS == 435
    assert (lite.name, lite.input_size, lite.embed_shape) == ("litemedsam", 256, (256, 64, 64))
    assert not lite.training
    assert len(lite.fingerprint()) == 16 and lite.fingerprint() != lite.fingerprint("encoder")


def test_damaged_bundled_asset_says_reinstall(tmp_path, monkeypatch):
    data = bytearray(lm.bundled_checkpoint_path().read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte still loads; only the hash can tell
    bad = tmp_path / "lite_medsam.pth"
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(lm, "bundled_checkpoint_path", lambda: bad)
    with pytest.raises(CheckpointError, match="reinstall|Reinstall"):
        lm.load_litemedsam()


def test_corrupt_copy_is_refused(tmp_path):
    data = lm.bundled_checkpoint_path().read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        lm.load_litemedsam(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_sam("litemedsam", junk)


class _Creates:
    """A pickle that, if unpickled unsafely, creates a file."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Creates(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused: not a plain weights file"):
        lm.load_litemedsam(evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_segment_anything(evil)
    assert not marker.exists()


def test_wrong_architecture_names_keys(tmp_path, lite):
    state = {k: v.clone() for k, v in lite.state_dict().items()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    del state["mask_decoder.mask_tokens.weight"]
    state["extra.layer.weight"] = torch.zeros(2)
    path = tmp_path / "wrong.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as info:
        lm.load_litemedsam(path)
    msg = str(info.value)
    assert "mask_decoder.iou_token.weight" in msg and "mask_decoder.mask_tokens.weight" in msg
    assert "extra.layer.weight" in msg


def test_missing_path_and_unknown_names(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        lm.load_litemedsam(tmp_path / "nope.pth")
    with pytest.raises(ConfigError):
        load_sam("sam2-hiera")
    with pytest.raises(CheckpointError, match="needs a checkpoint"):
        load_sam("sam")


def test_save_roundtrip_and_modes(tmp_path, lite):
    path = lite.save(tmp_path / "lite.pth")
    again = lm.load_litemedsam(path)
    assert again.fingerprint() == lite.fingerprint()
    enc = sum(p.numel() for p in lite.image_encoder.parameters())
    assert sum(p.numel() for p in lite.trainable_parameters("full")) > enc
    assert sum(p.numel() for p in lite.trainable_parameters("decoder")) == \
        sum(p.numel() for p in lite.parameters()) - enc
    again.freeze_for("decoder").train()
    assert not again.image_encoder.training and again.mask_decoder.training  # BN stats stay frozen
    assert not any(p.requires_grad for p in again.image_encoder.parameters())
    with pytest.raises(ConfigError):
        again.freeze_for("encoder-only")


def test_mode_switches_leave_a_frozen_encoder_alone(tmp_path, lite):
    """TinyViT rebuilds its attention biases on every train()/eval() (about 0.25 s on a CPU): a box edit
    and a joint step switch SAM's mode, and must not pay for it when the encoder does not change."""
    model = lm.load_litemedsam(lite.save(tmp_path / "lite.pth")).freeze_for("decoder")
    calls = []
    model.image_encoder.train = lambda mode=True: calls.append(mode)  # instance attribute shadows the method
    for _ in range(3):
        model.train()
        assert model.training and model.mask_decoder.training and model.prompt_encoder.training
        model.eval()
        assert not model.training and not model.mask_decoder.training
    assert calls == []
    del model.image_encoder.train
    model.freeze_for("full").train()
    assert model.image_encoder.training and all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())


# ---------------------------------------------------------------------- batched decoding
IMAGE_INDEX = torch.tensor([0, 0, 1, 1, 1, 2, 2])
BOXES = torch.tensor([[30, 40, 120, 150], [100, 100, 200, 220], [10, 10, 60, 80], [50, 60, 200, 200],
                      [0, 0, 255, 255], [80, 90, 170, 160], [20, 30, 40, 50]], dtype=torch.float32)


@pytest.fixture(scope="module")
def embeddings():
    # The decoder's algebra does not care where embeddings come from; random ones keep this fast.
    g = torch.Generator().manual_seed(0)
    return 0.5 * torch.randn(3, 256, 64, 64, generator=g)


def test_batched_decode_equals_one_at_a_time_and_stock(lite, embeddings):
    with torch.no_grad():
        low, iou = lite.decode_lowres(embeddings, IMAGE_INDEX, BOXES)
        assert low.shape == (7, 1, 256, 256) and iou.shape == (7,)
        for p in range(7):
            i = int(IMAGE_INDEX[p])
            alone, alone_iou = lite.decode_lowres(embeddings[i:i + 1], torch.tensor([0]), BOXES[p:p + 1])
            assert torch.allclose(alone, low[p:p + 1], atol=1e-4)
            assert torch.allclose(alone_iou, iou[p:p + 1], atol=1e-4)
        stock, stock_iou = _stock(lite, embeddings[1:2], boxes=BOXES[2:3])
        assert torch.allclose(stock, low[2:3], atol=1e-4) and torch.allclose(stock_iou, iou[2:3], atol=1e-4)
        stock, _ = _stock(lite, embeddings[1:2], boxes=BOXES[2:5])  # stock handles many prompts on ONE image
        assert torch.allclose(stock, low[2:5], atol=1e-4)


def test_prompts_scale_with_the_training_frame(lite, embeddings):
    with torch.no_grad():
        full, _ = lite.decode(embeddings, IMAGE_INDEX[:2], BOXES[:2], frame_size=256)
        half, _ = lite.decode(embeddings, IMAGE_INDEX[:2], BOXES[:2] / 2, frame_size=128)
    assert full.shape == (2, 256, 256) and half.shape == (2, 128, 128)
    down = torch.nn.functional.interpolate(full[:, None], size=(128, 128), mode="bilinear")[:, 0]
    assert ((down > 0) == (half > 0)).float().mean() > 0.98


def test_points_alone_and_with_boxes(lite, embeddings):
    idx = torch.tensor([0, 2, 2])
    boxes = BOXES[[0, 5, 6]]
    pts = torch.tensor([[[70.0, 90.0], [5.0, 5.0], [0.0, 0.0]]]).repeat(3, 1, 1)
    labels = torch.tensor([[1, 0, -1]]).repeat(3, 1)  # -1 = padding
    with torch.no_grad():
        only, iou = lite.decode(embeddings, idx, None, pts, labels)
        assert only.shape == (3, 256, 256) and iou.shape == (3,)
        low, _ = lite.decode_lowres(embeddings, idx, None, pts, labels)
        stock, _ = _stock(lite, embeddings[2:3], points=(pts[1:], labels[1:]))
        assert torch.allclose(stock, low[1:], atol=1e-4)
        low_both, _ = lite.decode_lowres(embeddings, idx, boxes, pts, labels)
        stock_both, _ = _stock(lite, embeddings[2:3], boxes=boxes[1:], points=(pts[1:], labels[1:]))
        assert torch.allclose(stock_both, low_both[1:], atol=1e-4)
        assert not torch.allclose(low_both, low, atol=1e-2)  # the box does change the answer
        empty, empty_iou = lite.decode(embeddings, idx[:0], boxes[:0], frame_size=64)
    assert empty.shape == (0, 64, 64) and empty_iou.shape == (0,)


def test_decoder_mode_trains_only_the_decoder(lite, embeddings):
    lite.freeze_for("decoder")
    try:
        logits, iou = lite.decode(embeddings[:1], torch.tensor([0, 0]), BOXES[:2])
        (logits.mean() + iou.sum()).backward()
        assert lite.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad is not None
        assert all(p.grad is None for p in lite.image_encoder.parameters())
    finally:
        lite.zero_grad(set_to_none=True)
        lite.freeze_for("full").eval()


def test_litemedsam_encode_resizes_any_frame(lite):
    with torch.no_grad():
        emb = lite.encode(torch.rand(1, 1, 96, 96))
    assert emb.shape == (1, 256, 64, 64) and torch.isfinite(emb).all()


# ---------------------------------------------------------------------- tiny segment-anything model
def _tiny_sam():
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    return Sam(
        image_encoder=ImageEncoderViT(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                      mlp_ratio=2.0, out_chans=32, qkv_bias=True,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                                      window_size=4, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(64, 64),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=32, iou_head_depth=3,
                                 iou_head_hidden_dim=32,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=8)),
    ).eval()


def test_tiny_segment_anything_auto(tmp_path):
    sam = _tiny_sam()
    path = tmp_path / "tiny_sam.pth"
    torch.save(sam.state_dict(), path)
    model = load_segment_anything(path, "auto")
    cfg = model.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.global_attn_indexes) == (32, 2, 2, (1,))
    assert (cfg.img_size, cfg.patch_size, cfg.window_size, cfg.mlp_ratio) == (64, 8, 4, 2.0)
    assert (model.input_size, model.embed_shape, model.normalization) == (64, (32, 8, 8), "sam")
    images = torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        emb = model.encode(images)
        assert emb.shape == (2, 32, 8, 8)
        # same pixels through the stock SAM preprocessing give the same embedding
        x64 = torch.nn.functional.interpolate(images.expand(-1, 3, -1, -1), size=(64, 64), mode="bilinear")
        assert torch.allclose(sam.image_encoder(sam.preprocess(x64 * 255.0)), emb, atol=1e-4)
        idx = torch.tensor([0, 1, 1])
        boxes = torch.tensor([[2.0, 3.0, 20.0, 30.0], [10.0, 5.0, 39.0, 39.0], [0.0, 0.0, 15.0, 15.0]])
        logits, iou = model.decode(emb, idx, boxes, frame_size=40)
        assert logits.shape == (3, 40, 40) and iou.shape == (3,)
        low, _ = model.decode_lowres(emb, idx, boxes, frame_size=40)
        stock, _ = _stock(sam, emb[1:2], boxes=boxes[1:] * 64 / 40)
        assert torch.allclose(stock, low[1:], atol=1e-4)
    # MedSAM normalisation survives a save/load round trip with model_type='auto'
    medsam = load_segment_anything(path, "medsam")
    assert medsam.normalization == "unit" and medsam.fingerprint("encoder") != model.fingerprint("encoder")
    again = load_segment_anything(medsam.save(tmp_path / "tuned.pth"), "auto")
    assert again.normalization == "unit" and again.fingerprint() == medsam.fingerprint()


def test_segment_anything_wrong_files(tmp_path):
    path = tmp_path / "tiny_sam.pth"
    torch.save(_tiny_sam().state_dict(), path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_segment_anything(path, "vit_b")
    with pytest.raises(CheckpointError, match="LiteMedSAM"):
        load_segment_anything(lm.bundled_checkpoint_path(), "auto")
    with pytest.raises(CheckpointError, match="segment-anything ViT"):
        lm.load_litemedsam(path)
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(CheckpointError, match="no state_dict"):
        load_segment_anything(tensor_only)
    with pytest.raises(ConfigError):
        load_segment_anything(path, "vit_g")


@pytest.mark.parametrize("train_amp", [False, True])
def test_training_decode_runs_in_bf16_only_when_asked(lite, embeddings, train_amp):
    """``sam_train_amp``: SAM's decodes with gradients run under bf16 autocast on a CPU with fast bf16
    (0.68-0.79x the joint step, docs/benchmarks.md); gradients still reach the float32 weights."""
    from napari_samatch.core.config import preset
    from napari_samatch.core.device import cpu_has_fast_bf16
    from napari_samatch.core.sam.prompts import Prompts
    from napari_samatch.core.sam.refiner import Refiner

    if train_amp and not cpu_has_fast_bf16():
        pytest.skip("this CPU has no fast bf16, so autocast stays float32")
    config = preset("quick", size=256, device="cpu", sam_train_amp=train_amp)
    refiner = Refiner(lite, config, torch.device("cpu"))
    n = len(IMAGE_INDEX)
    prompts = Prompts(image_index=IMAGE_INDEX, class_index=torch.ones(n, dtype=torch.long), boxes=BOXES,
                      points=None, point_labels=None, scores=torch.ones(n), num_images=3, frame_size=(256, 256))
    seen = []
    hook = lite.mask_decoder.iou_prediction_head.layers[0].register_forward_hook(
        lambda m, i, o: seen.append(o.dtype))
    try:
        lite.train(True)
        logits, iou = refiner.decode(embeddings, prompts)
        (logits.mean() + iou.mean()).backward()
    finally:
        hook.remove()
        lite.train(False)
    grads = [p.grad for p in lite.mask_decoder.parameters() if p.grad is not None]
    lite.zero_grad(set_to_none=True)
    assert logits.dtype == torch.float32 and grads and all(g.dtype == torch.float32 for g in grads)
    assert seen and all(d == (torch.bfloat16 if train_amp else torch.float32) for d in seen)


def test_sam_learns_from_a_random_subset_of_prompts_when_asked(lite, embeddings):
    """``sam_train_prompts``: every prompt is still decoded and fused, but SAM learns from only k of them;
    the logits are those of the decode with every prompt."""
    from napari_samatch.core.config import preset
    from napari_samatch.core.sam.prompts import Prompts
    from napari_samatch.core.sam.refiner import Refiner

    n = len(IMAGE_INDEX)
    prompts = Prompts(image_index=IMAGE_INDEX, class_index=torch.ones(n, dtype=torch.long), boxes=BOXES,
                      points=None, point_labels=None, scores=torch.ones(n), num_images=3, frame_size=(256, 256))
    probs = torch.full((3, 4, 256, 256), 0.25)
    match = torch.ones(3, 256, 256, dtype=torch.long)
    out = {}
    lite.train(True)
    try:
        for k in (0, 2):
            refiner = Refiner(lite, preset("quick", size=256, device="cpu", sam_train_prompts=k), torch.device("cpu"))
            refiner.trusted = None
            g = torch.Generator().manual_seed(0)
            refined = refiner.refine(probs, [0, 1, 2], torch.zeros(3, 1, 256, 256), prompts=prompts, emb=embeddings,
                                     generator=g, learn_toward=match)
            grads = [p.grad.clone() for p in lite.mask_decoder.parameters() if p.grad is not None]
            lite.zero_grad(set_to_none=True)
            out[k] = refined, grads
    finally:
        lite.train(False)
    (every, g_every), (two, g_two) = out[0], out[2]
    assert every.learned is None and len(two.learned) == 2 < n
    torch.testing.assert_close(two.mask_logits, every.mask_logits, atol=1e-3, rtol=1e-3)
    assert torch.equal(two.labels, every.labels)
    assert g_two and len(g_two) == len(g_every)  # SAM still learns, from two prompts' losses
    # the supervised loss draws its k prompts the same way
    refiner = Refiner(lite, preset("quick", size=256, device="cpu", sam_train_prompts=1), torch.device("cpu"))
    assert refiner.learning_subset(n) is not None and len(refiner.learning_subset(n)) == 1
    assert refiner.learning_subset(1) is None
