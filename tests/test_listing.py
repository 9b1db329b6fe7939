"""Tests for recordkit.listing: byte-for-byte parity with MXNet ``im2rec.py --list``."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from recordkit import listing
from recordkit.listing import (
    DEFAULT_EXTS,
    ListEntry,
    ListError,
    ListResult,
    classes_from_lists,
    format_class_table,
    list_images,
    make_lists,
    normalize_exts,
    read_list,
    write_list,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# Reference: a literal transcription of im2rec's list_image / write_list / make_list, with the
# one documented change that the suffix check lower-cases the configured extensions too.
# (printf-style formatting kept verbatim, hence the noqa: UP031 markers.)


def _ref_list_image(root, recursive, exts):
    exts = {e.lower() for e in exts}
    i = 0
    if recursive:
        cat = {}
        for path, dirs, files in os.walk(root, followlinks=True):
            dirs.sort()
            files.sort()
            for fname in files:
                fpath = os.path.join(path, fname)
                suffix = os.path.splitext(fname)[1].lower()
                if os.path.isfile(fpath) and (suffix in exts):
                    if path not in cat:
                        cat[path] = len(cat)
                    yield (i, os.path.relpath(fpath, root), cat[path])
                    i += 1
    else:
        for fname in sorted(os.listdir(root)):
            fpath = os.path.join(root, fname)
            suffix = os.path.splitext(fname)[1].lower()
            if os.path.isfile(fpath) and (suffix in exts):
                yield (i, os.path.relpath(fpath, root), 0)
                i += 1


def _ref_write_list(path_out, image_list):
    with open(path_out, "w", newline="\n") as fout:
        for _i, item in enumerate(image_list):
            line = "%d\t" % item[0]  # noqa: UP031
            for j in item[2:]:
                line += "%f\t" % j  # noqa: UP031
            line += "%s\n" % item[1]  # noqa: UP031
            fout.write(line)


def _ref_make_list(prefix, root, recursive, exts, train_ratio, test_ratio, chunks, shuffle):
    image_list = list(_ref_list_image(root, recursive, exts))
    if shuffle is True:
        state = random.getstate()
        try:
            random.seed(100)
            random.shuffle(image_list)
        finally:
            random.setstate(state)
    N = len(image_list)
    chunk_size = (N + chunks - 1) // chunks
    for i in range(chunks):
        chunk = image_list[i * chunk_size : (i + 1) * chunk_size]
        str_chunk = "_%d" % i if chunks > 1 else ""  # noqa: UP031
        sep = int(chunk_size * train_ratio)
        sep_test = int(chunk_size * test_ratio)
        if train_ratio == 1.0:
            _ref_write_list(prefix + str_chunk + ".lst", chunk)
        else:
            if test_ratio:
                _ref_write_list(prefix + str_chunk + "_test.lst", chunk[:sep_test])
            if train_ratio + test_ratio < 1.0:
                _ref_write_list(prefix + str_chunk + "_val.lst", chunk[sep_test + sep :])
            _ref_write_list(prefix + str_chunk + "_train.lst", chunk[sep_test : sep_test + sep])


# --------------------------------------------------------------------------------------------
# Fixtures


def _touch(path: Path, data: bytes = b"\xff\xd8img") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _try_symlink(target: Path, link: Path, target_is_directory: bool = False) -> bool:
    try:
        os.symlink(target, link, target_is_directory=target_is_directory)
    except (OSError, NotImplementedError):
        return False
    return True


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A small image folder with nested classes, mixed-case extensions and decoys."""
    root = tmp_path / "root"
    for rel in [
        "b/x.JPG",
        "b/y.jpg",
        "b/z.Png",
        "a/1.jpg",
        "a/4.JPEG",
        "a/sub/2.png",
        "a/sub/deeper/3.jpeg",
        "a/sub/deeper/5.jpg",
        "B_upper/q.jpg",  # sorts before "a" (code point order)
        "top.PNG",
        "top2.jpg",
        ".hidden.jpg",  # splitext -> ".jpg": an image
        "fake.jpg/inner.png",  # a directory named like an image
    ]:
        _touch(root / rel)
    for rel in ["c/readme.txt", "c/notes.JPEG.bak", ".jpg", "a/sub/data.gif"]:
        _touch(root / rel, b"not an image")
    (root / "empty").mkdir()
    (root / "empty_nested" / "deeper").mkdir(parents=True)
    external = tmp_path / "external"
    _touch(external / "e1.jpg")
    _touch(external / "e2.PNG")
    _touch(external / "e3.txt")
    # Symlinks (skipped silently where the platform does not allow them).
    _try_symlink(external, root / "zlink", target_is_directory=True)
    _try_symlink(tmp_path / "does-not-exist.jpg", root / "broken.jpg")
    _try_symlink(root / "top.PNG", root / "b" / "alias.jpg")
    return root


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    (d / "ours").mkdir(parents=True)
    (d / "ref").mkdir(parents=True)
    return d


