"""``recordkit pack --out s3://…`` against a real S3-compatible server (moto_server over HTTP),
``gs://…`` against the GCS emulator and ``http://…`` (PUT) against nginx:
round trip, manifest last, resume after a kill, retries on 5xx, one-line 403/404 errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, assert_one_line_stderr_error, cli_without
from remote_servers import MotoServer
from test_pack import make_dataset, opts, run_cli, shard_bytes
from upload_proxy import Fault, Proxy, make_bucket, s3_env, s3fs_for

import recordkit
from recordkit.format.manifest import MANIFEST_NAME
from recordkit.pack import pack
from recordkit.pack.upload import is_url
from recordkit.remote import fs as remote_fs
from recordkit.verify import verify

pytest.importorskip("s3fs")

SHARD = re.compile(r"/((train|val)-\d{5}-of-\d{5})\.tfrecord$")


@pytest.fixture(scope="module")
def moto():
    """A moto server of this module's own."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    with MotoServer() as server:
        yield server.endpoint


@pytest.fixture
def bucket(moto, request):
    """A fresh, empty bucket on the module's server; its name."""
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    make_bucket(moto, name)
    return name


@pytest.fixture
def env(moto, tmp_path, monkeypatch):
    """The process environment of a pack to the moto server (fast retries, a private cache)."""
    values = {
        **s3_env(moto),
        "RECORDKIT_STAGING": str(tmp_path / "cache"),
        "RECORDKIT_REMOTE_BACKOFF": "0.01",  # for subprocesses
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(remote_fs, "BACKOFF", 0.01)
    return values


@pytest.fixture
def proxy(moto, monkeypatch):
    p = Proxy(moto)
    for k, v in s3_env(p.url).items():
        monkeypatch.setenv(k, v)
    yield p
    p.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Lists + images (train 9, val 3) and the reference local pack at 2 records a shard."""
    tmp = tmp_path_factory.mktemp("remote-pack")
    prefix, root = make_dataset(tmp, per_class=4, train_ratio=0.75)
    reference = tmp / "reference"
    pack(prefix, root, opts(reference, shard_size=2, threads=2))
    return prefix, root, reference


def download(endpoint: str, bucket: str, dest: Path) -> Path:
    fs = s3fs_for(endpoint)
    dest.mkdir(parents=True)
    for key in fs.ls(f"{bucket}/ds", detail=False):
        (dest / key.rsplit("/", 1)[-1]).write_bytes(fs.cat_file(key))
    return dest


def remote_names(endpoint: str, bucket: str) -> list[str]:
    fs = s3fs_for(endpoint)
    try:
        return sorted(k.rsplit("/", 1)[-1] for k in fs.ls(f"{bucket}/ds", detail=False))
    except FileNotFoundError:
        return []


def pack_args(data, bucket: str, *extra: object) -> list[object]:
    prefix, root, _ = data
    return ["pack", prefix, root, "--out", f"s3://{bucket}/ds/", "--shard-size", 2, "-q", *extra]


def assert_same_as_reference(moto, bucket, data, tmp_path) -> None:
    got = download(moto, bucket, tmp_path / "downloaded")
    assert verify(got).ok
    assert shard_bytes(got) == shard_bytes(data[2])
    manifest = json.loads((got / MANIFEST_NAME).read_text())
    ref = json.loads((data[2] / MANIFEST_NAME).read_text())
    assert manifest["splits"] == ref["splits"]
    assert not [n for n in os.listdir(got) if n.startswith(".pack-state")]


# --------------------------------------------------------------------------------------------
def test_is_url():
    assert is_url("s3://b/ds") and is_url("gs://b") and is_url("https://h/x/")
    assert not is_url("shards") and not is_url("/abs/path") and not is_url("file:///tmp/x")


def test_pack_to_s3_uploads_same_bytes_and_manifest_last(moto, bucket, env, proxy, data, tmp_path):
    res = run_cli(*pack_args(data, bucket))
    assert res.exit_code == 0, res.output
    assert_same_as_reference(moto, bucket, data, tmp_path)
    puts = proxy.puts(f"/{bucket}/ds/")
    names = [p.rsplit("/", 1)[-1] for p in puts]
    # every shard and index once, the manifest once and after all of them
    shards = [n for n in names if n.endswith((".tfrecord", ".idx"))]
    assert sorted(shards) == sorted(n for n in shard_bytes(data[2]) if not n.startswith("."))
    assert len(set(shards)) == len(shards)
    assert names.count(MANIFEST_NAME) == 1
    assert names.index(MANIFEST_NAME) > max(names.index(n) for n in shards)
    # state files were written along the way and deleted after the manifest
    assert any(n.startswith(".pack-state.train") for n in names)
    assert not [n for n in remote_names(moto, bucket) if n.startswith(".pack-state")]
    # staging space was given back
    staging = Path(env["RECORDKIT_STAGING"])
    assert not [p for p in staging.rglob("*") if p.is_file()]


def test_staging_holds_at_most_the_upload_window(moto, bucket, env, proxy, data, tmp_path):
    """While the first upload hangs, packing goes on only until ``upload_window`` finished
    shards wait: staging never holds more than that plus the one being written."""
    hold = Fault("PUT", r"train-00000-of-00005\.tfrecord$", hold=True, times=1)
    proxy.faults.append(hold)
    threading.Timer(1.5, hold.release.set).start()  # then the connection drops: a retry
    staging = tmp_path / "staging"
    most = 0

    def progress(done: int, total: int) -> None:
        nonlocal most
        most = max(most, len(list(staging.glob("*.tfrecord*"))))

    prefix, root, _ = data
    options = opts(f"s3://{bucket}/ds", shard_size=2, threads=1, staging=staging, upload_window=2)
    res = pack(prefix, root, options, progress=progress)
    assert res.manifest == f"s3://{bucket}/ds/recordkit.json"
    assert hold.hits == 1
    assert most == 3  # the bound was reached, and held
    assert_same_as_reference(moto, bucket, data, tmp_path)
    assert not staging.exists()


def test_second_pack_refuses_then_overwrite_replaces(moto, bucket, env, data, tmp_path):
    assert run_cli(*pack_args(data, bucket)).exit_code == 0
    assert_one_line_error(run_cli(*pack_args(data, bucket)), "already packed", f"s3://{bucket}/ds")
    res = run_cli(*pack_args(data, bucket, "--resume"))
    assert res.exit_code == 0, res.output  # nothing to do
    res = run_cli(*pack_args(data, bucket, "--overwrite"))
    assert res.exit_code == 0, res.output
    assert_same_as_reference(moto, bucket, data, tmp_path)
    # and the reading side opens the uploaded dataset: the same records as the local pack
    import s3fs

    try:
        remote = recordkit.open(f"s3://{bucket}/ds/")
        local = recordkit.open(data[2])
        for split in ("train", "val"):
            assert len(remote[split]) == len(local[split])
            assert [r.index for r in remote[split]] == [r.index for r in local[split]]
            assert remote[split][len(local[split]) - 1].image == local[split][-1].image
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # it was built from this test's environment


def test_splits_added_one_at_a_time(moto, bucket, env, data, tmp_path):
    """A second pack into the same URL adds its split to the uploaded manifest."""
    prefix, root, _ = data
    url = f"s3://{bucket}/ds/"
    for split in ("train", "val"):
        lst = f"{prefix}_{split}.lst"
        res = run_cli("pack", "--list", lst, root, "--out", url, "--shard-size", 2)
        assert res.exit_code == 0, res.output
        assert f"dataset at s3://{bucket}/ds/" in res.output
    assert_same_as_reference(moto, bucket, data, tmp_path)
    import s3fs

    try:  # the reading side verifies the uploaded dataset in place
        res = run_cli("verify", f"s3://{bucket}/ds/", "--quiet")
        assert res.exit_code == 0, res.output
        assert re.fullmatch(r"verified 7 file\(s\), 12 record\(s\), \d+ bytes: OK\n", res.output)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # it was built from this test's environment


def test_retries_transient_5xx(moto, bucket, env, proxy, data, tmp_path):
    fault = Fault("PUT", r"\.tfrecord$", status=503, times=3)
    proxy.faults.append(fault)
    res = run_cli(*pack_args(data, bucket))
    assert res.exit_code == 0, res.output
    assert fault.hits == 3
    assert_same_as_reference(moto, bucket, data, tmp_path)


def test_persistent_5xx_fails_with_one_line_and_no_manifest(
    moto, bucket, env, proxy, data, monkeypatch
):
    monkeypatch.setattr(remote_fs, "RETRIES", 2)
    proxy.faults.append(Fault("PUT", r"-00001-of-00005\.tfrecord$", status=500))
    res = run_cli(*pack_args(data, bucket))
    assert_one_line_error(
        res, f"s3://{bucket}/ds/train-00001-of-00005.tfrecord", "after 3 attempts"
    )
    assert proxy.faults[0].hits == 3
    assert MANIFEST_NAME not in remote_names(moto, bucket)


def test_missing_bucket_is_one_line_404(env, data):
    res = run_cli(*pack_args(data, "no-such-bucket"))
    assert_one_line_error(res, "s3://no-such-bucket/", "not found (404)")


def test_access_denied_is_one_line_403(bucket, env, proxy, data):
    proxy.faults.append(Fault("GET", rf"^/{bucket}", status=403))
    res = run_cli(*pack_args(data, bucket))
    assert_one_line_error(res, f"s3://{bucket}/", "access denied (403)")


def test_unknown_access_key_is_one_line_403(data, tmp_path, monkeypatch):
    """A server that checks credentials (moto with authentication on) refuses ours."""
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")  # read by the server at start
    with MotoServer() as server:
        for k, v in {**s3_env(server.endpoint), "RECORDKIT_STAGING": str(tmp_path)}.items():
            monkeypatch.setenv(k, v)
        res = run_cli(*pack_args(data, "bucket"))
    assert_one_line_error(res, "s3://bucket/", "access denied (403)")


def test_no_credentials_is_one_line(env, data, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    res = run_cli(*pack_args(data, "bucket"))
    assert_one_line_error(res, "s3://bucket/", "no credentials")


def test_write_denied_fails_before_packing(moto, bucket, env, proxy, data):
    proxy.faults.append(Fault("PUT", rf"^/{bucket}/", status=403))
    res = run_cli(*pack_args(data, bucket))
    assert_one_line_error(res, f"s3://{bucket}/ds/.pack-state.", "access denied (403)")
    assert not proxy.puts(r"\.tfrecord")


def test_missing_extra_names_the_pip_install(env, data):
    res = cli_without("gcsfs", *pack_args(data, "b")[:3], "--out", "gs://b/ds")
    assert_one_line_stderr_error(res, "gs://b/ds", "pip install 'recordkit[gcs]'")


def _state(endpoint: str, bucket: str, split: str = "train") -> dict:
    fs = s3fs_for(endpoint)
    try:
        return json.loads(fs.cat_file(f"{bucket}/ds/.pack-state.{split}.json"))
    except FileNotFoundError:
        return {}


def recorded(endpoint: str, bucket: str) -> set[str]:
    """Shard names (no suffix) the remote state files record as uploaded."""
    out = set()
    for split in ("train", "val"):
        for entry in _state(endpoint, bucket, split).get("shards", {}).values():
            out.add(entry["file"].removesuffix(".tfrecord"))
    return out


ALL = {f"train-{k:05d}-of-00005" for k in range(5)} | {f"val-{k:05d}-of-00002" for k in range(2)}


@pytest.mark.slow
def test_killed_upload_resumes_without_uploading_a_shard_twice(
    moto, bucket, env, proxy, data, tmp_path
):
    """Kill -9 while shard 2's upload hangs; --resume uploads only what the remote state does
    not record as complete, and the manifest appears only at the end."""
    hold = Fault("PUT", r"train-00002-of-00005\.tfrecord$", hold=True)
    proxy.faults.append(hold)
    cmd = [sys.executable, "-m", "recordkit"] + [str(a) for a in pack_args(data, bucket)]
    child_env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert hold.held.wait(60), proc.communicate(timeout=5)
        deadline = time.monotonic() + 30  # shard 1 was submitted before 2; let it land
        while {"train-00000-of-00005", "train-00001-of-00005"} - recorded(moto, bucket):
            assert time.monotonic() < deadline, recorded(moto, bucket)
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    hold.release.set()
    proxy.faults.clear()
    before = recorded(moto, bucket)
    assert "train-00002-of-00005" not in before
    assert {"train-00000-of-00005", "train-00001-of-00005"} <= before
    names = remote_names(moto, bucket)
    assert MANIFEST_NAME not in names  # an interrupted pack is not a dataset
    first = [SHARD.search(p).group(1) for p in proxy.puts(r"\.tfrecord$")]
    proxy.log.clear()

    res = run_cli(*pack_args(data, bucket))  # without --resume: refused, names the way out
    assert_one_line_error(res, "unfinished pack", "--resume")
    res = run_cli(*pack_args(data, bucket, "--resume"))
    assert res.exit_code == 0, res.output
    second = [SHARD.search(p).group(1) for p in proxy.puts(r"\.tfrecord$")]
    assert sorted(second) == sorted(ALL - before)  # each once; none recorded goes up again
    assert "train-00002-of-00005" in second  # the one cut off
    assert set(first) <= before | {"train-00002-of-00005"} | set(second)
    assert_same_as_reference(moto, bucket, data, tmp_path)


def test_resume_with_a_fresh_staging_directory_repacks_only_missing_shards(
    moto, bucket, env, proxy, data, tmp_path, monkeypatch
):
    """An upload that failed for good (the process exits with an error), resumed from another
    staging directory (another machine): only the shards the remote state lacks go up."""
    monkeypatch.setattr(remote_fs, "RETRIES", 1)
    proxy.faults.append(Fault("PUT", r"train-00003-of-00005\.tfrecord$", status=500))
    res = run_cli(*pack_args(data, bucket, "--staging", tmp_path / "stage1"))
    assert_one_line_error(res, "train-00003-of-00005.tfrecord")
    proxy.faults.clear()
    before = recorded(moto, bucket)
    assert "train-00003-of-00005" not in before and before
    assert MANIFEST_NAME not in remote_names(moto, bucket)
    proxy.log.clear()
    res = run_cli(*pack_args(data, bucket, "--resume", "--staging", tmp_path / "stage2"))
    assert res.exit_code == 0, res.output
    second = [SHARD.search(p).group(1) for p in proxy.puts(r"\.tfrecord$")]
    assert sorted(second) == sorted(ALL - before)
    assert_same_as_reference(moto, bucket, data, tmp_path)


# --- https:// (here http on 127.0.0.1) with PUT: nginx's WebDAV module ----------------------
_DAV_CONF = """\
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format rk '$status $request_method $uri $http_range';
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        access_log {prefix}/access.log rk;
        root {root};
        client_max_body_size 0;
        location /forbidden/ {{ return 403; }}
        location / {{ dav_methods PUT DELETE; create_full_put_path on; }}
    }}
}}
"""


@pytest.fixture(scope="module")
def dav(tmp_path_factory):
    """nginx accepting PUT and DELETE (``dav_methods``) under its root."""
    import remote_servers

    if remote_servers.nginx_skip_reason():
        pytest.skip(remote_servers.nginx_skip_reason())
    mp = pytest.MonkeyPatch()
    mp.setattr(remote_servers, "_NGINX_CONF", _DAV_CONF)
    try:
        server = remote_servers.NginxServer(
            tmp_path_factory.mktemp("dav-root"), tmp_path_factory.mktemp("dav-nginx")
        ).start()
    finally:
        mp.undo()
    yield server
    server.stop()


def test_pack_to_http_put(dav, data, tmp_path, monkeypatch):
    monkeypatch.setenv("RECORDKIT_STAGING", str(tmp_path / "cache"))
    prefix, root, reference = data
    url = f"{dav.url}/ds1/"
    res = run_cli("pack", prefix, root, "--out", url, "--shard-size", 2, "-q")
    assert res.exit_code == 0, res.output
    got = dav.root / "ds1"
    assert verify(got).ok
    assert shard_bytes(got) == shard_bytes(reference)
    assert sorted(os.listdir(got)) == sorted(os.listdir(reference))  # state files deleted
    puts = [uri for st, m, uri, _ in dav.log_lines() if m == "PUT" and st < 300]
    assert puts[-1] == "/ds1/recordkit.json"  # last
    # packed again: refused (the manifest names the split); --resume has nothing to do
    assert_one_line_error(
        run_cli("pack", prefix, root, "--out", url, "--shard-size", 2), "already packed"
    )


def test_pack_to_http_forbidden_is_one_line(dav, data, tmp_path, monkeypatch):
    monkeypatch.setenv("RECORDKIT_STAGING", str(tmp_path / "cache"))
    prefix, root, _ = data
    url = f"{dav.url}/forbidden/ds/"
    res = run_cli("pack", prefix, root, "--out", url, "--shard-size", 2)
    assert_one_line_error(res, f"{dav.url}/forbidden/ds/", "403")


def test_http_put_resume_after_failed_upload(dav, data, tmp_path, monkeypatch):
    """Through the fault proxy in front of nginx: shard 3's PUT fails for good, then
    ``--resume`` (another staging directory) PUTs only what the remote state lacks."""
    monkeypatch.setattr(remote_fs, "RETRIES", 1)
    monkeypatch.setattr(remote_fs, "BACKOFF", 0.01)
    prefix, root, reference = data
    with_proxy = Proxy(dav.url)
    try:
        url = f"{with_proxy.url}/ds2/"
        with_proxy.faults.append(Fault("PUT", r"train-00003-of-00005\.tfrecord$", status=500))
        args = ["pack", prefix, root, "--out", url, "--shard-size", 2]
        res = run_cli(*args, "--staging", tmp_path / "s1")
        assert_one_line_error(res, f"{url}train-00003-of-00005.tfrecord")
        with_proxy.faults.clear()
        got = dav.root / "ds2"
        assert not (got / MANIFEST_NAME).exists()
        before = {
            e["file"].removesuffix(".tfrecord")
            for f in got.glob(".pack-state.*.json")
            for e in json.loads(f.read_text())["shards"].values()
        }
        assert before and "train-00003-of-00005" not in before
        # without --resume the state file marks the unfinished pack
        assert_one_line_error(run_cli(*args, "--staging", tmp_path / "s2"), "--resume")
        with_proxy.log.clear()
        res = run_cli(*args, "--resume", "--staging", tmp_path / "s2")
        assert res.exit_code == 0, res.output
        second = [SHARD.search(p).group(1) for p in with_proxy.puts(r"\.tfrecord$")]
        assert sorted(second) == sorted(ALL - before)
        assert verify(got).ok
        assert shard_bytes(got) == shard_bytes(reference)
        assert sorted(os.listdir(got)) == sorted(os.listdir(reference))  # state files deleted
    finally:
        with_proxy.close()


# --- gs:// against the GCS emulator (gcp-storage-emulator, a subprocess; gcsfs over HTTP) -----
GS_URL = "gs://recordkit-test/ds/"


@pytest.fixture
def gs_env(gcs, tmp_path, monkeypatch):
    """A fresh ``gs://recordkit-test`` and the environment of a pack to it."""
    monkeypatch.setenv("RECORDKIT_STAGING", str(tmp_path / "staging"))
    monkeypatch.setenv("RECORDKIT_REMOTE_BACKOFF", "0.01")
    monkeypatch.setattr(remote_fs, "BACKOFF", 0.01)
    return gcs


