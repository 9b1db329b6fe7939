"""recordkit.open on URLs: nginx (http range reads), moto (s3fs) and the GCS emulator (gcsfs),
values checked exactly."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import make_record, write_shards

import recordkit
from recordkit.errors import CorruptRecordError, ManifestError
from recordkit.remote.fs import RemoteError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _dataset(root, n_train=22, n_val=7, per_shard=5):
    return write_shards(
        root,
        {
            "train": [make_record(i) for i in range(n_train)],
            "val": [make_record(i) for i in range(100, 100 + n_val)],
        },
        records_per_shard=per_shard,
    )


@pytest.fixture
def http_ds(nginx, request):
    name = request.node.name.replace("[", "_").replace("]", "_")
    _dataset(nginx.root / name)
    yield f"{nginx.url}/{name}/"
    shutil.rmtree(nginx.root / name, ignore_errors=True)


def test_http_open_random_access_and_iteration(http_ds, nginx):
    ds = recordkit.open(http_ds)
    assert ds.classes == ["class0", "class1", "class2"]
    assert len(ds["train"]) == 22 and len(ds["val"]) == 7
    nginx.clear_log()
    for i in (0, 4, 5, 13, 21, -1):
        rec = ds["train"][i]
        k = i % 22
        assert rec.index == k and rec.image == make_record(k).image
        assert rec.filename == make_record(k).filename and tuple(rec.labels) == (k % 3,)
    # each record is one range request of exactly its framed bytes
    ranged = [line for line in nginx.log_lines() if line[3].startswith("bytes=")]
    assert len(ranged) == 6 and all(st == 206 for st, *_ in ranged)
    assert [r.index for r in ds["val"]] == list(range(100, 107))
    assert [r.index for r in ds["train"].iter(1, 3)] == list(range(7, 14))


def test_http_dataset_matches_local(http_ds, nginx):
    local = recordkit.open(nginx.root / http_ds.rstrip("/").rsplit("/", 1)[1])
    remote = recordkit.open(http_ds)
    assert [r.read_bytes(j) for r in remote["train"].readers for j in range(len(r))] == [
        r.read_bytes(j) for r in local["train"].readers for j in range(len(r))
    ]


def test_local_paths_do_not_import_fsspec(tmp_path):
    _dataset(tmp_path / "ds")
    code = (
        "import sys, recordkit; ds = recordkit.open(sys.argv[1]); ds['train'][3]; "
        "assert 'fsspec' not in sys.modules, 'fsspec imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "ds")], check=True)


def test_http_404_is_one_manifest_error(nginx):
    with pytest.raises(ManifestError, match=r"/nothing-here/recordkit.json: not found \(404\)"):
        recordkit.open(f"{nginx.url}/nothing-here/")


def test_http_403_names_the_url(nginx):
    with pytest.raises(RemoteError) as err:
        recordkit.open(f"{nginx.url}/forbidden/ds/")
    assert err.value.status == 403
    assert str(err.value).startswith(f"{nginx.url}/forbidden/ds/recordkit.json: access denied")
    assert "\n" not in str(err.value)


def test_missing_shard_is_404_naming_it(http_ds, nginx):
    name = http_ds.rstrip("/").rsplit("/", 1)[1]
    (nginx.root / name / "train-00002-of-00005.tfrecord").unlink()
    ds = recordkit.open(http_ds)
    assert ds["train"][0].index == 0
    with pytest.raises(RemoteError, match=r"train-00002-of-00005.tfrecord: not found \(404\)"):
        ds["train"][10]


def test_corrupt_remote_record_names_file_and_offset(http_ds, nginx):
    name = http_ds.rstrip("/").rsplit("/", 1)[1]
    path = nginx.root / name / "train-00001-of-00005.tfrecord"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # the last record's data CRC
    path.write_bytes(bytes(data))
    ds = recordkit.open(http_ds)
    last = ds["train"].readers[1].entries[4][0]
    with pytest.raises(CorruptRecordError, match=rf"train-00001-of-00005.tfrecord: offset {last}"):
        ds["train"][9]


def test_object_store_open_random_access_and_iteration(bucket_url, tmp_path):
    from remote_servers import upload_dir

    _dataset(tmp_path / "ds")
    upload_dir(tmp_path / "ds", f"{bucket_url}/ds")
    ds = recordkit.open(f"{bucket_url}/ds/")
    assert len(ds["train"]) == 22
    assert [ds["train"][i].index for i in (0, 7, 21)] == [0, 7, 21]
    assert [r.index for r in ds["val"]] == list(range(100, 107))
    local = recordkit.open(tmp_path / "ds")
    assert [r.read_bytes(j) for r in ds["train"].readers for j in range(len(r))] == [
        r.read_bytes(j) for r in local["train"].readers for j in range(len(r))
    ]


def test_object_store_missing_dataset(bucket_url):
    with pytest.raises(ManifestError, match=rf"{bucket_url}/none/recordkit.json: not found"):
        recordkit.open(f"{bucket_url}/none/")


def test_object_store_missing_bucket_is_one_line_naming_the_url(bucket_url):
    url = bucket_url.replace("recordkit-test", "no-such-bucket")
    with pytest.raises(ManifestError) as err:
        recordkit.open(f"{url}/ds/")
    assert str(err.value).startswith(f"{url}/ds/recordkit.json: not found (404)")
    assert "\n" not in str(err.value)


def test_gs_403_is_one_line_and_not_retried(gcs_proxy):
    from upload_proxy import Fault

    fault = Fault("GET", r"/ds%2Frecordkit\.json$", status=403)
    gcs_proxy.faults.append(fault)
    with pytest.raises(RemoteError) as err:
        recordkit.open("gs://recordkit-test/ds/")
    assert err.value.status == 403 and fault.hits == 1
    assert str(err.value).startswith("gs://recordkit-test/ds/recordkit.json: access denied (403)")
    assert "\n" not in str(err.value)


def test_gs_transient_503_is_retried(gcs_proxy, tmp_path):
    from remote_servers import upload_dir
    from upload_proxy import Fault

    _dataset(tmp_path / "ds")
    upload_dir(tmp_path / "ds", "gs://recordkit-test/ds")
    fault = Fault("GET", r"train-00001-of-00005\.tfrecord$", status=503, times=1)
    gcs_proxy.faults.append(fault)
    ds = recordkit.open("gs://recordkit-test/ds/")
    assert ds["train"][6].image == make_record(6).image and fault.hits == 1


def test_s3_without_credentials_is_one_line(moto_s3, tmp_path):
    from remote_servers import upload_dir

    _dataset(tmp_path / "ds")
    upload_dir(tmp_path / "ds", "s3://recordkit-test/ds")
    env = {k: v for k, v in moto_s3.env().items() if not k.startswith("AWS_SECRET")}
    env.pop("AWS_ACCESS_KEY_ID", None)
    env.update(
        PATH="/usr/bin:/bin",
        HOME=str(tmp_path),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    res = subprocess.run(
        [sys.executable, "-m", "recordkit", "verify", "s3://recordkit-test/ds/"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "s3://recordkit-test/ds/" in lines[0] and "no credentials" in lines[0]
    assert "Traceback" not in res.stderr
