"""recordkit verify / inspect / bench / show and recordkit-train run on URLs served by nginx
and moto: the same results as on the local directory, one-line errors otherwise."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import assert_one_line_error, assert_one_line_stderr_error, cli_without
from tinyrun import colour_shards

from recordkit.cli import main
from recordkit_train.cli import main as train_main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def served(nginx):
    root = colour_shards(nginx.root / "cli", ["red", "green", "blue"], n_train=24, n_val=7)
    yield root, f"{nginx.url}/cli/"
    shutil.rmtree(root, ignore_errors=True)


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_verify_ok_and_problems_name_urls(served, nginx, tmp_path):
    local, url = served
    res = _run("verify", url, "-q")
    assert res.exit_code == 0, res.output
    assert res.output == _run("verify", local, "-q").output  # "verified 4 file(s), … OK"
    assert res.output.startswith("verified 4 file(s), 31 record(s)")
    bad = shutil.copytree(local, nginx.root / "cli-bad")
    try:
        shard = bad / "train-00001-of-00003.tfrecord"
        data = bytearray(shard.read_bytes())
        data[30] ^= 1
        shard.write_bytes(bytes(data))
        (bad / "val-00000-of-00001.idx").unlink()
        res = _run("verify", f"{nginx.url}/cli-bad", "-q")
        assert res.exit_code == 1
        lines = res.output.splitlines()
        assert any(
            line.startswith(f"{nginx.url}/cli-bad/train-00001-of-00003.tfrecord: offset 0:")
            for line in lines
        ), res.output
        assert f"{nginx.url}/cli-bad/val-00000-of-00001.idx: index missing" in res.output
    finally:
        shutil.rmtree(bad)


def test_inspect_matches_local(served):
    local, url = served
    remote = json.loads(_run("inspect", url, "--json", "-q").output)
    here = json.loads(_run("inspect", local, "--json", "-q").output)
    assert remote.pop("path") == url.rstrip("/") and here.pop("path") == str(local)
    assert remote == here


def test_bench_and_show_read_urls(served, tmp_path):
    _, url = served
    res = _run(
        "bench",
        url,
        "--backend",
        "torch",
        "--batch-size",
        "4",
        "--batches",
        "3",
        "--warmup",
        "1",
        "--image-size",
        "32",
        "--workers",
        "0",
        "--json",
        "--cache-dir",
        tmp_path / "c",
        "--cache-limit",
        "10MB",
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["images"] == 12
    assert list((tmp_path / "c").rglob("train-*.tfrecord"))  # training reads go through it
    res = _run("show", url, "--split", "val", "-n", "4", "-o", tmp_path / "g.png")
    assert res.exit_code == 0, res.output and (tmp_path / "g.png").stat().st_size > 0


def test_cli_errors_are_one_line(nginx, tmp_path):
    assert_one_line_error(_run("inspect", f"{nginx.url}/forbidden/d/"), "access denied (403)")
    assert_one_line_error(_run("verify", f"{nginx.url}/absent/"), "not found (404)")
    res = _run("bench", f"{nginx.url}/absent/", "--cache-limit", "lots")
    assert res.exit_code != 0 and "Traceback" not in res.output


def test_verify_and_inspect_on_object_stores(bucket_url, tmp_path):
    from remote_servers import upload_dir

    local = colour_shards(tmp_path / "ds", ["red", "green", "blue"], n_train=24, n_val=7)
    upload_dir(local, f"{bucket_url}/cli")
    url = f"{bucket_url}/cli/"
    res = _run("verify", url, "-q")
    assert res.exit_code == 0, res.output
    assert res.output == _run("verify", local, "-q").output
    remote = json.loads(_run("inspect", url, "--json", "-q").output)
    here = json.loads(_run("inspect", local, "--json", "-q").output)
    assert remote.pop("path") == url.rstrip("/") and here.pop("path") == str(local)
    assert remote == here
    assert_one_line_error(_run("verify", f"{bucket_url}/absent/"), "not found (404)")
    missing = bucket_url.replace("recordkit-test", "no-such-bucket")
    assert_one_line_error(
        _run("inspect", f"{missing}/ds/"), f"{missing}/ds/recordkit.json", "not found (404)"
    )


def test_missing_backend_package_is_an_install_hint():
    res = cli_without("gcsfs", "inspect", "gs://bucket/ds/")
    assert_one_line_stderr_error(res, "gs://", "pip install 'recordkit[gcs]'")


@pytest.mark.slow
@pytest.mark.parametrize("store", ["https", "s3", "gs"])
def test_train_run_on_urls(store, served, request, tmp_path):
    from remote_servers import upload_dir

    local, data = served
    if store != "https":
        request.getfixturevalue({"s3": "moto_s3", "gs": "gcs"}[store])
        data = f"{store}://recordkit-test/cli/"
        upload_dir(local, data)
    out = tmp_path / "run"
    res = CliRunner().invoke(
        train_main,
        [
            "run",
            "--data",
            data,
            "--out",
            str(out),
            "--arch",
            "resnet18",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--image-size",
            "32",
            "--precision",
            "fp32",
            "--workers",
            "0",
            "--backend",
            "torch",
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--cache-limit",
            "5MB",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == data and config["cache_limit"] == "5MB"
    assert (out / "last.pt").exists()


def test_unresolvable_host_is_one_line_without_retries(monkeypatch):
    """A host name that cannot resolve (``.invalid`` never does, RFC 2606) fails at once with
    one line, instead of being retried as a transient network error."""
    from recordkit.remote import fs as remote_fs

    sleeps: list[float] = []
    monkeypatch.setattr(remote_fs.time, "sleep", sleeps.append)
    res = _run("inspect", "https://recordkit-test.invalid/ds/")
    assert_one_line_error(res, "https://recordkit-test.invalid/ds/", "cannot resolve the host")
    assert sleeps == []


def test_failed_lookups_are_classified_unresolvable_through_wrappers():
    import socket

    import aiohttp

    from recordkit.remote.fs import classify

    lookup = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert classify(lookup) == ("unresolvable", None)
    wrapped = aiohttp.ClientConnectorDNSError(None, lookup)
    assert classify(wrapped) == ("unresolvable", None)
    try:
        try:
            raise lookup
        except OSError as exc:
            raise OSError("connect failed") from exc
    except OSError as chained:
        assert classify(chained) == ("unresolvable", None)
    # a refused connection is still transient, and an HTTP status wins over the chain
    assert classify(ConnectionRefusedError(111, "refused"))[0] == "transient"


def test_storage_client_tracebacks_stay_quiet_below_verbose():
    import logging

    from recordkit.logsetup import setup_logging

    try:
        setup_logging(0)
        assert not logging.getLogger("gcsfs").isEnabledFor(logging.ERROR)
        assert logging.getLogger("recordkit").isEnabledFor(logging.WARNING)
        setup_logging(1)
        assert logging.getLogger("gcsfs").isEnabledFor(logging.ERROR)
    finally:
        logging.getLogger("gcsfs").setLevel(logging.NOTSET)


@pytest.mark.slow
@pytest.mark.dali
def test_train_run_dali_on_https_streams_within_the_cache_limit(nginx, tmp_path):
    """recordkit-train run --backend dali over http:// with a cache limit of three of the
    train split's six shards: two epochs train and validate (every validation record counted)
    with the cache never over its limit."""
    pytest.importorskip("nvidia.dali")
    from test_remote_loaders import cache_peak

    local = colour_shards(nginx.root / "dali-cli", ["r", "g", "b"], 24, 8, records_per_shard=4)
    shards = list(local.glob("train-*.tfrecord"))
    limit = 3 * max(p.stat().st_size for p in shards) + 64
    assert len(shards) == 6 and limit < sum(p.stat().st_size for p in shards)
    out = tmp_path / "run"
    args = ["run", "--data", f"{nginx.url}/dali-cli/", "--out", str(out), "--arch", "resnet18",
            "--epochs", "2", "--batch-size", "4", "--image-size", "32", "--precision", "fp32",
            "--workers", "1", "--backend", "dali", "--device", "cpu", "--no-progress",
            "--cache-dir", str(tmp_path / "cache"), "--cache-limit", str(limit)]  # fmt: skip
    with cache_peak(tmp_path / "cache", limit) as peak:
        res = CliRunner().invoke(train_main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["val_samples"] == 8 for r in rows)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 2 * 24 // 4
    assert 0 < peak[0] <= limit
