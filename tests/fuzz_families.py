"""The input families of the mutation fuzzer (``tests/fuzzing.py``), part 1: shared pieces,
and shard directories (shards, their ``.idx`` files, ``recordkit.json``).

A family builds its base inputs once per worker (:meth:`Family.setup`), makes a mutant from a
seeded ``random.Random`` (:meth:`Family.mutant`) and names the operations that read it, each a
callable returning ``"ok"`` or ``"refused"`` or raising (:meth:`Family.ops`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

Op = Callable[[], str]  # returns the outcome ("ok" / "refused"), raises Wrong for a bad result


class Wrong(AssertionError):
    """An operation's result is wrong (an oracle failed)."""


# ==============================================================================================
# Byte-level mutations shared by the families


HOSTILE_INTS = [-1, 0, 1, 2**31, 2**32 + 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(2**70)]
HOSTILE_FLOATS = ["NaN", "Infinity", "-Infinity", "1e308", "1e309", "-0.0", "0.5", "1e-300"]


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One random byte-level mutation of ``data``, and its name."""
    blob = bytearray(data)
    n = len(blob)
    kind = rng.choice(
        ["flip", "flip", "byte", "truncate", "insert", "delete", "dup", "zero", "append", "swap"]
    )
    at = rng.randrange(n) if n else 0
    if kind == "flip" and n:
        blob[at] ^= 1 << rng.randrange(8)
    elif kind == "byte" and n:
        blob[at] = rng.randrange(256)
    elif kind == "truncate":
        del blob[at:]
    elif kind == "insert":
        blob[at:at] = rng.randbytes(rng.choice([1, 4, 8, 64]))
    elif kind == "delete" and n:
        del blob[at : at + rng.choice([1, 4, 16, 256])]
    elif kind == "dup" and n:
        end = min(n, at + rng.choice([4, 64, 1024]))
        blob[end:end] = blob[at:end]
    elif kind == "zero" and n:
        end = min(n, at + rng.choice([4, 64, 1024]))
        blob[at:end] = bytes(end - at)
    elif kind == "append":
        blob += rng.choice([b"\0" * 16, rng.randbytes(100), b"\n" * 1000, data[: n // 2]])
    elif kind == "swap" and n > 8:
        a, b = sorted(rng.sample(range(n), 2))
        blob[a], blob[b] = blob[b], blob[a]
    return bytes(blob), kind


SPECIALS = ("fifo", "dev-zero", "directory", "empty", "missing", "self-link", "dev-null")


def make_special(rng: random.Random, path: Path) -> str:
    """Replace ``path`` with something that is not a readable regular file."""
    kind = rng.choice(SPECIALS)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dev-null":
        path.symlink_to("/dev/null")
    elif kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "self-link":
        path.symlink_to(path.name)
    return f"special:{kind}"


def short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def cli_op(main: Any, args: list[Any], *, report_ok: bool = False) -> str:
    """Invoke a click command in-process; ``ok`` / ``refused``, or raise for a bad ending."""
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [str(a) for a in args])
    out = result.output
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        if isinstance(exc, MemoryError):
            raise exc
        raise RuntimeError(f"CLI raised {type(exc).__name__}: {exc}") from None
    if "Traceback (most recent call last)" in out:
        raise RuntimeError("CLI printed a traceback")
    if result.exit_code == 0:
        return "ok"
    lines = out.strip().splitlines()
    if report_ok and result.exit_code == 1 and lines and not lines[-1].startswith("Error: "):
        return "refused"  # verify: problems listed, then the summary
    if result.exit_code not in (1, 2) or not lines or not lines[-1].startswith("Error: "):
        raise Wrong(f"CLI exit {result.exit_code} without a last 'Error:' line: {out[-200:]!r}")
    return "refused"


# ==============================================================================================
# Families


@dataclass
class Case:
    """One mutant: its directory, what was done to it, and what its operations need."""

    number: int
    path: Path
    mutation: str
    info: dict[str, Any] = field(default_factory=dict)


class Family:
    """Builds base inputs once, then mutants and their operations."""

    name = ""

    def setup(self, base: Path) -> None:
        raise NotImplementedError

    def mutant(self, rng: random.Random, case: Case) -> None:
        raise NotImplementedError

    def ops(self, case: Case) -> list[tuple[str, Op]]:
        raise NotImplementedError


# --- shard directories: shards, .idx, recordkit.json ----------------------------------------


class DatasetFamily(Family):
    """A two-split shard directory (train: 10 records in 3 shards, val: 4 in 1)."""

    def setup(self, base: Path) -> None:
        from conftest import make_record, write_shards

        from recordkit.format.example import encode_example

        self.base = base / "ds"
        train = [make_record(i) for i in range(10)]
        val = [make_record(i) for i in range(10, 14)]
        write_shards(self.base, {"train": train, "val": val}, records_per_shard=4)
        self.records = Counter(encode_example(r) for r in [*train, *val])
        self.shards = sorted(p.name for p in self.base.glob("*.tfrecord"))
        self.indexes = sorted(p.name for p in self.base.glob("*.idx"))

    def copy(self, case: Case) -> Path:
        root = case.path / "ds"
        shutil.copytree(self.base, root)
        return root

    def ops(self, case: Case) -> list[tuple[str, Op]]:
        import recordkit
        from recordkit.cli import main
        from recordkit.summary import inspect_dataset

        root = case.info["root"]
        changed = case.info.get("changed", False)  # the files now say something else
        crc_valid = case.info.get("crc_valid", False)  # records rewritten with valid framing

        def read_all() -> Counter[bytes]:
            ds = recordkit.open(root)
            got: Counter[bytes] = Counter()
            for split in ds.values():
                seq = list(split.iter_bytes())
                rand = [split.read_bytes(i) for i in range(len(split))]
                if seq != rand:
                    raise Wrong("sequential and random access disagree")
                for data in seq:
                    if data not in self.records and not crc_valid:
                        raise Wrong("a read returned bytes that were never written")
                    got[data] += 1
            return got

        def verify() -> str:
            rep = recordkit.verify(root)
            if not rep.ok:
                return "refused"
            if changed:
                raise Wrong(f"verify says OK after {case.mutation}")
            if read_all() != self.records:
                raise Wrong("verify says OK but open() reads other records")
            return "ok"

        def open_read() -> str:
            read_all()
            return "ok"

        def inspect() -> str:
            inspect_dataset(root)
            return "ok"

        return [
            ("verify", verify),
            ("open", open_read),
            ("inspect", inspect),
            ("cli-verify", lambda: cli_op(main, ["verify", "-q", root], report_ok=True)),
            ("cli-inspect", lambda: cli_op(main, ["inspect", "-q", root])),
        ]


class ShardsFamily(DatasetFamily):
    name = "shards"

    def mutant(self, rng: random.Random, case: Case) -> None:
        root = case.info["root"] = self.copy(case)
        shard = root / rng.choice(self.shards)
        r = rng.random()
        if r < 0.08:
            case.mutation = make_special(rng, shard)
        elif r < 0.3:
            case.mutation = self._rewrite_record(rng, shard, same_size=r < 0.18)
            case.info["crc_valid"] = True
        else:
            data = shard.read_bytes()
            new, case.mutation = mutate_bytes(rng, data)
            shard.write_bytes(new)
            if new == data:
                return
        case.info["changed"] = True

    def _rewrite_record(self, rng: random.Random, shard: Path, same_size: bool) -> str:
        """Replace one record's payload, framed with valid CRCs (so only semantics are off)."""
        from conftest import make_record

        from recordkit.format import framing
        from recordkit.format.example import encode_example, encode_features

        entries = [tuple(map(int, line.split())) for line in shard.with_suffix(".idx").open()]
        if not entries:
            return "rewrite:empty-shard"
        off, size = rng.choice(entries)
        kind = rng.choice(["garbage", "no-label", "labels", "huge-label", "empty", "other"])
        if same_size:  # index, CRCs and lengths all agree; only the SHA-256 can tell
            blob = shard.read_bytes()
            data = bytearray(blob[off + 12 : off + size - 4])
            at = data.find(b"img")  # inside image/encoded: the Example still parses
            data[at : at + 3] = b"IMG"
            shard.write_bytes(blob[:off] + framing.frame(bytes(data)) + blob[off + size :])
            return "rewrite:same-size"
        payload = {
            "garbage": rng.randbytes(rng.choice([1, 30, 300])),
            "no-label": encode_features({"image/encoded": [b"x"]}),
            "labels": encode_example(make_record(0, labels=(1,) * rng.choice([2, 10_000]))),
            "huge-label": encode_example(make_record(0, labels=(2**62,))),
            "empty": b"",
            "other": encode_example(make_record(99)),
        }[kind]
        blob = shard.read_bytes()
        shard.write_bytes(blob[:off] + framing.frame(payload) + blob[off + size :])
        return f"rewrite:{kind}"


