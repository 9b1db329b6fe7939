"""metrics.png: the per-epoch loss / accuracy plot drawn at the end of a run."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from recordkit_train.plot import PANEL_SIZE, plot_metrics, read_metrics


def test_plot_metrics_draws_both_panels(tmp_path):
    rows = [
        {
            "epoch": e,
            "train_loss": 2.3 - 0.4 * e,
            "val_top1": 10.0 + 30 * e,
            "val_top5": 50 + 20 * e,
        }
        for e in range(3)
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 3, "trun')
    assert len(read_metrics(path)) == 3  # a cut-short last line is skipped
    out = plot_metrics(path, tmp_path / "metrics.png")
    assert not list(tmp_path.glob(".metrics.png.*"))  # no temporary file left
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (2 * PANEL_SIZE[0], PANEL_SIZE[1])
        arr = np.asarray(im.convert("RGB")).astype(int)
    w = PANEL_SIZE[0]
    for panel in (arr[:, :w], arr[:, w:]):  # each panel has drawn, coloured pixels
        coloured = (panel.max(axis=2) - panel.min(axis=2)) > 60
        assert coloured.sum() > 100