def gs_download(dest: Path) -> Path:
    import fsspec

    fs = fsspec.filesystem("gs", skip_instance_cache=True)
    dest.mkdir(parents=True)
    for key in fs.ls("recordkit-test/ds", detail=False):
        (dest / key.rsplit("/", 1)[-1]).write_bytes(fs.cat_file(key))
    return dest


def test_pack_to_gs_equals_the_local_pack_and_verifies(gs_env, data, tmp_path):
    prefix, root, reference = data
    args = ["pack", prefix, root, "--out", GS_URL, "--shard-size", 2, "-q"]
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    got = gs_download(tmp_path / "downloaded")
    assert shard_bytes(got) == shard_bytes(reference)  # state files deleted, shards identical
    manifest = json.loads((got / MANIFEST_NAME).read_text())
    assert manifest["splits"] == json.loads((reference / MANIFEST_NAME).read_text())["splits"]
    res = run_cli("verify", GS_URL, "--quiet")
    assert res.exit_code == 0, res.output
    assert re.fullmatch(r"verified 7 file\(s\), 12 record\(s\), \d+ bytes: OK\n", res.output)
    assert res.output == run_cli("verify", reference, "--quiet").output
    assert not [p for p in Path(os.environ["RECORDKIT_STAGING"]).rglob("*") if p.is_file()]
    # packed again: refused naming the URL; --overwrite replaces it with the same bytes
    assert_one_line_error(run_cli(*args), "already packed", "gs://recordkit-test/ds")
    res = run_cli(*args, "--overwrite")
    assert res.exit_code == 0, res.output
    assert shard_bytes(gs_download(tmp_path / "again")) == shard_bytes(reference)