class IndexFamily(DatasetFamily):
    name = "index"

    def mutant(self, rng: random.Random, case: Case) -> None:
        root = case.info["root"] = self.copy(case)
        idx = root / rng.choice(self.indexes)
        original = idx.read_bytes()
        r = rng.random()
        if r < 0.08:
            case.mutation = make_special(rng, idx)
            case.info["changed"] = True
            return
        if r < 0.55:
            new, case.mutation = self._edit_lines(rng, original)
        else:
            new, case.mutation = mutate_bytes(rng, original)
        idx.write_bytes(new)
        case.info["changed"] = _strict_entries(new) != _strict_entries(original)

    def _edit_lines(self, rng: random.Random, data: bytes) -> tuple[bytes, str]:
        lines = data.split(b"\n")[:-1]
        kind = rng.choice(["number", "number", "delete", "dup", "swap", "junk", "blank", "huge"])
        k = rng.randrange(len(lines)) if lines else 0
        if kind == "number" and lines:
            parts = lines[k].split(b" ")
            j = rng.randrange(2)
            value = int(parts[j])
            parts[j] = rng.choice(
                [
                    str(value + rng.choice([-1, 1, 16])).encode(),
                    str(rng.choice(HOSTILE_INTS)).encode(),
                    b"_".join(bytes([c]) for c in parts[j]) or b"_",
                    b"+" + parts[j],
                    b"0" + parts[j],
                    parts[j] + b".0",
                    "٣".encode(),
                    b"",
                ]
            )
            lines[k] = b" ".join(parts)
        elif kind == "delete" and lines:
            del lines[k]
        elif kind == "dup" and lines:
            lines.insert(k, lines[k])
        elif kind == "swap" and len(lines) > 1:
            j = rng.randrange(len(lines))
            lines[k], lines[j] = lines[j], lines[k]
        elif kind == "junk":
            lines.insert(k, rng.choice([b"junk", b"1 2 3", b"\x00\x00", b"-5 10", b"0x10 16"]))
        elif kind == "blank":
            lines.insert(k, b"   ")
        elif kind == "huge":
            lines.extend([b"0 16"] * rng.choice([10, 100_000]))
        return b"".join(line + b"\n" for line in lines), f"line:{kind}"


