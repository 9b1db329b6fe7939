"""`make demo`'s data path end to end, small: draw → list → pack → verify → inspect → open."""

from __future__ import annotations

from collections import Counter

import recordkit
from recordkit.demo import SHAPES, main, make_shapes


def test_make_shapes_is_deterministic(tmp_path):
    a = make_shapes(tmp_path / "a", per_class=2, size=32, seed=3)
    b = make_shapes(tmp_path / "b", per_class=2, size=32, seed=3)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    assert len(a) == 2 * len(SHAPES)


def test_demo_runs_the_data_path(tmp_path, capsys):
    assert main([str(tmp_path / "work"), "--per-class", "6", "--size", "48"]) == 0
    out = capsys.readouterr().out
    assert "$ recordkit pack" in out and "demo finished" in out
    ds = recordkit.open(tmp_path / "work" / "shards")
    assert ds.classes == sorted(SHAPES)  # im2rec labels follow the sorted walk
    assert len(ds["train"]) + len(ds["val"]) == 6 * len(SHAPES)
    labels = Counter(r.label for split in ds.values() for r in split)
    assert labels == Counter({k: 6 for k in range(len(SHAPES))})
    for rec in ds["val"]:
        assert rec.filename.split("/")[0] == ds.classes[rec.label]
        assert (rec.width, rec.height) == (48, 48)  # no upscaling to --resize 64
    assert recordkit.verify(tmp_path / "work" / "shards").ok
