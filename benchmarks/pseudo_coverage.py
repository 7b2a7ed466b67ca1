"""How much of the unlabeled slices teaches the Match model: UniMatch's own pseudo-labels against SAM's.

The unlabeled loss ignores pixels whose pseudo-label confidence is under ``conf_thresh`` (0.95). For a
Match model exported by ``benchmarks/acdc.py`` (``--models``) and the SAM of a SAM-Match export
(``--sam-from``), on the same unlabeled ACDC slices as the run (``--limit-unlabeled``, evenly spaced):
the share of true-foreground pixels that pass the threshold, how many of those are labeled right, and
the accuracy on all foreground pixels, for the Match model's own pseudo-label and for SAM's refinement.

    python benchmarks/pseudo_coverage.py --models R/unimatch.pt R/samatch-decoder.pt --sam-from R/samatch-decoder.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import _protocol as proto
from napari_samatch.core.checkpoint import load_checkpoint
from napari_samatch.core.config import from_dict
from napari_samatch.core.data import datasets
from napari_samatch.core.engine.engine import Engine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True, help="exported models whose Match model is scored")
    ap.add_argument("--sam-from", required=True, help="a SAM-Match export whose SAM refines")
    ap.add_argument("--data", default=str(proto.SHARED_DATA / "ACDC"))
    ap.add_argument("--labeled", type=int, default=68)
    ap.add_argument("--limit-unlabeled", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(proto.RESULTS / "pseudo_coverage.json"))
    args = ap.parse_args()

    full = datasets.ssl4mis_slices(args.data, labeled_count=args.labeled, lazy=True)
    unl_all = full.unlabeled_indices()
    data = full.subset(list(range(args.labeled)) + [unl_all[i] for i in proto.evenly_spaced(len(unl_all), args.limit_unlabeled)])
    sam_payload = load_checkpoint(args.sam_from)
    config = from_dict({**sam_payload["config"], "threads": args.threads, "eval_every": 0, "checkpoint_every": 0})
    engine = Engine(data, config)
    engine.sam.load_state_dict(sam_payload["sam"])
    unl = data.unlabeled_indices()
    hidden = data.subset(unl).hidden_tensor(config.size).long()
    fg = hidden > 0
    rows = []
    for path in args.models:
        engine.unet.load_state_dict(load_checkpoint(path)["unet"])
        with torch.no_grad():
            engine.sam.eval()
            probs = engine.predict(unl)
            refined = engine.refiner.refine(probs, unl, engine.images[unl])
        conf, own = probs.max(1)
        for kind, label, c in (("own", own, conf), ("sam", refined.labels, refined.confidence)):
            keep = c >= config.conf_thresh
            row = {"model": str(path), "pseudo_label": kind,
                   "fg_passing": float((keep & fg).sum() / fg.sum()),
                   "right_among_passing_fg": float((label[keep & fg] == hidden[keep & fg]).float().mean()),
                   "right_on_fg": float((label[fg] == hidden[fg]).float().mean())}
            rows.append(row)
            print(f"{Path(path).name:22s} {kind:4s} foreground passing {row['fg_passing']:.3f}, right among them "
                  f"{row['right_among_passing_fg']:.3f}, right on all foreground {row['right_on_fg']:.3f}", flush=True)
    proto.RESULTS.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"commit": proto.git_commit(), "sam_from": args.sam_from, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