def _lst_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --------------------------------------------------------------------------------------------
# Byte-for-byte parity with im2rec

PARITY_CASES = {
    "ratio1": dict(recursive=True),
    "train095": dict(recursive=True, train_ratio=0.95),
    "train06_test02": dict(recursive=True, train_ratio=0.6, test_ratio=0.2),
    "train08_test02": dict(recursive=True, train_ratio=0.8, test_ratio=0.2),
    "train0": dict(recursive=True, train_ratio=0.0),
    "chunks2": dict(recursive=True, chunks=2),
    "chunks2_split": dict(recursive=True, chunks=2, train_ratio=0.6, test_ratio=0.2),
    "chunks3_split": dict(recursive=True, chunks=3, train_ratio=0.7),
    "chunks_gt_n": dict(recursive=True, chunks=40),
    "no_shuffle": dict(recursive=True, shuffle=False),
    "no_shuffle_split": dict(recursive=True, shuffle=False, train_ratio=0.5, test_ratio=0.25),
    "flat": dict(recursive=False),
    "flat_split": dict(recursive=False, train_ratio=0.5),
    "exts_custom": dict(recursive=True, exts=["JPG", ".png"]),
}


@pytest.mark.parametrize("case", list(PARITY_CASES), ids=list(PARITY_CASES))
def test_make_lists_matches_im2rec(tree: Path, out: Path, case: str) -> None:
    opts = dict(
        recursive=False,
        exts=DEFAULT_EXTS,
        train_ratio=1.0,
        test_ratio=0.0,
        chunks=1,
        shuffle=True,
    )
    opts.update(PARITY_CASES[case])
    ref_exts = [e if e.startswith(".") else "." + e for e in opts["exts"]]
    _ref_make_list(
        str(out / "ref" / "data"),
        str(tree),
        opts["recursive"],
        ref_exts,
        opts["train_ratio"],
        opts["test_ratio"],
        opts["chunks"],
        opts["shuffle"],
    )
    result = make_lists(out / "ours" / "data", tree, **opts)

    ours, ref = _lst_files(out / "ours"), _lst_files(out / "ref")
    assert sorted(ours) == sorted(ref)  # same file names, no stray temp files
    for name in ref:
        assert ours[name] == ref[name], name
    assert any(ref.values())

    # ListResult agrees with the files on disk.
    assert isinstance(result, ListResult)
    assert sorted(p.name for p in result.files.values()) == sorted(ref)
    for key, path in result.files.items():
        assert path.parent == out / "ours"
        assert result.counts[key] == ref[path.name].count(b"\n")
    assert result.num_images == len(list(_ref_list_image(str(tree), opts["recursive"], ref_exts)))


def test_parity_tree_exercises_the_interesting_cases(tree: Path) -> None:
    entries, classes = list_images(tree, recursive=True)
    paths = {e.path for e in entries}
    sep = os.sep
    assert f"b{sep}x.JPG" in paths and f"b{sep}z.Png" in paths  # case-insensitive
    assert f"a{sep}sub{sep}deeper{sep}3.jpeg" in paths
    assert ".hidden.jpg" in paths and ".jpg" not in paths
    assert f"fake.jpg{sep}inner.png" in paths and "fake.jpg" not in paths
    assert not any(p.startswith("c" + sep) for p in paths)
    assert f"a{sep}sub{sep}data.gif" not in paths
    assert classes[:4] == [".", "B_upper", "a", os.path.join("a", "sub")]
    assert "empty" not in classes and "c" not in classes
    if (tree / "zlink").is_symlink():
        assert f"zlink{sep}e1.jpg" in paths and f"zlink{sep}e2.PNG" in paths
        assert classes[-1] == "zlink"
    if (tree / "broken.jpg").is_symlink():
        assert "broken.jpg" not in paths
    if (tree / "b" / "alias.jpg").is_symlink():
        assert f"b{sep}alias.jpg" in paths
    # Indices follow walk order; labels follow first appearance of the directory.
    assert [e.index for e in entries] == list(range(len(entries)))
    for e in entries:
        assert classes[int(e.label)] == (os.path.dirname(e.path) or ".")


