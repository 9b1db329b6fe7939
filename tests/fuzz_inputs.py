"""The input families of the mutation fuzzer (``tests/fuzzing.py``), part 2: what ``pack``,
``convert-rec`` and ``recordkit-train predict`` read (``.lst`` files, MXNet ``.rec`` / ``.idx``,
images, checkpoints).
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fuzz_families import (
    HERE,
    HOSTILE_INTS,
    Case,
    Family,
    Op,
    Wrong,
    cli_op,
    make_special,
    mutate_bytes,
)

# --- .lst files: pack ----------------------------------------------------------------------


class LstFamily(Family):
    """A small image tree with a symlink out of it and a FIFO in it; the .lst is mutated."""

    name = "lst"

    def setup(self, base: Path) -> None:
        import imagegen

        from recordkit.listing import make_lists

        self.root = base / "img"
        imagegen.make_tree(self.root, classes=3, per_class=2, size=(16, 20))
        outside = base / "outside"
        outside.mkdir()
        imagegen.write_image(outside / "o.png", imagegen.index_pixels(7, 16, 20), "PNG", 9)
        (self.root / "c0" / "link.png").symlink_to(outside / "o.png")
        os.mkfifo(self.root / "c1" / "pipe.jpg")
        (self.root / "c2" / "dir.jpg").mkdir()
        (self.root / "c2" / "caf\udce9.jpg").write_bytes(
            (self.root / "c2" / "img_00004.jpg").read_bytes()
        )
        res = make_lists(base / "data", self.root, recursive=True, shuffle=True)
        self.lst = res.files["all"].read_bytes()

    def mutant(self, rng: random.Random, case: Case) -> None:
        lst = case.path / "data.lst"
        data = self.lst
        mutations = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            if rng.random() < 0.6:
                data, what = self._edit_line(rng, data)
            else:
                data, what = mutate_bytes(rng, data)
            mutations.append(what)
        lst.write_bytes(data)
        if rng.random() < 0.04:
            mutations = [make_special(rng, lst)]
        case.mutation = "+".join(mutations)
        case.info["lst"] = lst

    def _edit_line(self, rng: random.Random, data: bytes) -> tuple[bytes, str]:
        lines = data.split(b"\n")[:-1]
        if not lines:
            return data + b"0\t0.000000\tc0/img_00000.jpg\n", "line:add"
        k = rng.randrange(len(lines))
        fields = lines[k].split(b"\t")
        kind = rng.choice(["index", "label", "label", "path", "path", "path", "fields", "lines"])
        if kind == "index":
            fields[0] = rng.choice(
                [str(v).encode() for v in HOSTILE_INTS] + [b"1_0", b"x", b"", b"1.5", b"1e3"]
            )
        elif kind == "label":
            j = rng.randrange(1, len(fields) - 1) if len(fields) > 2 else 1
            value = rng.choice(
                [
                    b"1e9",
                    b"1e30",
                    b"-1",
                    b"nan",
                    b"inf",
                    b"0.5",
                    b"33554432",
                    b"4294967296",
                    b"1048575",
                    b"1048576",
                    b"2.000000",
                    b"",
                    b"0x10",
                    b"1_0",
                ]
            )
            if len(fields) > 2:
                fields[j] = value
            if rng.random() < 0.2:
                fields[1:-1] = [b"1.000000"] * rng.choice([2, 1000])
        elif kind == "path":
            fields[-1] = rng.choice(
                [
                    b"/dev/zero",
                    b"/dev/null",
                    b"c1/pipe.jpg",
                    b"c2/dir.jpg",
                    b"c0/link.png",
                    b"../outside/o.png",
                    os.fsencode(self.root.parent / "outside" / "o.png"),
                    b"c0/a\x00b.jpg",
                    b"c2/caf\xe9.jpg",
                    b"c2/caf\xe9-missing.jpg",
                    b"missing.jpg",
                    b"x" * 5000 + b".jpg",
                    b"",
                    b" ",
                    b"c0/../c1/img_00002.jpg",
                    b"/",
                    b".",
                ]
            )
        elif kind == "fields":
            fields = rng.choice([fields[:2], fields + [b"extra"], [b"\t".join(fields)], []])
        else:
            action = rng.choice(["dup", "delete", "crlf", "blank", "bom", "many"])
            if action == "dup":
                lines.insert(k, lines[k])
            elif action == "delete":
                del lines[k]
            elif action == "crlf":
                lines = [line + b"\r" for line in lines]
            elif action == "blank":
                lines.insert(k, b"\t\t")
            elif action == "bom":
                lines[0] = b"\xef\xbb\xbf" + lines[0]
            else:
                lines.extend(lines * 50)
            return b"".join(line + b"\n" for line in lines), f"lines:{action}"
        if k < len(lines):
            lines[k] = b"\t".join(fields)
        return b"".join(line + b"\n" for line in lines), f"line:{kind}"

    def ops(self, case: Case) -> list[tuple[str, Op]]:
        import recordkit
        from recordkit.cli import main
        from recordkit.pack import PackOptions, pack

        lst = case.info["lst"]

        def check_out(out: Path, refused: bool) -> None:
            manifest = out / "recordkit.json"
            if refused:
                if manifest.exists():
                    raise Wrong("a refused pack left a manifest")
                return
            rep = recordkit.verify(out, images=True)
            if not rep.ok:
                raise Wrong(f"a pack that succeeded does not verify: {rep.problems[0]}")

        def api() -> str:
            out = case.path / "out-api"
            opts = PackOptions(out=out, lists=(lst,), threads=2, shard_size=4, fsync=False)
            try:
                pack(None, self.root, opts)
            except recordkit.RecordkitError:
                check_out(out, True)
                raise
            check_out(out, False)
            return "ok"

        def cli() -> str:
            out = case.path / "out-cli"
            args = ["pack", "-q", "--threads", "2", "--shard-size", "4", "--list", lst]
            outcome = cli_op(main, [*args, self.root, "--out", out])
            check_out(out, outcome == "refused")
            return outcome

        return [("pack", api), ("cli-pack", cli)]


# --- MXNet .rec / .idx: convert-rec --------------------------------------------------------


class RecFamily(Family):
    name = "rec"

    def setup(self, base: Path) -> None:
        from recordkit.interop import ConvertOptions, convert_rec, read_idx

        fix = HERE / "fixtures" / "mxnet"
        self.files = {}
        for name in ("single", "multi"):
            for ext in (".rec", ".idx", ".lst"):
                self.files[name + ext] = (fix / (name + ext)).read_bytes()
        self.offsets = {n: [o for _, o in read_idx(fix / f"{n}.idx")] for n in ("single", "multi")}
        self.out = base / "out"  # what --out holds before: another split
        convert_rec(fix / "single.rec", ConvertOptions(out=self.out, split="train", fsync=False))

    def mutant(self, rng: random.Random, case: Case) -> None:
        name = rng.choice(["single", "multi"])
        paths = {}
        for ext in (".rec", ".idx", ".lst"):
            paths[ext] = case.path / f"{name}{ext}"
            paths[ext].write_bytes(self.files[name + ext])
        r = rng.random()
        rec = bytearray(self.files[name + ".rec"])
        if r < 0.06:
            target = rng.choice(list(paths.values()))
            case.mutation = make_special(rng, target)
        elif r < 0.4:
            off = rng.choice(self.offsets[name])
            field_ = rng.choice(["label", "flag", "id", "length", "cflag"])
            if field_ == "label":
                value = rng.choice(
                    [2.0**25, 2.0**31, float("nan"), float("inf"), -1.0, 0.5, 1e30, 2.0**20]
                )
                struct.pack_into("<f", rec, off + 8 + 4, value)
            elif field_ == "flag":
                struct.pack_into("<I", rec, off + 8, rng.choice([1, 2, 1000, 2**31, 2**32 - 1]))
            elif field_ == "id":
                struct.pack_into("<Q", rec, off + 8 + 8, rng.choice([2**63, 2**64 - 1, 5]))
            else:
                (lrec,) = struct.unpack_from("<I", rec, off + 4)
                if field_ == "length":
                    lrec = (lrec & ~((1 << 29) - 1)) | rng.choice([0, 3, (1 << 29) - 1])
                else:
                    lrec = (lrec & ((1 << 29) - 1)) | (rng.randrange(8) << 29)
                struct.pack_into("<I", rec, off + 4, lrec)
            paths[".rec"].write_bytes(bytes(rec))
            case.mutation = f"header:{field_}"
        elif r < 0.8:
            new, case.mutation = mutate_bytes(rng, bytes(rec))
            paths[".rec"].write_bytes(new)
        else:
            which = rng.choice([".idx", ".lst"])
            new, kind = mutate_bytes(rng, self.files[name + which])
            paths[which].write_bytes(new)
            case.mutation = f"{which}:{kind}"
        case.info.update(paths=paths, use_idx=rng.random() < 0.7, use_lst=rng.random() < 0.5)

    def ops(self, case: Case) -> list[tuple[str, Op]]:
        import recordkit
        from recordkit.cli import main
        from recordkit.interop import ConvertOptions, convert_rec

        paths = case.info["paths"]
        idx = paths[".idx"] if case.info["use_idx"] else None
        lst = paths[".lst"] if case.info["use_lst"] else None

        def run(out: Path, call: Callable[[], str]) -> str:
            shutil.copytree(self.out, out)
            before = _tree(out)
            try:
                outcome = call()
            except recordkit.RecordkitError:
                outcome = "refused"
                if _tree(out) != before:
                    raise Wrong("a failed convert-rec changed what --out held") from None
                raise
            if outcome == "refused":
                if _tree(out) != before:
                    raise Wrong("a failed convert-rec changed what --out held")
            elif not recordkit.verify(out).ok:
                # images are copied, not decoded (docs/CONVERT.md): a damaged image inside an
                # intact .rec is found by `recordkit verify --decode`, not here
                raise Wrong("a conversion that succeeded does not verify")
            return outcome

        def api() -> str:
            out = case.path / "out-api"
            opts = ConvertOptions(out=out, split="val", fsync=False)
            return run(out, lambda: (convert_rec(paths[".rec"], opts, idx=idx, lst=lst), "ok")[1])

        def cli() -> str:
            out = case.path / "out-cli"
            args = ["convert-rec", "-q", paths[".rec"], "--out", out, "--split", "val"]
            args += ["--idx", idx] if idx else []
            args += ["--lst", lst] if lst else []
            return run(out, lambda: cli_op(main, args))

        return [("convert", api), ("cli-convert", cli)]


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


# --- images: pack, verify --decode ---------------------------------------------------------


class ImagesFamily(Family):
    name = "images"

    def setup(self, base: Path) -> None:
        import imagegen

        self.base = base / "img"
        (self.base / "a").mkdir(parents=True)
        imagegen.write_image(
            self.base / "a" / "rgb.jpg", imagegen.index_pixels(1, 24, 32), "JPEG", 90
        )
        imagegen.make_png_rgba(self.base / "a" / "rgba.png", 24, 32)
        imagegen.make_grayscale_jpeg(self.base / "a" / "gray.jpg", 24, 32)
        imagegen.make_palette_png(self.base / "a" / "pal.png", 24, 32, transparent=True)
        imagegen.make_exif_rotated_jpeg(self.base / "a" / "exif.jpg")
        self.names = sorted(p.name for p in (self.base / "a").iterdir())
        self.lst = "".join(f"{k}\t0.000000\ta/{n}\n" for k, n in enumerate(self.names)).encode()

    def mutant(self, rng: random.Random, case: Case) -> None:
        root = case.path / "img"
        shutil.copytree(self.base, root)
        name = rng.choice(self.names)
        path = root / "a" / name
        data = path.read_bytes()
        r = rng.random()
        if r < 0.08:
            case.mutation = make_special(rng, path)
        elif r < 0.35:
            new, case.mutation = self._header(rng, data)
            path.write_bytes(new)
        else:
            new, case.mutation = mutate_bytes(rng, data)
            path.write_bytes(new)
        case.mutation = f"{name}:{case.mutation}"
        (case.path / "data.lst").write_bytes(self.lst)
        case.info.update(root=root, resize=rng.choice([0, 16]))

    def _header(self, rng: random.Random, data: bytes) -> tuple[bytes, str]:
        """Set the image's declared size (PNG IHDR with its CRC fixed, or JPEG SOF)."""
        w, h = rng.choice([(13000, 13000), (65535, 65535), (0, 0), (1, 100000), (2**31 - 1, 1)])
        blob = bytearray(data)
        if data.startswith(b"\x89PNG"):
            struct.pack_into(">II", blob, 16, w, h)
            struct.pack_into(">I", blob, 29, zlib.crc32(bytes(blob[12:29])))
            return bytes(blob), f"ihdr:{w}x{h}"
        at = next(
            (i for i in range(2, len(blob) - 9) if blob[i] == 0xFF and blob[i + 1] in (0xC0, 0xC2)),
            None,
        )
        if at is None:
            return data, "sof:none"
        struct.pack_into(">HH", blob, at + 5, min(h, 65535), min(w, 65535))
        return bytes(blob), f"sof:{w}x{h}"

    def ops(self, case: Case) -> list[tuple[str, Op]]:
        import recordkit
        from recordkit.cli import main
        from recordkit.imaging import ImageOptions
        from recordkit.pack import PackOptions, pack

        root, lst = case.info["root"], case.path / "data.lst"

        def api() -> str:
            out = case.path / "out-api"
            opts = PackOptions(
                out=out,
                lists=(lst,),
                threads=2,
                shard_size=3,
                fsync=False,
                image=ImageOptions(resize=case.info["resize"]),
            )
            pack(None, root, opts)  # bad images are skipped: this must succeed
            rep = recordkit.verify(out, images=True)
            if not rep.ok:
                raise Wrong(f"packed images do not verify: {rep.problems[0]}")
            return "ok"

        def cli() -> str:
            out = case.path / "out-cli"
            args = ["pack", "-q", "--strict", "--pass-through", "--list", lst, root, "--out", out]
            outcome = cli_op(main, args)
            if outcome == "refused" and (out / "recordkit.json").exists():
                raise Wrong("a refused --strict pack left a manifest")
            if outcome == "ok" and not recordkit.verify(out, images=True).ok:
                raise Wrong("kept images do not verify")
            return outcome

        return [("pack", api), ("cli-pack-strict", cli)]


