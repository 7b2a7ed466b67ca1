"""Variants of Start's answer on one trained model: how much the final fusion can still buy.

    python benchmarks/answer_variants.py --volumes 0,2,4,6,8 --k 5 3 --states benchmarks/results/states
    python benchmarks/answer_variants.py --no-acdc --phantom --k 3

Start trains once per volume and k (the `quick` preset, as `volume_completion.py --methods start`), then the
answer (what the Review dock shows and Export writes: the Match model fused with the painted slices' prior,
SAM-refined, gated, at the slices' own size) is recomputed with other settings on the same weights, so
training noise (up to 0.06 per volume between seeds) is out of the comparison. Only the answer changes: the
pseudo-labels that trained the model came from the default prior. The variants: the prior's weight
(``prior_weight`` 2, and 1000, which makes the answer the interpolation refined by the trained SAM; a run's
config accepts at most 1, and above it the fused weight, ``weight x confidence`` clipped to 1, saturates), its
confidence decay between slices (``slice_decay`` 3 and 5 slices; default 1.5; ``between_decay`` 3 and 10 only for slices
between two painted ones, not for those outside the painted range, which copy the outermost), and test-time augmentation of the
Match model over the eight rotations and mirror images that training draws; ``prior_check`` off, or at another limit than
review.PRIOR_CHECK's (SAM's masks that lie mostly on another structure of the prior). ``oracle`` is the best variant
chosen per volume with the hidden labels: what a perfect per-volume choice could at most buy.

``--states DIR`` keeps each trained engine (a checkpoint per volume, k, seed and ``--set``) and reuses it on the next run,
so new variants are scored in seconds. One JSON line per volume and k; the means at the end; JSON to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import volume_completion as vc  # noqa: E402

VARIANTS = ["default", "prior_weight=2", "prior_weight=1000", "slice_decay=3", "slice_decay=5", "between_decay=3",
            "between_decay=10", "tta", "prior_check=off", "prior_check=0.5"]


def dihedral_tta(engine):
    """A stand-in for ``engine.predict``: probabilities averaged over the 4 rotations x 2 mirror images."""
    import torch

    predict = engine.predict

    def averaged(indices=None, images=None):
        im = images if images is not None else engine.images if indices is None else engine.images[list(indices)]
        total = 0
        for turns in range(4):
            for mirror in (False, True):
                x = torch.rot90(im, turns, (2, 3))
                p = predict(images=x.flip(-1) if mirror else x)
                total = total + torch.rot90(p.flip(-1) if mirror else p, -turns, (2, 3))
        return total / 8
    return averaged


def trained_engine(name, image, painted, picks, args, k):
    """Start trained on one volume's painted slices, from ``--states`` when it was trained before."""
    import torch

    from napari_samatch.core.engine.persistence import load_state, state_payload

    engine = vc.engine_for(image, painted, picks, threads=args.threads, seed=args.seed, **vc.parse_set(args.set))
    # the overrides name the file too: a state trained with other settings is never reused
    overrides = "_" + hashlib.sha1(" ".join(sorted(args.set)).encode()).hexdigest()[:8] if args.set else ""
    path = Path(args.states) / f"{name}_k{k}_seed{args.seed}{overrides}.pt" if args.states else None
    if path is not None and path.exists():
        load_state(engine, torch.load(path, weights_only=False))
        return engine, None
    t0 = time.perf_counter()
    engine.run()
    train_s = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state_payload(engine), path)
    return engine, train_s


def score_variants(engine, labels, rest, variants=VARIANTS) -> dict[str, dict]:
    """Each variant's answer on the same weights, scored on the unpainted slices ``rest``."""
    from napari_samatch.core.engine import review
    from napari_samatch.core.prior.prior import NativePrior

    every, config = list(range(len(labels))), engine.config
    default_weight, default_predict, default_check = config.prior_weight, engine.predict, review.PRIOR_CHECK
    out = {}
    for tag in variants:
        key, _, value = tag.partition("=")
        decay = {key: float(value)} if key in ("slice_decay", "between_decay") else {}
        engine.native_prior = NativePrior(engine.data, config.num_classes, config.size, **decay)
        config.prior_weight = float(value) if key == "prior_weight" else default_weight
        engine.predict = dihedral_tta(engine) if key == "tta" else default_predict
        review.PRIOR_CHECK = default_check if key != "prior_check" else None if value == "off" else float(value)
        answer = engine.preview(every, native=True)
        out[tag] = {"answer": vc.scores(answer["refined"], labels, rest), "match": vc.scores(answer["raw"], labels, rest)}
    engine.native_prior = NativePrior(engine.data, config.num_classes, config.size)
    config.prior_weight, engine.predict, review.PRIOR_CHECK = default_weight, default_predict, default_check
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    vc.add_case_arguments(ap)
    ap.add_argument("--states", default="", help="a folder that keeps the trained engines between runs")
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS, metavar="VARIANT",
                    help=f"the answers to score (default: all of {', '.join(VARIANTS)})")
    ap.add_argument("--out", default=str(vc.RESULTS / "answer_variants.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for name, image, labels, k, picks, rest, painted in vc.painted_cases(args):
        engine, train_s = trained_engine(name, image, painted, picks, args, k)
        variants = score_variants(engine, labels, rest, args.variants)
        dice = {t: round(vc.mean_dice(v["answer"]), 4) for t, v in variants.items()}
        dice["oracle"] = max(dice.values())
        rows.append({"volume": name, "k": k, "train_s": train_s, "dice": dice, "variants": variants})
        print(json.dumps({"volume": name, "k": k, **dice}), flush=True)
    for k in args.k:
        mine = [r for r in rows if r["k"] == k]
        if mine:
            print(f"mean, k = {k}:", " ".join(f"{t} {np.mean([r['dice'][t] for r in mine]):.4f}"
                                              for t in [*args.variants, "oracle"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