def test_list_images_flat(tree: Path) -> None:
    entries, classes = list_images(tree)
    assert classes == ["."]
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    assert {e.path for e in entries} >= {".hidden.jpg", "top.PNG", "top2.jpg"}
    assert all(e.labels == (0.0,) for e in entries)


def test_random_instance_matches_global_seed_shuffle() -> None:
    state = random.getstate()
    try:
        for n in [0, 1, 2, 5, 13, 100, 1000]:
            expected = list(range(n))
            random.seed(100)
            random.shuffle(expected)
            got = list(range(n))
            random.Random(100).shuffle(got)
            assert got == expected, n
    finally:
        random.setstate(state)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7, 8, 9, 255, 256, 257, 1023, 1024, 1025, 70001])
def test_inlined_shuffle_is_randoms_shuffle(n: int, monkeypatch) -> None:
    expected = list(range(n))
    random.Random(100).shuffle(expected)
    got = list(range(n))
    listing._shuffle_inline(got, random.Random(100))
    assert got == expected
    got = list(range(n))
    listing._im2rec_shuffle(got)
    assert got == expected
    # a Python whose shuffle differed would be caught and served by random.shuffle itself
    monkeypatch.setattr(listing, "_inline_shuffle_ok", None)
    monkeypatch.setattr(listing, "_shuffle_inline", lambda x, rng: x.reverse())
    got = list(range(n))
    listing._im2rec_shuffle(got)
    assert got == expected and listing._inline_shuffle_ok is False


def test_make_lists_leaves_global_random_state_alone(tree: Path, out: Path) -> None:
    random.seed(12345)
    before = random.getstate()
    make_lists(out / "ours" / "data", tree, recursive=True)
    assert random.getstate() == before


def test_result_keys_and_classes(tree: Path, out: Path) -> None:
    prefix = out / "ours" / "data"
    res = make_lists(prefix, tree, recursive=True)
    assert list(res.files) == ["all"]
    assert res.files["all"] == Path(str(prefix) + ".lst")
    assert res.counts["all"] == res.num_images

    res = make_lists(prefix, tree, recursive=True, train_ratio=0.6, test_ratio=0.2)
    assert list(res.files) == ["test", "val", "train"]
    assert res.files["val"].name == "data_val.lst"
    assert sum(res.counts.values()) <= res.num_images

    res = make_lists(prefix, tree, recursive=True, chunks=2, train_ratio=0.9)
    assert list(res.files) == ["0_val", "0_train", "1_val", "1_train"]
    assert res.files["1_train"].name == "data_1_train.lst"

    res = make_lists(prefix, tree, recursive=True, chunks=2)
    assert list(res.files) == ["0_all", "1_all"]
    assert res.files["0_all"].name == "data_0.lst"
    assert sum(res.counts.values()) == res.num_images
    assert res.classes == list_images(tree, recursive=True)[1]


def test_make_lists_str_prefix_and_exts_string(tree: Path, out: Path) -> None:
    res = make_lists(str(out / "ours" / "d"), str(tree), exts="png, .JPEG")
    got = read_list(res.files["all"])
    assert {e.path for e in got} == {"top.PNG"}


def test_normalize_exts() -> None:
    assert normalize_exts(["JPG", ".Png", ".jpg"]) == (".jpg", ".png")
    assert normalize_exts(".jpeg,.jpg,.png") == DEFAULT_EXTS
    with pytest.raises(ListError):
        normalize_exts([])
    with pytest.raises(ListError):
        normalize_exts(" , ")


