"""The `recordkit` data commands as a user runs them: exit codes, output lines, files written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import assert_one_line_error, read_idx
from PIL import Image

from recordkit.cli import main
from recordkit.format import framing


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run(runner: CliRunner, *args: str):
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def shards(tmp_path, make_shards, make_records):
    return make_shards(
        tmp_path / "shards",
        {"train": make_records(10), "val": make_records(5, start=10)},
        records_per_shard=4,
        classes=["cat", "dog", "fox"],
    )


# --- list ---------------------------------------------------------------------------------
def test_list_writes_files_and_prints_class_table(runner, tmp_path, monkeypatch):
    root = tmp_path / "img"
    for cls in ("b", "a"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            (root / cls / f"{i}.jpg").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    result = run(runner, "list", "mydata", "img", "--recursive", "--train-ratio", "0.5")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == ["a 0", "b 1"]
    train = (tmp_path / "mydata_train.lst").read_text().splitlines()
    val = (tmp_path / "mydata_val.lst").read_text().splitlines()
    assert len(train) == 4 and len(val) == 4
    assert all(line.count("\t") == 2 for line in train + val)
    labels = {line.split("\t")[2].split("/")[0]: line.split("\t")[1] for line in train + val}
    assert labels == {"a": "0.000000", "b": "1.000000"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["missing_root"], "does not exist"),
        (["img", "--train-ratio", "1.5"], "--train-ratio"),
        (["img", "--train-ratio", "0.8", "--test-ratio", "0.5"], "must not exceed 1"),
        (["img"], "no images found"),
        (["img", "--recursive", "--exts", ".gif"], "no images found"),
    ],
)
def test_list_bad_arguments_are_one_line_errors(runner, tmp_path, monkeypatch, args, needle):
    (tmp_path / "img" / "cls").mkdir(parents=True)
    (tmp_path / "img" / "cls" / "x.jpg").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run(runner, "list", "out", *args), needle)
    assert not list(tmp_path.glob("out*.lst"))


# --- verify -------------------------------------------------------------------------------
def test_verify_good_directory(runner, shards):
    result = run(runner, "verify", shards)
    assert result.exit_code == 0, result.output
    nbytes = sum(p.stat().st_size for p in shards.glob("*.tfrecord"))
    last = result.output.strip().splitlines()[-1]
    assert last == f"verified 5 file(s), 15 record(s), {nbytes} bytes: OK"


def test_verify_single_file(runner, shards):
    result = run(runner, "verify", shards / "val-00000-of-00002.tfrecord")
    assert result.exit_code == 0, result.output
    assert "4 record(s)" in result.output


def test_verify_reports_damage_with_file_and_offset(runner, shards):
    shard = shards / "train-00001-of-00003.tfrecord"
    offsets = read_idx(shard.with_suffix(".idx"))
    off, size = offsets[2]
    data = bytearray(shard.read_bytes())
    data[off + framing.HEADER_SIZE + 3] ^= 0xFF  # inside record 2's data
    shard.write_bytes(bytes(data))
    result = run(runner, "verify", shards)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert f"{shard}: offset {off}: data CRC mismatch" in lines[0]
    assert any("SHA-256 differs" in line for line in lines)
    assert "problem(s)" in lines[-1]
    assert "Traceback" not in result.output


def test_verify_missing_manifest_is_a_clear_error(runner, tmp_path):
    (tmp_path / "half").mkdir()
    assert_one_line_error(run(runner, "verify", tmp_path / "half"), "no recordkit.json")
    assert_one_line_error(run(runner, "verify", tmp_path / "nope"), "no such file")


# --- inspect ------------------------------------------------------------------------------
def test_inspect_json_values(runner, shards):
    result = run(runner, "inspect", shards, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["classes"] == 3 and info["class_names"] == ["cat", "dog", "fox"]
    train, val = info["splits"]["train"], info["splits"]["val"]
    assert (train["records"], train["shards"], train["scanned"]) == (10, 3, 10)
    # make_record(i) has label i % 3, height 10 + i % 5, width 20 + i % 3
    assert train["class_histogram"] == {"cat": 4, "dog": 3, "fox": 3}
    assert val["class_histogram"] == {"cat": 1, "dog": 2, "fox": 2}  # i = 10..14
    assert train["height"] == {"min": 10, "max": 14, "mean": 12.0}
    assert train["width"]["min"] == 20 and train["width"]["max"] == 22
    assert train["bytes"] == sum(p.stat().st_size for p in shards.glob("train-*.tfrecord"))
    assert train["formats"] == {"jpeg": 10}


def test_inspect_text_and_sample(runner, shards):
    result = run(runner, "inspect", shards, "--max-records", "3")
    assert result.exit_code == 0, result.output
    assert "train: 10 records (scanned 3) in 3 shard(s)" in result.output
    assert "val: 5 records (scanned 3) in 2 shard(s)" in result.output


# --- index --------------------------------------------------------------------------------
def test_index_rebuilds_dali_index(runner, tmp_path):
    path = tmp_path / "foreign.tfrecord"
    payloads = [b"", b"a" * 7, b"hello world" * 30]
    path.write_bytes(b"".join(framing.frame(p) for p in payloads))
    result = run(runner, "index", path)
    assert result.exit_code == 0, result.output
    expected, off = [], 0
    for p in payloads:
        expected.append(f"{off} {len(p) + 16}\n")
        off += len(p) + 16
    assert (tmp_path / "foreign.idx").read_text() == "".join(expected)
    out = tmp_path / "elsewhere.idx"
    assert run(runner, "index", path, "-o", out).exit_code == 0
    assert out.read_text() == "".join(expected)


def test_index_errors(runner, tmp_path):
    path = tmp_path / "bad.tfrecord"
    good = framing.frame(b"x" * 10)
    path.write_bytes(good + good[:-3])  # second record truncated
    assert_one_line_error(run(runner, "index", path), "offset 26", "exceeds")
    assert not (tmp_path / "bad.idx").exists()
    assert_one_line_error(run(runner, "index", tmp_path / "missing.tfrecord"), "no such file")


# --- fast start ---------------------------------------------------------------------------
def test_data_commands_do_not_import_torch_or_dali(tmp_path, shards):
    img = tmp_path / "img" / "c"
    img.mkdir(parents=True)
    (img / "a.jpg").write_bytes(b"x")
    commands = [
        ["list", f"{tmp_path}/out", f"{tmp_path}/img", "--recursive"],
        ["verify", str(shards)],
        ["inspect", str(shards)],
        ["index", f"{shards}/val-00000-of-00002.tfrecord", "-o", f"{tmp_path}/x.idx"],
    ]
    assert_imports_none_of(commands, ("torch", "nvidia.dali", "tensorflow", "cv2"))


def assert_imports_none_of(commands: list[list[str]], modules: tuple[str, ...]) -> None:
    """Run the CLI ``commands`` in one fresh interpreter; each must succeed, and none of
    ``modules`` may be imported by the end."""
    code = f"""
