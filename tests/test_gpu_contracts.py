"""GPU contracts checked on the CPU: no host sync per step, resume off the CPU, device choice.

No GPU run has happened before users run these paths, so each contract is checked here by
the calls the code makes (:mod:`synccount`) or by a stand-in device: PyTorch's ``meta``
device, whose tensors — like CUDA tensors — cannot be read by NumPy.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from synccount import SyncCounter

from recordkit_train import devices, distributed, engine, precision
from recordkit_train.checkpoint import load_checkpoint, save_checkpoint
from recordkit_train.cli import main
from recordkit_train.config import TrainConfig
from recordkit_train.engine import train
from recordkit_train.optim import build_optimizer, load_optimizer_state
from recordkit_train.predict import Predictor
from tests.conftest import assert_one_line_error
from tests.tinyrun import colour_image, colour_shards
from tests.tinyrun import tiny_config as _tiny_config


def tiny_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    """:func:`tests.tinyrun.tiny_config` with MXNet's LeNet: the contracts here are the
    engine's and the loaders' (syncs, devices, checkpoints), not the model's, and a LeNet step
    costs a few milliseconds where resnet18's costs a hundred."""
    return _tiny_config(data, out, **{"arch": "lenet", **overrides})


STEPS = 20  # per epoch: 80 records, batch 4
PRINT_FREQ = 10  # the default


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_shards(tmp_path_factory.mktemp("shards"), ["a", "b", "c"], n_train=80, n_val=10)


# -- contract 11: the GPU never waits for the host ----------------------------------------


