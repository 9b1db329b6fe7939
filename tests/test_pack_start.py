"""The packer's start: images are processed while the shards are planned, with the same bytes.

When the output directory holds nothing of the splits (no ``--part``; ``--overwrite`` or nothing
to resume), every entry is packed whatever the plan says, so :func:`recordkit.pack.pack` starts
on the images first and plans the shards (a ``stat`` of every file, the fingerprint) beside
them. These tests hold the plan back until an image has been processed, so that the overlap is
certain rather than timed, and compare the result with the plan made first.
"""

from __future__ import annotations

import threading

import pytest
from test_pack import bad_dataset, make_dataset, manifest_without_time, opts, shard_bytes

from recordkit.listing import make_lists
from recordkit.pack import PackError, pack
from recordkit.pack import core as pack_core
from recordkit.pack import lists as pack_lists
from recordkit.pack import prepare as pack_prepare


class Progress:
    """A progress callback that counts, and an event set by its first call."""

    def __init__(self) -> None:
        self.count = 0
        self.first = threading.Event()

    def __call__(self, done: int, total: int) -> None:
        self.count = done
        self.first.set()


def hold_plan_until_an_image(monkeypatch, progress: Progress, seen_at_plan: list[int]) -> None:
    """``plan_split`` waits (up to 30 s) for the first processed image, then records how many
    images the progress had counted when it returned."""
    real = pack_prepare.plan_split

    def plan_split(*args, **kwargs):
        progress.first.wait(30)
        plan = real(*args, **kwargs)
        seen_at_plan.append(progress.count)
        return plan

    monkeypatch.setattr(pack_prepare, "plan_split", plan_split)


def count_at_plan(monkeypatch, progress: Progress) -> list[int]:
    """Record, per ``plan_split`` call, how many images the progress had counted by then."""
    seen: list[int] = []
    real = pack_prepare.plan_split

    def plan_split(*args, **kwargs):
        seen.append(progress.count)
        return real(*args, **kwargs)

    monkeypatch.setattr(pack_prepare, "plan_split", plan_split)
    return seen


@pytest.mark.parametrize("pool", ["threads", "processes"])
@pytest.mark.parametrize("by", ["count", "bytes"])
def test_overlapped_plan_gives_the_same_bytes_as_planning_first(tmp_path, monkeypatch, pool, by):
    prefix, root, bad = bad_dataset(tmp_path, unreadable=False)
    (root / "c1" / "gone.jpg").write_bytes(b"")
    prefix.with_suffix(".lst").unlink()
    make_lists(prefix, root, recursive=True, train_ratio=0.7)  # two splits
    (root / "c1" / "gone.jpg").unlink()  # listed, then deleted
    sizes = {"shard_size": 3} if by == "count" else {"shard_bytes": 4000}
    common = dict(threads=2, pool=pool, img={"resize": 24}, **sizes)

    first = tmp_path / "first"
    with monkeypatch.context() as m:
        m.setattr(pack_core, "nothing_to_keep", lambda *a: False)  # the plan before any image
        progress = Progress()
        seen = count_at_plan(m, progress)
        pack(prefix, root, opts(first, **common), progress=progress)
        assert seen == [0, 0]  # train, val: planned before anything was processed

    overlapped = tmp_path / "overlapped"
    progress = Progress()
    seen = []
    hold_plan_until_an_image(monkeypatch, progress, seen)
    res = pack(prefix, root, opts(overlapped, **common), progress=progress)
    assert seen and seen[0] >= 1  # images were processed before the plan was made
    assert progress.count == res.images == 13  # one call per input, none twice
    assert shard_bytes(overlapped) == shard_bytes(first)
    assert manifest_without_time(overlapped) == manifest_without_time(first)
    assert {s["path"] for s in res.skipped} == set(bad)
    if by == "bytes":
        assert manifest_without_time(first)["splits"]["train"]["shards"][1:]  # several shards