def test_pack_to_missing_gs_bucket_is_one_line_404(gs_env, data):
    prefix, root, _ = data
    res = run_cli("pack", prefix, root, "--out", "gs://no-such-bucket/ds/", "--shard-size", 2)
    assert_one_line_error(res, "gs://no-such-bucket/", "not found (404)")


def test_pack_to_gs_403_is_one_line_before_packing(gs_env, gcs_proxy, data):
    gcs_proxy.faults.append(Fault("POST", r"^/upload/", status=403))
    prefix, root, _ = data
    res = run_cli("pack", prefix, root, "--out", GS_URL, "--shard-size", 2)
    assert_one_line_error(res, "gs://recordkit-test/ds/.pack-state.", "access denied (403)")
    assert gcs_proxy.faults[0].hits == 1  # not retried, and no shard went up


def test_pack_to_gs_retries_a_transient_503(gs_env, gcs_proxy, data, tmp_path):
    fault = Fault("POST", r"^/upload/", status=503, times=2)
    gcs_proxy.faults.append(fault)
    prefix, root, reference = data
    res = run_cli("pack", prefix, root, "--out", GS_URL, "--shard-size", 2, "-q")
    assert res.exit_code == 0, res.output
    assert fault.hits == 2
    assert shard_bytes(gs_download(tmp_path / "downloaded")) == shard_bytes(reference)