def _strict_entries(data: bytes) -> list[tuple[int, int]] | None:
    out = []
    for line in data.split(b"\n"):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not all(p.isdigit() and len(p) <= 20 for p in parts):
            return None
        out.append((int(parts[0]), int(parts[1])))
    return out


class ManifestFamily(DatasetFamily):
    name = "manifest"

    def mutant(self, rng: random.Random, case: Case) -> None:
        root = case.info["root"] = self.copy(case)
        path = root / "recordkit.json"
        text = path.read_text()
        r = rng.random()
        if r < 0.06:
            case.mutation = make_special(rng, path)
        elif r < 0.3:
            new, case.mutation = mutate_bytes(rng, text.encode())
            path.write_bytes(new)
        elif r < 0.4:
            path.write_text(self._text_edit(rng, text))
            case.mutation = "text"
        else:
            d = json.loads(text)
            case.mutation = self._json_edit(rng, d)
            path.write_text(json.dumps(d, ensure_ascii=rng.random() < 0.5))
        # recordkit.json says what the directory holds: any edit may be a legitimate manifest
        # (classes renamed, shards moved between splits), so "changed" is not asserted here;
        # verify OK must still mean open() reads exactly the records written.

    def _text_edit(self, rng: random.Random, text: str) -> str:
        kind = rng.choice(["nest", "number", "constant", "dup-key", "bom"])
        if kind == "nest":
            depth = rng.choice([50, 1000, 100_000])
            return text.replace('"pack": {}', '"pack": ' + "[" * depth + "]" * depth, 1)
        if kind == "number":
            return text.replace(
                '"records": 4', '"records": 1' + "0" * rng.choice([20, 400, 5000]), 1
            )
        if kind == "constant":
            return text.replace('"records": 4', '"records": ' + rng.choice(HOSTILE_FLOATS), 1)
        if kind == "dup-key":
            return text.replace('"records": 4,', '"records": 4, "records": 5,', 1)
        return "\ufeff" + text

    def _json_edit(self, rng: random.Random, d: dict[str, Any]) -> str:
        spots = list(_paths(d))
        path, value = rng.choice(spots)
        kind = rng.choice(["value", "value", "value", "delete", "shards", "name"])
        if kind == "shards":
            split = d["splits"][rng.choice(list(d["splits"]))]
            shards = split["shards"]
            op = rng.choice(["drop", "dup", "swap", "move", "empty"])
            if op == "drop" and shards:
                del shards[rng.randrange(len(shards))]
            elif op == "dup" and shards:
                shards.append(dict(rng.choice(shards)))
            elif op == "swap" and len(shards) > 1:
                shards.reverse()
            elif op == "move":
                other = d["splits"][rng.choice(list(d["splits"]))]
                if shards:
                    other["shards"].append(shards.pop())
            elif op == "empty":
                d["splits"] = {}
            return f"shards:{op}"
        if kind == "name":
            shard = rng.choice(d["splits"]["train"]["shards"])
            key = rng.choice(["file", "index"])
            shard[key] = rng.choice(
                [
                    "../../etc/passwd",
                    "/etc/passwd",
                    "a\x00b",
                    "a\nb.tfrecord",
                    "",
                    ".",
                    "..",
                    "x" * 300,
                    "recordkit.json",
                    shard["index" if key == "file" else "file"],
                    "train-00009-of-00003.tfrecord",
                    "sub/dir.tfrecord",
                    "caf\u00e9.tfrecord",
                ]
            )
            return f"name:{key}"
        if kind == "delete" and len(path) > 0:
            parent = _get(d, path[:-1])
            if isinstance(parent, (dict, list)):
                del parent[path[-1]]
            return "delete:" + "/".join(map(str, path))
        new = rng.choice(
            [
                *HOSTILE_INTS,
                True,
                False,
                None,
                1.5,
                4.0,
                float("inf"),
                "abc",
                "",
                "4",
                [],
                {},
                [1, 2],
                {"a": 1},
                "\x00",
                "x" * 10_000,
                -0.0,
            ]
        )
        if not path:
            return "value:root-skipped"
        _get(d, path[:-1])[path[-1]] = new
        return f"value:{'/'.join(map(str, path))}={str(new)[:20]!r}"


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        node = node[key]
    return node