import sys
from recordkit.cli import main
for args in {commands!r}:
    try:
        main(args, standalone_mode=False)
    except SystemExit as e:
        assert not e.code, (args, e.code)
print("HEAVY", [m for m in {modules!r} if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_pack_command_imports_only_what_it_uses(tmp_path):
    """``recordkit pack -q`` writes records without protobuf (the Example is written directly)
    and draws no bar, so neither protobuf nor tqdm (nor torch) is imported: start-up time
    counts in every pack."""
    img = tmp_path / "img" / "c"
    img.mkdir(parents=True)
    Image.new("RGB", (50, 40), (90, 90, 90)).save(img / "a.jpg")
    commands = [
        ["list", f"{tmp_path}/d", f"{tmp_path}/img", "--recursive"],
        [
            "pack",
            f"{tmp_path}/d",
            f"{tmp_path}/img",
            "--out",
            f"{tmp_path}/s",
            "-q",
            "--threads",
            "1",
        ],
    ]
    assert_imports_none_of(commands, ("torch", "nvidia.dali", "google.protobuf", "tqdm"))
    assert (tmp_path / "s" / "recordkit.json").is_file()


def test_python_m_recordkit_and_version():
    out = subprocess.run(
        [sys.executable, "-m", "recordkit", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "recordkit, version" in out.stdout
