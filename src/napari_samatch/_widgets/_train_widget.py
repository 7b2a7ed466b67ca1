"""The Train dock: SAM backend, device, schedule; Start / Next round / Pause / Stop; live progress."""

from __future__ import annotations

from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ..core.config import PRESETS, RunConfig, from_dict, preset
from ..core.device import available_devices, device_summary
from ..core.engine import events as ev
from ..core.errors import SamatchError
from ._controller import get_controller
from ._notify import notify_error
from ._plots import CurvePlot

# (field, label, kind, min, max, step) for the advanced settings; kind 'i' int, 'f' float, 'c' choice
ADVANCED = [
    ("method", "Method", "c", ("samatch", "unimatch", "supervised"), None, None),
    ("warmup_method", "Warm-up method", "c", ("unimatch", "supervised"), None, None),
    ("warmup_iters", "Warm-up iterations", "i", 0, 1_000_000, 10),
    ("sam_iters", "SAM fine-tune iterations", "i", 0, 1_000_000, 10),
    ("joint_iters", "Joint iterations", "i", 0, 1_000_000, 10),
    ("size", "Image size", "i", 32, 1024, 16),
    ("batch_labeled", "Batch (labeled)", "i", 1, 256, 1),
    ("batch_unlabeled", "Batch (unlabeled)", "i", 1, 256, 1),
    ("sam_mode", "SAM fine-tuning", "c", ("decoder", "full"), None, None),
    ("lr", "Learning rate", "f", 1e-5, 1.0, 0.001),
    ("sam_lr", "SAM learning rate", "f", 1e-6, 1.0, 1e-5),
    ("prompt_thresh", "Prompt confidence (0 = argmax)", "f", 0.0, 0.99, 0.05),
    ("conf_thresh", "Loss confidence", "f", 0.05, 0.99, 0.01),
    ("bbox_shift", "Box margin (px)", "i", 0, 64, 1),
    ("points", "Positive points", "i", 0, 8, 1),
    ("negative_points", "Negative points", "i", 0, 8, 1),
    ("eval_every", "Validate every", "i", 0, 1_000_000, 10),
    ("checkpoint_every", "Checkpoint every", "i", 0, 1_000_000, 10),
    ("seed", "Seed", "i", 0, 2**31 - 1, 1),
]