@pytest.mark.parametrize("prec", ["fp32", "fp16", "fp32-mix-ema"])
def test_training_steps_make_no_host_sync(
    data: Path, tmp_path: Path, prec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Syncs only at print boundaries and epoch ends: 3 in 20 steps, none inside a step.

    Before the fix: 1.25 per step in fp32 (an index tensor built on the device by every
    top-k count) and 4.65 in fp16 (two ``get_scale()`` per step for an unused flag and
    GradScaler's ``found_inf.item()`` for a non-fused SGD).
    """
    if prec == "fp16":
        # fp16 autocast on the CPU runs reference kernels (~1 s a step); the contract is the
        # loss-scaled step (GradScaler + fused SGD), which this keeps. Forward in fp32.
        monkeypatch.setattr(engine, "autocast", lambda *a: torch.autocast("cpu", enabled=False))
    # mixup + CutMix on the device and the EMA update: no sync either
    extra = {"mixup": 0.2, "cutmix": 1.0, "ema_decay": 0.99} if prec.endswith("mix-ema") else {}
    cfg = tiny_config(
        data, tmp_path, epochs=1, batch_size=4, image_size=16, precision=prec.split("-")[0],
        print_freq=PRINT_FREQ, **extra,
    )  # fmt: skip
    with SyncCounter() as syncs:
        result = train(cfg, device="cpu")
    assert result["last"]["val_samples"] == 10
    assert syncs.count("_train_step") == 0, syncs.where("_train_step")
    in_epoch = syncs.count("_train_epoch")
    assert in_epoch == STEPS // PRINT_FREQ + 1, syncs.where("_train_epoch")
    assert in_epoch / STEPS < 0.2
    # Validation reads its counts once per pass, whatever the number of batches (3 here);
    # with EMA there are two passes (the model and the average).
    assert syncs.count("evaluate") == (2 if extra else 1), syncs.where("evaluate")


def test_loaders_hand_over_the_autocast_dtype(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    assert engine.loader_dtype("fp16", cuda) is torch.float16
    assert engine.loader_dtype("bf16", cuda) is torch.float32
    assert engine.loader_dtype("fp16", torch.device("cpu")) is torch.float32
    seen: list[dict[str, object]] = []

    class _Loader:
        def __len__(self) -> int:
            return 1

    def spy(ds: object, split: str, **kwargs: object) -> _Loader:
        seen.append({"split": split, **kwargs})
        return _Loader()

    monkeypatch.setattr(engine.recordkit, "make_loader", spy)
    cfg = tiny_config(data, Path("unused"), precision="fp16")
    engine._make_loaders(cfg, engine.recordkit.open(data), cuda)
    assert [(k["split"], k["dtype"], k["device"], k.get("epochs")) for k in seen] == [
        ("train", torch.float16, cuda, cfg.epochs),  # DALI prepares no epoch past the last
        ("val", torch.float16, cuda, None),
    ]


@pytest.mark.dali
def test_dali_run_builds_one_pipeline_per_epoch_and_one_for_validation(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two epochs, two validations: 2 training pipelines (none for a third epoch), 1 val."""
    dali = pytest.importorskip("recordkit.loaders.dali")
    real_build = dali.build_pipeline
    builds: list[bool] = []

    def counting_build(*args: object, **kwargs: object) -> object:
        builds.append(bool(kwargs["train"]))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(dali, "build_pipeline", counting_build)
    cfg = tiny_config(data, tmp_path, epochs=2, image_size=16, backend="dali", workers=1)
    result = train(cfg, device="cpu")
    assert result["last"]["val_samples"] == 10
    assert builds.count(True) == 2 and builds.count(False) == 1, builds


def test_topk_counts_need_no_host_values() -> None:
    from recordkit_train.metrics import topk_correct

    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    with SyncCounter() as syncs:
        counts = topk_correct(logits, labels, ks=(1, 2, 5))
    assert syncs.count() == 0, syncs.where()
    assert counts.tolist() == [1, 2, 3] and counts.dtype == torch.int64


def test_predict_reads_each_batch_once(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    train(tiny_config(data, out, epochs=1, batch_size=8, image_size=16), device="cpu")
    files = []
    for i in range(7):
        path = tmp_path / f"img{i}.png"
        colour_image(i % 3, i).save(path)
        files.append(path)
    predictor = Predictor.from_checkpoint(out / "last.pt", device="cpu")
    with SyncCounter() as syncs:
        results = list(predictor.predict(files, topk=2, batch_size=3, workers=1))
    assert len(results) == 7 and all(len(r.classes) == 2 for r in results)
    assert syncs.count("predict") == 3, syncs.where()  # batches of 3, 3 and 1


# -- resume where the training device is not the CPU --------------------------------------


def test_resume_when_the_training_device_is_not_the_cpu(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming used to load ``last.pt`` onto the training device, so NumPy's RNG key array
    arrived on the GPU and ``restore_rng`` failed ("can't convert cuda:0 device type tensor
    to numpy") before the first step of every resumed GPU run. Here the engine runs on the
    ``meta`` device, which NumPy cannot read either: the old code fails the same way."""
    out = tmp_path / "run"
    train(tiny_config(data, out, epochs=1, image_size=16), device="cpu")
    real_setup = distributed.setup

    def setup_on_meta(device: str | None = None, **kwargs: object) -> distributed.DistEnv:
        env = real_setup("cpu", **kwargs)  # type: ignore[arg-type]
        return dataclasses.replace(env, device=torch.device("meta"))

    monkeypatch.setattr(distributed, "setup", setup_on_meta)
    # The checkpoint is at the end of the run, so only the restore runs on the stand-in.
    with pytest.warns(UserWarning, match="meta parameter"):
        result = train(tiny_config(data, out, epochs=1, image_size=16, resume=str(out)))
    assert result["epochs"] == 1 and result["best_top1"] is not None


def _tag_storages_as(location: str) -> object:
    """A ``torch.serialization`` tagger that records every storage as ``location``."""

    def tagger(storage: object) -> str | None:
        return location

    return tagger


def test_checkpoint_written_on_a_gpu_loads_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose storages say ``cuda:0`` (as a GPU run writes them) is read to the CPU."""
    registry = list(torch.serialization._package_registry)
    monkeypatch.setattr(
        torch.serialization,
        "_package_registry",
        [(0, _tag_storages_as("cuda:0"), registry[0][2]), *registry],
    )
    path = save_checkpoint(tmp_path / "gpu.pt", {"w": torch.arange(4.0), "epoch": 3})
    monkeypatch.setattr(torch.serialization, "_package_registry", registry)
    with pytest.raises(RuntimeError, match="CUDA"):  # what a device-mapped load meets here
        torch.load(path, weights_only=True)
    state = load_checkpoint(path)
    assert state["w"].device.type == "cpu" and state["w"].tolist() == [0, 1, 2, 3]


def test_fused_sgd_stays_fused_after_loading_a_plain_sgd_state() -> None:
    model = torch.nn.Linear(4, 2)
    plain = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 4)).sum().backward()
    plain.step()
    fused = build_optimizer(model, lr=0.1)
    assert all(g["fused"] for g in fused.param_groups)
    with pytest.raises(ValueError):  # two groups (decay / no decay) vs one
        load_optimizer_state(fused, plain.state_dict())
    again = build_optimizer(model, lr=0.1, fused=False)
    again.step()
    load_optimizer_state(fused, again.state_dict())
    assert all(g["fused"] for g in fused.param_groups)


# -- precision follows the CPU ------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "flags", "expected"),
    [
        ("x86_64", "fpu sse avx2 avx512f avx512bw avx512_vnni", None),
        ("x86_64", "fpu sse avx2 fma", None),
        ("x86_64", "fpu avx2 avx512f avx512_bf16", "avx512_bf16"),
        ("x86_64", "fpu avx2 avx512f amx_bf16 amx_tile", "amx_bf16"),
        ("aarch64", "fp asimd sve bf16 i8mm", "bf16"),
        ("aarch64", "fp asimd", None),
    ],
)
def test_cpu_bf16_probe_reads_the_cpu(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    machine: str,
    flags: str,
    expected: str | None,
) -> None:
    key = "flags" if machine == "x86_64" else "Features"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\n{key}\t\t: {flags}\n\nprocessor\t: 1\n{key}: {flags}\n")
    monkeypatch.setattr(precision, "_CPUINFO", str(cpuinfo))
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, probe, raising=False)
    assert precision.cpu_bf16_support() == expected
    assert precision.resolve_precision(None, "cpu") == ("bf16" if expected else "fp32")


def test_torch_probe_wins_over_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "_CPUINFO", "/nonexistent/cpuinfo")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert precision.cpu_bf16_support() == "avx512_bf16"


