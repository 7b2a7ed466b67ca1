"""Variants of Start's answer on one trained model: how much the final fusion can still buy.

    python benchmarks/answer_variants.py --volumes 0,1,2,3,4 --k 5
    python benchmarks/answer_variants.py --no-acdc --phantom --k 3

Start trains once per volume (the `quick` preset, as `volume_completion.py --methods start`), then the
answer (the Review dock's labels: Match model fused with the painted slices' prior, SAM-refined, gated)
is recomputed with other priors and with flip test-time augmentation, on the same weights. Training noise
(up to 0.06 per volume between seeds) is thus out of the comparison. Only the answer changes: the
pseudo-labels that trained the model came from the default prior. The answers here are made in the
training frame and resized back to the slices (the Review dock's answer before it was made at their own
size), which is what the variants were compared on. Prints one line per volume and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import volume_completion as vc  # noqa: E402

# (slice_decay, edge_px) of core/prior/interpolation.interpolate_labels; the default is (1.5, 2.0)
PRIORS = [(3.0, 2.0), (1.5, 1.0), (3.0, 1.0), (1e6, 2.0)]


def to_shape(labels, hw) -> np.ndarray:
    from napari_samatch.core.data.slices import resize_labels_back

    return np.asarray(resize_labels_back(np.asarray(labels, dtype=np.uint8), hw))


def prior_variant(engine, slice_decay: float, edge_px: float):
    """The engine's prior (labels, confidence) recomputed with other confidence constants."""
    import torch

    from napari_samatch.core.prior.interpolation import interpolate_labels

    lab = engine.labels.cpu().numpy()
    order = sorted(range(len(lab)), key=lambda i: engine.data.positions[i])
    stack = lab[order]
    painted = [z for z in range(len(order)) if (stack[z] >= 0).all()]
    it = interpolate_labels(np.clip(stack, 0, None).astype(np.uint8), painted, engine.config.num_classes,
                            slice_decay=slice_decay, edge_px=edge_px)
    labels, conf = np.zeros_like(it.labels), np.zeros_like(it.confidence)
    labels[order], conf[order] = it.labels, it.confidence
    return torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(conf)


def flip_tta(engine):
    """A stand-in for ``engine.predict``: probabilities averaged over the slice and its two mirror images."""
    from napari_samatch.core.device import autocast
    from napari_samatch.core.match.inference import predict_probs

    def predict(indices=None, images=None):
        with engine.lock:
            im = images if images is not None else engine.images if indices is None else engine.images[list(indices)]
            amp = autocast(engine.device, engine.config.amp)
            p = predict_probs(engine.unet, im, amp=amp)
            p += predict_probs(engine.unet, im.flip(-1), amp=amp).flip(-1)
            p += predict_probs(engine.unet, im.flip(-2), amp=amp).flip(-2)
            return p / 3
    return predict


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", default="0", help="comma-separated indices into val.list")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--phantom", action="store_true")
    ap.add_argument("--no-acdc", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=str(vc.RESULTS / "answer_variants.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for name, image, labels in vc.load_volumes(argparse.Namespace(no_acdc=args.no_acdc, volumes=args.volumes,
                                                                   limit=0, phantom=args.phantom)):
        picks = vc.painted_slices(labels, args.k)
        rest = [z for z in range(len(labels)) if z not in picks]
        painted = np.zeros_like(labels)
        painted[picks] = labels[picks]
        engine = vc.engine_for(image, painted, picks, threads=args.threads, seed=args.seed, **vc.parse_set(args.set))
        t0 = time.perf_counter()
        engine.run()
        train_s = time.perf_counter() - t0
        every, hw, default_prior, default_predict = list(range(len(labels))), labels.shape[1:], engine.prior, engine.predict
        variants = {}

        def score(tag: str) -> None:
            out = engine.preview(every)
            variants[tag] = {"answer": vc.scores(to_shape(out["refined"], hw), labels, rest),
                             "match": vc.scores(to_shape(out["raw"], hw), labels, rest)}

        score("default")
        for decay, edge in PRIORS:
            engine.prior = prior_variant(engine, decay, edge)
            score(f"slice_decay={decay:g},edge_px={edge:g}")
        engine.prior = default_prior
        engine.predict = flip_tta(engine)
        score("flip-tta")
        engine.predict = default_predict
        rows.append({"volume": name, "k": args.k, "train_s": train_s, "variants": variants})
        print(name, " ".join(f"{t}: {vc.mean_dice(v['answer']):.3f}" for t, v in variants.items()), flush=True)
    tags = list(rows[0]["variants"]) if rows else []
    print("mean", " ".join(f"{t}: {np.mean([vc.mean_dice(r['variants'][t]['answer']) for r in rows]):.3f}" for t in tags))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