class TrainWidget(QWidget):
    """Settings and run control; progress, curves and a log drawn from the engine's events."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.ctl = get_controller(napari_viewer)
        lay = QVBoxLayout(self)

        box = QGroupBox("Settings")
        form = QFormLayout(box)
        self.backend_combo = QComboBox()
        self.backend_combo.addItem("LiteMedSAM (bundled)", "litemedsam")
        self.backend_combo.addItem("SAM / MedSAM checkpoint", "sam")
        form.addRow("SAM backend", self.backend_combo)
        row = QHBoxLayout()
        self.ckpt_edit = QLineEdit()
        self.ckpt_edit.setPlaceholderText("sam_vit_b_01ec64.pth or medsam_vit_b.pth")
        self.ckpt_btn = QPushButton("Browse...")
        row.addWidget(self.ckpt_edit, 1)
        row.addWidget(self.ckpt_btn)
        self.ckpt_row = QWidget()
        self.ckpt_row.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        form.addRow("Checkpoint", self.ckpt_row)
        self.device_combo = QComboBox()
        have = available_devices()
        self.device_combo.addItem(f"auto ({have[0]})", "auto")
        for name in ("cuda", "mps", "cpu"):
            self.device_combo.addItem(name if name in have else f"{name} (not available)", name)
            if name not in have:
                self.device_combo.model().item(self.device_combo.count() - 1).setEnabled(False)
        self.device_combo.setToolTip(f"This machine: {device_summary()}")
        form.addRow("Device", self.device_combo)
        self.preset_combo = QComboBox()
        for name in PRESETS:
            self.preset_combo.addItem(name)
        self.preset_label = QLabel()
        self.preset_label.setWordWrap(True)
        form.addRow("Schedule", self.preset_combo)
        form.addRow("", self.preset_label)
        lay.addWidget(box)

        self.advanced = QCollapsible("Advanced settings")
        adv = QWidget()
        aform = QFormLayout(adv)
        self.fields: dict[str, QWidget] = {}
        for name, label, kind, lo, hi, step in ADVANCED:
            if kind == "c":
                w = QComboBox()
                w.addItems(list(lo))
            elif kind == "i":
                w = QSpinBox()
                w.setRange(lo, hi)
                w.setSingleStep(step)
            else:
                w = QDoubleSpinBox()
                w.setDecimals(6 if hi < 0.1 or lo < 1e-3 else 3)
                w.setRange(lo, hi)
                w.setSingleStep(step)
            self.fields[name] = w
            aform.addRow(label, w)
        self.val_spin = QSpinBox()
        self.val_spin.setRange(0, 100)
        self.val_spin.setToolTip("Labeled slices kept out of training to draw the validation Dice curve.")
        aform.addRow("Validation slices", self.val_spin)
        self.advanced.addWidget(adv)
        lay.addWidget(self.advanced)

        row = QHBoxLayout()
        self.start_btn = QPushButton("Start")
        self.start_btn.setToolTip("Train new models on the labeled slices.")
        self.next_btn = QPushButton("Next round")
        self.next_btn.setToolTip("Train again from the current models, with every labeled slice (accepted ones too).")
        self.pause_btn = QPushButton("Pause")
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setToolTip("Stop within one step; a checkpoint is saved.")
        for b in (self.start_btn, self.next_btn, self.pause_btn, self.stop_btn):
            row.addWidget(b)
        lay.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        lay.addWidget(self.progress)
        self.loss_plot = CurvePlot("Loss", log_y=True)
        self.loss_plot.placeholder = "Losses appear here while training."
        self.val_plot = CurvePlot("Validation Dice", y_range=(0.0, 1.0))
        self.val_plot.placeholder = ("No validation yet. Set 'Validation slices' in Advanced settings to hold out "
                                     "labeled slices and see a Dice curve.")
        lay.addWidget(self.loss_plot)
        lay.addWidget(self.val_plot)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(300)
        self.log.setMaximumHeight(110)
        lay.addWidget(self.log)
        row = QHBoxLayout()
        self.export_model_btn = QPushButton("Export model...")
        self.load_model_btn = QPushButton("Load model...")
        row.addWidget(self.export_model_btn)
        row.addWidget(self.load_model_btn)
        lay.addLayout(row)
        lay.addStretch(1)

        self.backend_combo.currentIndexChanged.connect(self._backend_changed)
        self.ckpt_btn.clicked.connect(self._browse_checkpoint)
        self.preset_combo.currentTextChanged.connect(self.apply_preset)
        for f in ("warmup_iters", "sam_iters", "joint_iters", "size"):
            self.fields[f].valueChanged.connect(self._show_schedule)
        self.start_btn.clicked.connect(lambda: self.start(fresh=True))
        self.next_btn.clicked.connect(lambda: self.start(fresh=False))
        self.pause_btn.clicked.connect(self._pause_resume)
        self.stop_btn.clicked.connect(self.ctl.stop)
        self.export_model_btn.clicked.connect(self._export_model)
        self.load_model_btn.clicked.connect(self._load_model)
        self.ctl.engine_event.connect(self.on_event)
        self.ctl.run_state_changed.connect(self._show_state)
        self.ctl.engine_changed.connect(self._engine_changed)
        self.ctl.message.connect(self.append_log)
        self.ctl.selection_changed.connect(self._restore_settings)
        self.apply_preset(self.preset_combo.currentText())
        self._backend_changed()
        self._restore_settings()
        self._show_state(self.ctl.state)

    # ------------------------------------------------------------------ settings
    def apply_preset(self, name: str) -> None:
        """Fill the advanced fields from a preset."""
        cfg = PRESETS[name]
        for field, w in self.fields.items():
            value = getattr(cfg, field)
            if isinstance(w, QComboBox):
                w.setCurrentText(str(value))
            else:
                w.setValue(value)
        self._show_schedule()

    def _show_schedule(self) -> None:
        """The schedule line under the preset: the iteration counts that will run, edits included."""
        n = {f: self.fields[f].value() for f in ("warmup_iters", "sam_iters", "joint_iters", "size")}
        edited = any(n[f] != getattr(PRESETS[self.preset_combo.currentText()], f) for f in n)
        self.preset_label.setText(f"{n['warmup_iters']} warm-up + {n['sam_iters']} SAM + {n['joint_iters']} joint "
                                  f"iterations at {n['size']} px{' (edited)' if edited else ''}.")

    def config(self) -> RunConfig:
        """The settings as a validated RunConfig (raises ConfigError with a sentence)."""
        values = {f: (w.currentText() if isinstance(w, QComboBox) else w.value()) for f, w in self.fields.items()}
        backend = self.backend_combo.currentData()
        ckpt = self.ckpt_edit.text().strip() or None
        if backend == "sam" and not ckpt:
            raise SamatchError("Choose a SAM or MedSAM checkpoint file (Browse...), or pick the bundled LiteMedSAM.")
        return preset(self.preset_combo.currentText(), **values, sam_backend=backend,
                      sam_checkpoint=ckpt if backend == "sam" else None, device=self.device_combo.currentData())

    def _remember(self, cfg: RunConfig) -> None:
        """What a run started with: the held-out slice count for the controller, the dock's settings for
        the session file."""
        self.ctl.val_slices = self.val_spin.value()
        self.ctl.sessions.settings = {**cfg.to_dict(), "preset": self.preset_combo.currentText(),
                                      "val_slices": self.val_spin.value()}

    def set_config(self, **values) -> None:
        """Set fields programmatically (tests, sessions): any advanced field, 'preset', 'device'."""
        if "preset" in values:
            self.preset_combo.setCurrentText(values.pop("preset"))
        if "device" in values:
            idx = self.device_combo.findData(values.pop("device"))
            if idx >= 0 and self.device_combo.model().item(idx).isEnabled():
                self.device_combo.setCurrentIndex(idx)
        if "val_slices" in values:
            self.val_spin.setValue(int(values.pop("val_slices")))
        backend, ckpt = values.pop("sam_backend", None), values.pop("sam_checkpoint", None)
        if backend:
            self.backend_combo.setCurrentIndex(self.backend_combo.findData(backend))
        if ckpt:
            self.ckpt_edit.setText(str(ckpt))
        unknown = sorted(set(values) - set(self.fields))
        if unknown:  # a silently ignored setting would train something other than what was asked
            raise ValueError(f"Unknown Train-dock setting(s) {', '.join(unknown)}; known: {', '.join(self.fields)}.")
        for field, value in values.items():
            w = self.fields[field]
            if isinstance(w, QComboBox):
                if w.findText(str(value)) < 0:
                    raise ValueError(f"{field} cannot be {value!r}; choose one of "
                                     f"{', '.join(w.itemText(i) for i in range(w.count()))}.")
                w.setCurrentText(str(value))
            else:
                w.setValue(value)

    def _restore_settings(self) -> None:
        saved = dict(self.ctl.sessions.settings)
        if not saved:
            return
        try:
            from_dict({k: v for k, v in saved.items() if k not in ("preset", "val_slices")})
        except SamatchError:
            return
        keep = {k: saved[k] for k in ("preset", "device", "val_slices", "sam_backend", "sam_checkpoint") if k in saved}
        self.set_config(**keep, **{k: saved[k] for k in self.fields if k in saved})

    def _backend_changed(self) -> None:
        self.ckpt_row.setEnabled(self.backend_combo.currentData() == "sam")

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "SAM or MedSAM checkpoint", "", "PyTorch weights (*.pth *.pt)")
        if path:
            self.ckpt_edit.setText(path)

    # ------------------------------------------------------------------ run control
    def start(self, fresh: bool = True) -> bool:
        try:
            cfg = self.config()
        except SamatchError as exc:
            notify_error(str(exc))
            return False
        self._remember(cfg)
        if fresh:
            self.loss_plot.clear()
            self.val_plot.clear()
        return self.ctl.start(cfg, fresh=fresh)

    def _pause_resume(self) -> None:
        if self.ctl.state == "paused":
            self.ctl.resume()
        else:
            self.ctl.pause()

    def _engine_changed(self) -> None:
        self._show_state(self.ctl.state)

    def _show_state(self, state: str) -> None:
        running = state in ("running", "paused", "stopping")
        self.start_btn.setEnabled(not running)
        self.next_btn.setEnabled(not running and self.ctl.engine is not None)
        self.pause_btn.setEnabled(state in ("running", "paused"))
        self.pause_btn.setText("Resume" if state == "paused" else "Pause")
        self.stop_btn.setEnabled(state in ("running", "paused"))
        self.export_model_btn.setEnabled(not running and self.ctl.engine is not None)
        self.load_model_btn.setEnabled(not running)
        if state == "paused":
            self.progress.setFormat("paused - %p%")
        elif state == "stopping":
            self.progress.setFormat("stopping...")
        elif state == "idle" and self.progress.format() in ("stopping...",):
            self.progress.setFormat("stopped")

    def append_log(self, line: str) -> None:
        self.log.appendPlainText(line)

    def on_event(self, e: ev.Event) -> None:
        """Draw one (already throttled) engine event; main thread."""
        if e.kind == ev.PROGRESS:
            self.progress.setRange(0, max(1, e.global_total))
            self.progress.setValue(e.global_iteration)
            state = "paused - " if self.ctl.state == "paused" else ""
            self.progress.setFormat(f"{state}{e.stage} {e.iteration}/{e.stage_total} - ETA {ev.format_eta(e.eta_s)}")
            for it, stage, losses in e.data.get("points", []):
                if stage == "sam":
                    self.loss_plot.add("SAM", it, losses.get("loss_sam_x", losses.get("loss")))
                else:
                    self.loss_plot.add("Match", it, losses.get("loss"))
                    if "loss_sam_x" in losses:
                        self.loss_plot.add("SAM", it, losses["loss_sam_x"])
            self.loss_plot.update()
        elif e.kind == ev.METRICS:
            d = e.data
            for key, name in (("val_mean_dice", "val Dice"), ("pseudo_raw_dice", "pseudo raw"),
                              ("pseudo_refined_dice", "pseudo SAM")):
                if d.get(key) is not None:
                    self.val_plot.add(name, e.global_iteration, d[key])
            self.val_plot.update()
            if d.get("val_mean_dice") is not None:
                self.append_log(f"[{e.stage} {e.iteration}] validation Dice {d['val_mean_dice']:.3f}")
        elif e.kind == ev.STAGE:
            self.append_log(e.message)
        elif e.kind in (ev.LOG, ev.PAUSED, ev.RESUMED, ev.STOPPED, ev.ERROR, ev.CHECKPOINT):
            self.append_log(e.message)
        elif e.kind == ev.DONE:
            self.progress.setValue(self.progress.maximum())
            self.progress.setFormat("done")
            self.append_log(f"{e.message} ({e.data.get('train_time_s', 0):.0f} s of training).")
        elif e.kind == ev.PSEUDO_LABELS:
            self.append_log(e.message or f"Pseudo-labels updated for {len(e.data.get('indices', []))} slices.")

    # ------------------------------------------------------------------ models
    def _export_model(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export the trained models", "samatch_model.pt",
                                              "napari-samatch model (*.pt)")
        if path:
            try:
                out = self.ctl.sessions.export_model(path)
                show_info(f"Models exported to {out}.")
            except SamatchError as exc:
                notify_error(str(exc))

    def _load_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load trained models", "", "napari-samatch model (*.pt)")
        if path:
            self.load_model(path)

    def load_model(self, path: str) -> bool:
        try:
            self.ctl.sessions.load_model(path, device=self.device_combo.currentData())
            return True
        except SamatchError as exc:
            notify_error(str(exc))
            return False



