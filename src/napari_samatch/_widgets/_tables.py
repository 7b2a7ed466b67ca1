"""The docks' read-only lists: one row per item, one row selected at a time, nothing edited in place."""

from __future__ import annotations

from typing import Sequence

from qtpy.QtWidgets import QAbstractItemView, QTableWidget


def row_table(columns: Sequence[str], tooltip: str) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.setToolTip(tooltip)
    return table