def test_symlink_cycle_terminates(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch(root / "a" / "1.jpg")
    _touch(root / "a" / "sub" / "2.jpg")
    if not _try_symlink(root / "a", root / "a" / "sub" / "loop", target_is_directory=True):
        pytest.skip("symlinks not supported")
    _try_symlink(root, root / "self", target_is_directory=True)
    entries, classes = list_images(root, recursive=True)
    assert [e.path for e in entries] == [
        os.path.join("a", "1.jpg"),
        os.path.join("a", "sub", "2.jpg"),
    ]
    assert classes == ["a", os.path.join("a", "sub")]


# --------------------------------------------------------------------------------------------
# write_list / read_list


def test_write_read_roundtrip_multilabel(tmp_path: Path) -> None:
    entries = [
        ListEntry(0, (1.0,), "a/x.jpg"),
        ListEntry(7, (2.5, 0.25, 3.0), "b/sub/y z.png"),
        ListEntry(3, (0.0, 1.0), "top.jpg"),
    ]
    path = tmp_path / "multi.lst"
    write_list(path, entries)
    assert path.read_bytes() == (
        b"0\t1.000000\ta/x.jpg\n"
        b"7\t2.500000\t0.250000\t3.000000\tb/sub/y z.png\n"
        b"3\t0.000000\t1.000000\ttop.jpg\n"
    )
    assert read_list(path) == entries
    assert read_list(path)[1].label == 2.5
    assert [p.name for p in tmp_path.iterdir()] == ["multi.lst"]  # no temp file left


def test_write_list_from_generator_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "g.lst"
    path.write_text("old contents\n")
    write_list(path, (ListEntry(i, (float(i),), f"{i}.jpg") for i in range(3)))
    assert [e.index for e in read_list(path)] == [0, 1, 2]


def test_read_list_crlf_blank_lines_and_trailing_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "win.lst"
    path.write_bytes(
        b"\xef\xbb\xbf0\t1.000000\ta/x.jpg\r\n"
        b"\r\n"
        b"   \n"
        b"1\t2.000000\t3.500000\tb/y.jpg   \t\r\n"
        b"2\t0\tc/z.png"
    )
    assert read_list(path) == [
        ListEntry(0, (1.0,), "a/x.jpg"),
        ListEntry(1, (2.0, 3.5), "b/y.jpg"),
        ListEntry(2, (0.0,), "c/z.png"),
    ]


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        ("3\ta/x.jpg", "at least 3"),
        ("x\t1.000000\ta/x.jpg", "index"),
        ("3\tone\ta/x.jpg", "label"),
        ("3.0\t1.000000\ta/x.jpg", "index"),
        ("3\t1.000000\t", "at least 3"),
    ],
)
def test_read_list_malformed_line_names_file_and_line(
    tmp_path: Path, bad_line: str, reason: str
) -> None:
    path = tmp_path / "bad.lst"
    path.write_text(f"0\t1.000000\ta/ok.jpg\n\n{bad_line}\n1\t1.000000\ta/ok2.jpg\n")
    with pytest.raises(ListError, match=reason) as info:
        read_list(path)
    msg = str(info.value)
    assert str(path) in msg and "line 3" in msg
    assert "\n" not in msg


def test_read_list_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ListError, match="cannot read"):
        read_list(tmp_path / "nope.lst")


@pytest.mark.parametrize("path", ["a\tb.jpg", "a\nb.jpg", "a\rb.jpg", ""])
def test_write_list_rejects_unrepresentable_paths(tmp_path: Path, path: str) -> None:
    dest = tmp_path / "x.lst"
    dest.write_text("keep\n")
    with pytest.raises(ListError):
        write_list(dest, [ListEntry(0, (0.0,), "ok.jpg"), ListEntry(1, (0.0,), path)])
    assert dest.read_text() == "keep\n"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["x.lst"]


def test_write_list_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ListError, match="does not exist"):
        write_list(tmp_path / "nope" / "x.lst", [ListEntry(0, (0.0,), "a.jpg")])


def test_list_entry() -> None:
    e = ListEntry(4, (3.0, 1.0), "a/b.jpg")
    assert e.label == 3.0
    with pytest.raises(ListError):
        ListEntry(0, (), "a.jpg")


# --------------------------------------------------------------------------------------------
# classes_from_lists