def test_training_log_says_why_this_precision(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: None)
    caplog.set_level(logging.INFO, logger="recordkit_train.engine")
    cfg = tiny_config(data, tmp_path, epochs=1, image_size=16, precision=None)
    train(cfg, device="cpu")
    assert "fp32 (default: this CPU has no native bf16" in caplog.text


# -- a CUDA torch that cannot use the driver is an error, not a CPU run ---------------------


DRIVER_535 = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)


@pytest.fixture
def driver_535(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with a CUDA 12 driver and a CUDA 13 torch that cannot use it."""
    version = tmp_path / "nvidia-version"
    version.write_text(DRIVER_535)
    monkeypatch.setattr(devices, "_DRIVER_VERSION_FILE", str(version))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")


def test_driver_version_and_its_cuda() -> None:
    assert devices.driver_cuda_major("535.104.05") == 12
    assert devices.driver_cuda_major("580.65.06") == 13
    assert devices.driver_cuda_major("470.1") == 11
    assert devices.driver_cuda_major("390.1") is None
    assert devices.driver_cuda_major("unknown") is None


@pytest.mark.usefixtures("driver_535")
def test_unusable_gpu_stops_training_with_one_line(data: Path, tmp_path: Path) -> None:
    assert devices.nvidia_driver_version() == "535.104.05"
    result = CliRunner().invoke(
        main, ["run", "--data", str(data), "--out", str(tmp_path / "r"), "--epochs", "1"]
    )
    assert_one_line_error(
        result, "driver 535.104.05", "CUDA 13.0", "driver >= 580", "whl/cu126", "--device cpu"
    )
    assert not (tmp_path / "r").exists()
    with pytest.raises(devices.DeviceError, match="CUDA 13.0"):
        distributed.setup()
    with pytest.raises(devices.DeviceError, match="CUDA 13.0"):  # checked before the model
        Predictor(None)  # type: ignore[arg-type]
    env = distributed.setup("cpu")  # the way out the message names
    assert env.device.type == "cpu"


def test_cpu_only_torch_on_a_gpu_machine(driver_535: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch, "__version__", "2.14.1+cpu")
    problem = devices.cuda_problem()
    assert problem is not None and "CPU-only build" in problem and "2.14.1+cpu" in problem


def test_no_driver_means_the_cpu_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_DRIVER_VERSION_FILE", str(tmp_path / "absent"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.cuda_problem() is None
    assert distributed.setup().device.type == "cpu"
    with pytest.raises(devices.DeviceError, match="no CUDA device"):
        distributed.setup("cuda")


def test_driver_file_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version = tmp_path / "v"
    monkeypatch.setattr(devices, "_DRIVER_VERSION_FILE", str(version))
    version.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n"
    )
    assert devices.nvidia_driver_version() == "580.65.06"
    version.write_text("garbage\n")
    assert devices.nvidia_driver_version() == "unknown"