def test_records_read_ahead_of_the_plan_are_bounded(tmp_path, monkeypatch):
    prefix, root = make_dataset(tmp_path, per_class=4)
    monkeypatch.setattr(pack_core, "_AHEAD_BYTES", 1)  # one record is already over
    progress = Progress()
    seen: list[int] = []
    hold_plan_until_an_image(monkeypatch, progress, seen)
    out = tmp_path / "s"
    pack(prefix, root, opts(out, threads=2, shard_size=5), progress=progress)
    assert seen == [1]  # the packer stopped reading after one record until the plan came
    serial = tmp_path / "serial"
    monkeypatch.setattr(pack_core, "nothing_to_keep", lambda *a: False)
    pack(prefix, root, opts(serial, threads=2, shard_size=5))
    assert shard_bytes(out) == shard_bytes(serial)


def test_resume_plans_first_and_keeps_finished_shards(tmp_path, monkeypatch):
    prefix, root = make_dataset(tmp_path, per_class=4)
    out = tmp_path / "s"
    full = tmp_path / "full"
    pack(prefix, root, opts(full, shard_size=4))

    def stop_after_9(done: int, total: int) -> None:
        if done >= 9:
            raise KeyboardInterrupt  # two shards finished, the third begun

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(
            pack_core, "nothing_to_keep", lambda *a: False
        )  # no image before the plan: certain
        pack(prefix, root, opts(out, shard_size=4), progress=stop_after_9)
    progress = Progress()
    seen = count_at_plan(monkeypatch, progress)
    res = pack(prefix, root, opts(out, shard_size=4, resume=True), progress=progress)
    assert seen == [0]  # planned before any image: the plan says what to keep
    assert res.splits["train"].shards_reused == 2 and res.images == 4, res
    assert shard_bytes(out) == shard_bytes(full)


def test_an_output_that_changes_while_planning_is_refused(tmp_path, monkeypatch):
    prefix, root = make_dataset(tmp_path, per_class=4)
    out = tmp_path / "s"
    real = pack_prepare.plan_split

    def plan_split(*args, **kwargs):  # another pack leaves a shard meanwhile
        out.mkdir(exist_ok=True)
        (out / "train-00000-of-00003.tfrecord.tmp").write_bytes(b"x")
        return real(*args, **kwargs)

    monkeypatch.setattr(pack_prepare, "plan_split", plan_split)
    with pytest.raises(PackError, match="holds an unfinished pack of split 'train'"):
        pack(prefix, root, opts(out, shard_size=4))
    assert not (out / "recordkit.json").exists()
    assert not list(out.glob("*.tfrecord"))


def test_split_labels_match_entry_labels(tmp_path):
    prefix, root = make_dataset(tmp_path, classes=3, per_class=3)
    splits = pack_lists.load_splits(pack_lists.find_lists(prefix, (), "train"))
    (s,) = splits
    want = [pack_lists.entry_labels(e, False, "x") for e in s.entries]
    assert pack_lists.split_labels(s, False) == want
    assert sorted({lab for (lab,) in want}) == [0, 1, 2]
    assert pack_lists.resolve_classes(splits, False) == (["c0", "c1", "c2"], True)


def test_a_plan_that_fails_after_images_started_writes_nothing(tmp_path, monkeypatch):
    prefix, root = make_dataset(tmp_path, per_class=4)
    lst = prefix.with_suffix(".lst")
    elsewhere = next(root.glob("c0/*")).resolve()
    lst.write_text(lst.read_text() + f"99\t0.000000\t{elsewhere}\n")  # absolute: outside ROOT
    progress = Progress()
    hold_plan_until_an_image(monkeypatch, progress, [])
    out = tmp_path / "s"
    with pytest.raises(PackError, match="outside ROOT"):
        pack(prefix, root, opts(out, shard_size=4, strict=True), progress=progress)
    assert progress.count >= 1  # images were under way when the plan refused
    assert not list(out.iterdir())  # no shard, no temporary, no manifest