def test_classes_from_lists_recovers_recursive_names(tree: Path, out: Path) -> None:
    res = make_lists(out / "ours" / "data", tree, recursive=True, train_ratio=0.5)
    # Train alone may miss classes; train + val together cover them all.
    entries = read_list(res.files["train"]) + read_list(res.files["val"])
    names = classes_from_lists(entries)
    assert names == res.classes
    assert os.path.join("a", "sub") in names
    assert os.path.join("a", "sub", "deeper") in names
    assert names[0] == "."  # images directly in root


def test_classes_from_lists_slash_separators_and_root() -> None:
    entries = [
        ListEntry(0, (1.0,), "a/sub/x.jpg"),
        ListEntry(1, (0.0,), "top.jpg"),
        ListEntry(2, (1.0,), "a/sub/y.jpg"),
        ListEntry(3, (2.0, 9.5), "b/z.jpg"),  # only the first label counts
    ]
    assert classes_from_lists(entries) == [".", os.path.join("a", "sub"), "b"]
    assert classes_from_lists([]) == []


def test_classes_from_lists_flat_list(tree: Path, out: Path) -> None:
    res = make_lists(out / "ours" / "flat", tree)
    assert classes_from_lists(read_list(res.files["all"])) == ["."]


def test_classes_from_lists_ambiguous_label() -> None:
    entries = [ListEntry(0, (0.0,), "a/x.jpg"), ListEntry(1, (0.0,), "b/y.jpg")]
    with pytest.raises(ListError, match=r"label 0 maps to several directories \(a, b\)"):
        classes_from_lists(entries)


def test_classes_from_lists_missing_label() -> None:
    entries = [ListEntry(0, (0.0,), "a/x.jpg"), ListEntry(1, (2.0,), "c/y.jpg")]
    with pytest.raises(ListError, match="label 1 has no entries"):
        classes_from_lists(entries)


def test_classes_from_lists_directory_with_two_labels() -> None:
    entries = [ListEntry(0, (0.0,), "a/x.jpg"), ListEntry(1, (1.0,), "a/y.jpg")]
    with pytest.raises(ListError, match="holds labels 0 and 1"):
        classes_from_lists(entries)


@pytest.mark.parametrize("label", [1.5, -1.0, float("nan")])
def test_classes_from_lists_non_integral_label(label: float) -> None:
    with pytest.raises(ListError, match="not a non-negative integer"):
        classes_from_lists([ListEntry(0, (label,), "a/x.jpg")])


# --------------------------------------------------------------------------------------------
# Validation errors


def _assert_one_line(err: pytest.ExceptionInfo[ListError]) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def test_error_root_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ListError) as err:
        make_lists(tmp_path / "data", missing)
    assert _assert_one_line(err) == f"ROOT does not exist: {missing}"
    with pytest.raises(ListError, match="ROOT does not exist"):
        list_images(missing, recursive=True)


def test_error_root_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file.jpg"
    _touch(f)
    with pytest.raises(ListError) as err:
        make_lists(tmp_path / "data", f)
    assert _assert_one_line(err) == f"not a directory: {f}"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train_ratio=1.5), "--train-ratio must be in [0, 1], got 1.5"),
        (dict(train_ratio=-0.1), "--train-ratio must be in [0, 1], got -0.1"),
        (dict(train_ratio=0.5, test_ratio=1.2), "--test-ratio must be in [0, 1], got 1.2"),
        (dict(train_ratio=float("nan")), "--train-ratio must be in [0, 1], got nan"),
        (
            dict(train_ratio=0.9, test_ratio=0.2),
            "--train-ratio + --test-ratio must not exceed 1 (got 0.9 + 0.2)",
        ),
        (
            dict(train_ratio=1.0, test_ratio=0.1),
            "--train-ratio + --test-ratio must not exceed 1 (got 1.0 + 0.1)",
        ),
        (dict(chunks=0), "--chunks must be at least 1, got 0"),
        (dict(chunks=-3), "--chunks must be at least 1, got -3"),
        (dict(chunks=1.5), "--chunks must be an integer, got 1.5"),
    ],
)
def test_error_bad_options(tree: Path, out: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ListError) as err:
        make_lists(out / "ours" / "data", tree, recursive=True, **kwargs)
    assert _assert_one_line(err) == message
    assert not list((out / "ours").iterdir())


