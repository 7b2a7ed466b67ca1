"""Property tests (hypothesis) for prompts, fusion and metrics, on small arrays."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_samatch.core.evaluation.metrics import dice, hd95
from napari_samatch.core.sam.fusion import fuse
from napari_samatch.core.sam.prompts import label_components, prompts_from_probs

torch.set_num_threads(1)
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def prob_maps(draw, max_b=2, max_c=4, max_hw=14):
    b = draw(st.integers(1, max_b))
    c = draw(st.integers(2, max_c))
    h = draw(st.integers(3, max_hw))
    w = draw(st.integers(3, max_hw))
    logits = draw(arrays(np.float32, (b, c, h, w), elements=st.floats(-6, 6, width=32)))
    return torch.from_numpy(logits).softmax(dim=1)


label_maps = st.integers(2, 12).flatmap(
    lambda h: st.integers(2, 12).flatmap(
        lambda w: st.tuples(arrays(np.uint8, (h, w), elements=st.integers(0, 2)),
                            arrays(np.uint8, (h, w), elements=st.integers(0, 2)))))


@SETTINGS
@given(probs=prob_maps(), thresh=st.sampled_from([0.4, 0.6, 0.9]), shift=st.integers(0, 3),
       components=st.sampled_from(["largest", "all"]), min_area=st.integers(1, 4))
def test_boxes_contain_their_component_and_lie_in_the_frame(probs, thresh, shift, components, min_area):
    b, c, h, w = probs.shape
    pr = prompts_from_probs(probs, conf_thresh=thresh, bbox_shift=shift, components=components,
                            min_area=min_area, points=1, negative_points=1)
    assert pr.boxes.shape == (len(pr), 4)
    assert torch.all(pr.boxes[:, [0, 2]] >= 0) and torch.all(pr.boxes[:, [0, 2]] <= w - 1)
    assert torch.all(pr.boxes[:, [1, 3]] >= 0) and torch.all(pr.boxes[:, [1, 3]] <= h - 1)
    conf, arg = probs.max(1)
    confident = conf >= thresh
    plane_masks = {}
    for i in range(len(pr)):
        img, cls = int(pr.image_index[i]), int(pr.class_index[i])
        assert 1 <= cls < c
        region = confident[img] & (arg[img] == cls)
        if (img, cls) not in plane_masks:
            plane_masks[(img, cls)] = label_components(region[None], "scipy")[0]
        lab = plane_masks[(img, cls)]
        x, y = pr.points[i, 0].long().tolist()
        assert pr.point_labels[i, 0] == 1 and region[y, x]  # the positive point lies in the region
        comp = lab == lab[y, x]
        assert comp.sum() >= min_area
        ys, xs = torch.nonzero(comp, as_tuple=True)
        x0, y0, x1, y1 = pr.boxes[i].tolist()
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
        if pr.point_labels[i, 1] == 0:
            nx, ny = pr.points[i, 1].long().tolist()
            assert x0 <= nx <= x1 and y0 <= ny <= y1
            assert confident[img, ny, nx] and arg[img, ny, nx] != cls
    # every present class with a big enough confident region has a prompt
    for img in range(b):
        for cls in range(1, c):
            region = confident[img] & (arg[img] == cls)
            sizes = torch.bincount(label_components(region[None], "scipy").flatten())[1:]
            has = bool(((pr.image_index == img) & (pr.class_index == cls)).any())
            assert has == bool((sizes >= min_area).any())


@SETTINGS
@given(mask=arrays(np.bool_, (2, 9, 11), elements=st.booleans()))
def test_propagation_labels_partition_like_scipy(mask):
    m = torch.from_numpy(mask)
    a, b = label_components(m, "scipy"), label_components(m, "propagate")
    assert torch.equal(a == 0, b == 0)
    pairs = set(zip(a[m].tolist(), b[m].tolist()))
    assert len(pairs) == len(set(a[m].tolist())) == len(set(b[m].tolist()))


@SETTINGS
@given(data=st.data(), n=st.integers(0, 5), c=st.integers(2, 4), nested=st.booleans(),
       h=st.integers(2, 10), w=st.integers(2, 10))
def test_fused_labels_are_valid_classes(data, n, c, nested, h, w):
    b = 2
    logits = torch.from_numpy(data.draw(arrays(np.float32, (n, h, w), elements=st.floats(-5, 5, width=32))))
    img = data.draw(st.lists(st.integers(0, b - 1), min_size=n, max_size=n))
    cls = data.draw(st.lists(st.integers(1, c - 1), min_size=n, max_size=n))
    from napari_samatch.core.sam.prompts import Prompts

    pr = Prompts(image_index=torch.tensor(img, dtype=torch.long), class_index=torch.tensor(cls, dtype=torch.long),
                 boxes=torch.zeros(n, 4), points=None, point_labels=None, scores=torch.ones(n),
                 num_images=b, frame_size=(h, w))
    lab, conf = fuse(logits, pr, c, nested=nested)
    assert lab.shape == (b, h, w) and lab.min() >= 0 and lab.max() <= c - 1
    assert conf.min() >= 0 and conf.max() <= 1
    p = torch.zeros(b, c, h, w)  # per-class max probability, computed naively
    for i in range(n):
        p[img[i], cls[i]] = torch.maximum(p[img[i], cls[i]], torch.sigmoid(logits[i]))
    chosen = p.gather(1, lab.unsqueeze(1)).squeeze(1)
    fg = lab > 0
    assert torch.all(chosen[fg] > 0.5)
    assert torch.all(p[:, 1:].amax(1)[~fg] <= 0.5)


@SETTINGS
@given(pair=label_maps, cls=st.integers(1, 2))
def test_dice_symmetric_bounded_and_hd95_nonnegative(pair, cls):
    a, b = pair
    d = dice(a, b, cls)
    assert 0.0 <= d <= 1.0 and d == dice(b, a, cls)
    assert dice(a, a, cls) == 1.0
    hd = hd95(a, b, cls)
    assert np.isnan(hd) or hd >= 0
    assert hd95(a, a, cls) == 0.0


# ------------------------------------------------------------------------------------ reader fuzz
# Random bytes, and valid files with random bytes written over them or cut short, under every reader
# extension: the reader must either return a valid Volume or raise DataError, never another exception,
# and never take long (no hang on a header that claims a huge size).
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from napari_samatch.core.data.io import read_volume  # noqa: E402
from napari_samatch.core.errors import DataError  # noqa: E402

FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_EXTS = (".nii", ".nii.gz", ".tif", ".h5", ".png")


def _valid_bytes(ext: str) -> bytes:
    import h5py
    import nibabel as nib
    import tifffile
    from PIL import Image

    img = np.random.default_rng(0).random((3, 12, 10)).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"v{ext}"
        if ext.startswith(".nii"):
            nib.save(nib.Nifti1Image(img, np.eye(4)), str(p))
        elif ext == ".tif":
            tifffile.imwrite(p, img)
        elif ext == ".h5":
            with h5py.File(p, "w") as f:
                f["image"] = img
        else:
            Image.fromarray((img[0] * 255).astype(np.uint8)).save(p)
        return p.read_bytes()


_VALID = {ext: _valid_bytes(ext) for ext in FUZZ_EXTS}


def _read_clearly(ext: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"fuzz{ext}"
        p.write_bytes(data)
        t0 = time.perf_counter()
        try:
            vol = read_volume(p)
        except DataError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            assert vol.image.ndim in (2, 3) and np.isfinite(vol.image).all()
        assert time.perf_counter() - t0 < 20, "a reader took more than 20 s on a small file"


@FUZZ
@given(ext=st.sampled_from(FUZZ_EXTS), data=st.binary(min_size=0, max_size=4096))
def test_readers_on_random_bytes(ext, data):
    _read_clearly(ext, data)


@FUZZ
@given(ext=st.sampled_from(FUZZ_EXTS), data=st.data())
def test_readers_on_damaged_valid_files(ext, data):
    raw = bytearray(_VALID[ext])
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    for _ in range(data.draw(st.integers(0, 8), label="flips")):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    _read_clearly(ext, bytes(raw[:cut] if data.draw(st.booleans(), label="truncate") else raw))
