"""A tiny line-plot widget drawn with QPainter (no matplotlib): live loss and Dice curves."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

PALETTE = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176"]
MAX_POINTS = 2000  # older points are thinned so painting stays cheap on long runs


class CurvePlot(QWidget):
    """Named series of (x, y) points; y range fixed (``y_range``) or fitted to the data."""

    def __init__(self, title: str, y_range: tuple[float, float] | None = None, log_y: bool = False,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.y_range = y_range
        self.log_y = log_y
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.placeholder = ""
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def add(self, name: str, x: float, y: float) -> None:
        """Append one point (NaN/inf are skipped); the caller decides when to repaint (``update``)."""
        if y is None or not math.isfinite(y) or (self.log_y and y <= 0):
            return
        pts = self.series.setdefault(name, [])
        pts.append((float(x), float(y)))
        if len(pts) > MAX_POINTS:
            del pts[1:len(pts) // 2:2]  # keep the first point, thin the older half

    def _ty(self, y: float) -> float:
        return math.log10(y) if self.log_y else y

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor("#262930"))
        font = QFont(p.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1))
        p.setFont(font)
        p.setPen(QColor("#d0d0d0"))
        p.drawText(QRectF(6, 2, w - 12, 16), Qt.AlignmentFlag.AlignLeft, self.title)
        plot = QRectF(42, 20, max(10, w - 52), max(10, h - 40))
        p.setPen(QPen(QColor("#5a5f6a"), 1))
        p.drawRect(plot)
        pts_all = [pt for s in self.series.values() for pt in s]
        if not pts_all:
            if self.placeholder:
                p.setPen(QColor("#9a9a9a"))
                p.drawText(plot, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder)
            p.end()
            return
        xs = [x for x, _ in pts_all]
        x0, x1 = min(xs), max(xs)
        if self.y_range:
            y0, y1 = self.y_range
        else:
            ys = [self._ty(y) for _, y in pts_all]
            y0, y1 = min(ys), max(ys)
            pad = (y1 - y0) * 0.08 or 0.5
            y0, y1 = y0 - pad, y1 + pad
        x1 = x1 if x1 > x0 else x0 + 1

        def to_px(x: float, y: float) -> QPointF:
            return QPointF(plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                           plot.bottom() - (self._ty(y) - y0) / (y1 - y0) * plot.height())

        p.setPen(QColor("#9a9a9a"))
        fmt = (lambda v: f"{10 ** v:.2g}") if self.log_y else (lambda v: f"{v:.2g}")
        p.drawText(QRectF(0, plot.top() - 6, 40, 14), Qt.AlignmentFlag.AlignRight, fmt(y1))
        p.drawText(QRectF(0, plot.bottom() - 8, 40, 14), Qt.AlignmentFlag.AlignRight, fmt(y0))
        p.drawText(QRectF(plot.left(), plot.bottom() + 2, 80, 14), Qt.AlignmentFlag.AlignLeft, f"{int(x0)}")
        p.drawText(QRectF(plot.right() - 80, plot.bottom() + 2, 80, 14), Qt.AlignmentFlag.AlignRight, f"{int(x1)}")
        lx = plot.left() + 6
        for k, (name, pts) in enumerate(self.series.items()):
            colour = QColor(PALETTE[k % len(PALETTE)])
            p.setPen(QPen(colour, 1.6))
            if len(pts) == 1:
                p.drawEllipse(to_px(*pts[0]), 2.5, 2.5)
            else:
                path = QPainterPath(to_px(*pts[0]))
                for pt in pts[1:]:
                    path.lineTo(to_px(*pt))
                p.drawPath(path)
            label = f"{name} {pts[-1][1]:.3g}"
            p.drawText(QRectF(lx, plot.top() + 2, 200, 14), Qt.AlignmentFlag.AlignLeft, label)
            lx += p.fontMetrics().horizontalAdvance(label) + 12
        p.end()