def test_ratios_summing_to_one_are_fine(tree: Path, out: Path) -> None:
    res = make_lists(out / "ours" / "data", tree, recursive=True, train_ratio=0.7, test_ratio=0.3)
    assert "test" in res.files and "train" in res.files


def test_error_no_images_recursive(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch(root / "c" / "readme.txt")
    with pytest.raises(ListError) as err:
        make_lists(tmp_path / "data", root, recursive=True)
    msg = _assert_one_line(err)
    assert msg == f"no images found under {root} with extensions .jpeg,.jpg,.png"
    assert not list(tmp_path.glob("*.lst"))


def test_error_no_images_flat_mentions_recursive(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch(root / "a" / "1.jpg")
    with pytest.raises(ListError) as err:
        make_lists(tmp_path / "data", root)
    msg = _assert_one_line(err)
    assert msg.startswith(f"no images found under {root} with extensions .jpeg,.jpg,.png")
    assert "--recursive" in msg


def test_error_no_images_flat_without_subdirs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch(root / "notes.txt")
    with pytest.raises(ListError) as err:
        make_lists(tmp_path / "data", root, exts=["gif"])
    msg = _assert_one_line(err)
    assert msg == f"no images found under {root} with extensions .gif"


def test_error_output_directory_missing(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ListError, match="output directory does not exist"):
        make_lists(tmp_path / "nope" / "data", tree)


def test_list_images_empty_returns_empty(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    assert list_images(tmp_path / "r") == ([], [])
    assert list_images(tmp_path / "r", recursive=True) == ([], [])


# --------------------------------------------------------------------------------------------
# Class table and import hygiene


def test_format_class_table(tree: Path) -> None:
    assert format_class_table([]) == ""
    assert format_class_table([".", "a", os.path.join("a", "sub")]) == (
        f". 0\na 1\n{os.path.join('a', 'sub')} 2"
    )
    _, classes = list_images(tree, recursive=True)
    lines = format_class_table(classes).splitlines()
    assert len(lines) == len(classes)
    assert lines[2] == "a 2"


def test_import_is_light() -> None:
    code = (
        "import sys\n"
        "import recordkit.listing\n"
        "heavy = {'numpy', 'PIL', 'torch', 'cv2'} & {m.split('.')[0] for m in sys.modules}\n"
        "print(','.join(sorted(heavy)))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO_ROOT),
        check=True,
    )
    assert proc.stdout.strip() == ""


@pytest.mark.parametrize(
    "line",
    [
        "4519\t0.000000\tc0/045190.png",
        " 7 \t 2.5 \t a b.jpg \r",
        "7\t1_0\tx.jpg",
        "\u20037\t1e3\tx.jpg\x0b",
        "99999999999999999999\t1\tx.jpg",
        "-9223372036854775808\t1\tx.jpg",
        "7\tnan\tx.jpg",
        "7\t1.0\t",
        "7\t1.0\t \t",
        "\t7\t1.0\tx.jpg",
        "7\t1.0\tx\x00.jpg",
        "7\tone\tx.jpg",
        "x\t1\tx.jpg",
        "7\t1\t2\tx.jpg",
        "7\tx.jpg",
    ],
)
def test_read_list_fast_path_parses_as_parse_line(tmp_path: Path, line: str) -> None:
    """``read_list`` takes a quick path for three-field lines; it must give the entry, or the
    error, that the general parser gives."""
    p = tmp_path / "a.lst"
    p.write_bytes(line.encode("utf-8") + b"\n")
    try:
        want = [listing._parse_line(line)]
    except ValueError as exc:
        with pytest.raises(ListError, match="line 1: ") as info:
            read_list(p)
        assert str(exc) in str(info.value)  # the same reason
        return
    assert repr(read_list(p)) == repr(want)


def test_classes_from_lists_parent_is_os_path_dirname() -> None:
    """The quick parent-directory split agrees with ``os.path.dirname`` on awkward paths."""
    paths = ["a/x.jpg", "a/", "x.jpg", "./x.jpg", "a//x.jpg", "/r/a/x.jpg", "a/b/", "b/c/d.png"]
    for path in paths:
        want = os.path.dirname(path.replace("/", os.sep)) or "."
        assert classes_from_lists([ListEntry(0, (0.0,), path)]) == [want], path