# --- checkpoints: predict ------------------------------------------------------------------


class CheckpointFamily(Family):
    name = "checkpoints"

    def setup(self, base: Path) -> None:
        import imagegen
        import torch

        from recordkit_train.checkpoint import save_checkpoint
        from recordkit_train.config import TrainConfig
        from recordkit_train.models import build_model

        torch.set_num_threads(1)
        cfg = TrainConfig(data="shards", arch="resnet18", image_size=32, epochs=1)
        self.state = {
            "model": build_model("resnet18", 3).state_dict(),
            "config": cfg.to_dict(),
            "classes": ["a", "b", "c"],
            "epoch": 1,
            "best_metric": 0.5,
        }
        self.base = save_checkpoint(base / "base.pt", self.state)
        self.image = imagegen.write_image(
            base / "x.jpg", imagegen.index_pixels(3, 40, 48), "JPEG", 90
        )

    def mutant(self, rng: random.Random, case: Case) -> None:
        import copy

        import torch

        from recordkit_train.checkpoint import save_checkpoint

        path = case.path / "ckpt.pt"
        r = rng.random()
        if r < 0.06:
            shutil.copy(self.base, path)
            case.mutation = make_special(rng, path)
        elif r < 0.12:
            import pickle

            class Evil:
                def __reduce__(self) -> tuple[Any, ...]:
                    return (os.system, ("true",))

            if rng.random() < 0.5:
                torch.save({"model": Evil(), "config": {}}, path)
            else:
                path.write_bytes(pickle.dumps({"model": Evil(), "config": {}}))
            case.mutation = "pickled-code"
            case.info["must_refuse"] = True
        elif r < 0.7:
            state = dict(self.state)
            state["config"] = copy.deepcopy(self.state["config"])
            case.mutation = self._structure(rng, state)
            save_checkpoint(path, state)
        else:
            data = self.base.read_bytes()
            if rng.random() < 0.5:  # damage the zip's small records, not the tensor bytes
                at = len(data) - rng.randrange(1, 4096)
                data = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
                case.mutation = "tail-flip"
            else:
                data, case.mutation = mutate_bytes(rng, data)
            path.write_bytes(data)
        case.info["path"] = path

    def _structure(self, rng: random.Random, state: dict[str, Any]) -> str:
        import torch

        key = rng.choice(["config", "config", "config", "classes", "model", "epoch", "drop"])
        if key == "config":
            if rng.random() < 0.3:
                state["config"] = rng.choice(["resnet18", ["resnet18"], 7, None, {"arch": 1}])
                return f"config={str(state['config'])[:20]}"
            name = rng.choice(list(state["config"]))
            state["config"][name] = rng.choice(
                [-1, 0, 10**100, 1e309, float("nan"), "abc", None, [], {}, True, 10**9, "resnet9"]
            )
            return f"config.{name}"
        if key == "classes":
            state["classes"] = rng.choice(
                ["abc", [1, 2, 3], ["a"] * 1000, torch.zeros(3), None, [None]]
            )
            return "classes"
        if key == "model":
            model = dict(state["model"])
            choice = rng.choice(
                ["fc-1d", "fc-0d", "fc-int", "fc-str", "fc-huge", "drop-key", "list"]
            )
            if choice == "fc-1d":
                model["fc.weight"] = torch.zeros(3)
            elif choice == "fc-0d":
                model["fc.weight"] = torch.tensor(1.0)
            elif choice == "fc-int":
                model["fc.weight"] = 3
            elif choice == "fc-str":
                model["fc.weight"] = "x"
            elif choice == "fc-huge":
                model["fc.weight"] = torch.zeros(100_000, 1).expand(100_000, 512)
            elif choice == "drop-key":
                del model[rng.choice(list(model))]
            else:
                state["model"] = list(model.values())[:3]
                return "model:list"
            state["model"] = model
            return f"model:{choice}"
        if key == "epoch":
            state["epoch"] = rng.choice(["x", 1.5, None, 10**30, [1]])
            return "epoch"
        del state[rng.choice(["model", "config", "classes", "epoch"])]
        return "drop"

    def ops(self, case: Case) -> list[tuple[str, Op]]:
        from recordkit_train.cli import main
        from recordkit_train.predict import load_trained_model

        path = case.info["path"]
        must_refuse = case.info.get("must_refuse", False)

        def api() -> str:
            load_trained_model(path)
            if must_refuse:
                raise Wrong("a checkpoint with pickled code was loaded")
            return "ok"

        def cli() -> str:
            outcome = cli_op(main, ["predict", "--checkpoint", path, self.image, "--device", "cpu"])
            if must_refuse and outcome == "ok":
                raise Wrong("a checkpoint with pickled code was used")
            return outcome

        return [("load", api), ("cli-predict", cli)]
