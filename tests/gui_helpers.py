"""Shared pieces of the GUI tests: a tiny SAM checkpoint, opening the docks, tiny run settings."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch

# A tiny run is seconds on a normal CI runner; a heavily shared machine needs far longer.
TIMEOUT_MS = int(float(os.environ.get("SAMATCH_GUI_TIMEOUT_S", "600")) * 1000)


def make_tiny_sam(path: Path) -> Path:
    """A randomly initialised 64-px segment-anything ViT: loads through the 'SAM checkpoint' backend in
    milliseconds, so the GUI tests exercise the real code path without LiteMedSAM's cost."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    sam = Sam(
        image_encoder=ImageEncoderViT(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                                      out_chans=32, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                      use_rel_pos=True, window_size=4, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(64, 64),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=32,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=8)),
    )
    torch.save(sam.state_dict(), path)
    return path


def tiny_settings(sam_path: Path, **kw) -> dict:
    """Train-dock settings for a run of a few steps at 64 px with the tiny SAM."""
    base = dict(preset="quick", size=64, warmup_iters=3, sam_iters=1, joint_iters=2, batch_labeled=2,
                batch_unlabeled=2, eval_every=0, checkpoint_every=0, device="cpu", sam_backend="sam",
                sam_checkpoint=str(sam_path), prompt_thresh=0.3, val_slices=0)
    base.update(kw)
    return base


def add_sample(viewer) -> None:
    from napari_samatch._sample_data import make_sample_data

    for data, kwargs, kind in make_sample_data():
        getattr(viewer, f"add_{kind}")(data, **kwargs)


def open_docks(viewer):
    """The three docks through the plugin's manifest (as the Plugins menu opens them)."""
    docks = []
    for name in ("Data", "Train", "Review"):
        _, widget = viewer.window.add_plugin_dock_widget("napari-samatch", name)
        docks.append(widget)
    return docks


def wait_idle(qtbot, ctl, timeout: int = TIMEOUT_MS) -> None:
    qtbot.waitUntil(lambda: ctl.job is None and ctl.state == "idle", timeout=timeout)


def heartbeat(qtbot, until, timeout_ms: int) -> list[float]:
    """Gaps (ms) between ticks of a 10 ms QTimer on the main thread while ``until()`` is false."""
    import time

    from qtpy.QtCore import QTimer

    gaps, last = [], [time.perf_counter()]

    def beat():
        now = time.perf_counter()
        gaps.append((now - last[0]) * 1e3)
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(beat)
    timer.start()
    try:
        qtbot.waitUntil(until, timeout=timeout_ms)
    finally:
        timer.stop()
    return gaps


class MachineLoad:
    """How busy the machine was between ``__init__`` and ``quiet()``: the load average (others' jobs) and the
    hypervisor's steal time (a VM waiting for its host's CPUs, which no load average shows). Stall bounds are
    asserted only on a quiet machine: on 2026-12-03 a cohort switch that stalls 32-63 ms here stalled 127 and
    153 ms in two CI runs while the load average said the machine was idle."""

    def __init__(self) -> None:
        self.loads = [os.getloadavg()[0]]
        self._start = self._ticks()

    @staticmethod
    def _ticks() -> tuple[int, int]:
        """(steal, total) CPU ticks since boot from /proc/stat; (0, 0) where there is none."""
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return 0, 0
        return (fields[7] if len(fields) > 7 else 0), sum(fields)

    def steal_share(self) -> float:
        (s0, t0), (s1, t1) = self._start, self._ticks()
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def quiet(self, idle_stall_ms: float) -> bool:
        """True where an idle Qt timer stalled under 50 ms, the load stayed under the core count and the host
        took under 2 % of the CPU time."""
        self.loads.append(os.getloadavg()[0])
        return idle_stall_ms < 50 and max(self.loads) < (os.cpu_count() or 1) and self.steal_share() < 0.02

    def __str__(self) -> str:
        return f"load {max(self.loads):.1f} on {os.cpu_count()} cores, steal {100 * self.steal_share():.1f} %"
