"""The ``recordkit`` command line: a thin skin over the library.

Each command parses its options, calls the library, and prints. Errors a user can cause
(:class:`~recordkit.errors.RecordkitError`, missing files) end as one ``Error: …`` line and a
non-zero exit code, never a traceback. Heavy modules are imported inside the commands that need
them so that ``recordkit list`` starts fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from recordkit import __version__
from recordkit.errors import RecordkitError

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def one_line(text: str) -> str:
    """``text`` as one printable line: control characters (a newline in a file name) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def user_errors(fn: F) -> F:
    """Turn library errors into ``Error: <message>`` and exit code 1 (2 is click's usage)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RecordkitError as exc:
            raise click.ClickException(one_line(str(exc))) from None
        except OSError as exc:
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            raise click.ClickException(one_line(f"{exc.strerror or exc}{where}")) from None
        except ImportError as exc:
            if "pip install" not in str(exc):  # not a missing extra: a bug, keep the traceback
                raise
            raise click.ClickException(one_line(str(exc))) from None

    return wrapper  # type: ignore[return-value]


class DatasetLocation(click.ParamType):
    """A shard directory (or file) as a :class:`~pathlib.Path`, or a dataset URL (``s3://``,
    ``gs://``, ``http(s)://``) kept as the string, which ``click.Path`` would mangle."""

    name = "path_or_url"

    def __init__(self, **path_kwargs: Any) -> None:
        self.path = click.Path(path_type=Path, **path_kwargs)

    def convert(self, value: Any, param: Any, ctx: Any) -> Path | str:
        from recordkit.remote.urls import is_url

        if is_url(value):
            return str(value)
        return self.path.convert(value, param, ctx)


def remote_options(fn: F) -> F:
    """``--cache-dir``, ``--cache-limit`` and ``--remote-read`` for commands reading batches."""
    fn = click.option(
        "--remote-read",
        type=click.Choice(["auto", "cache", "direct"]),
        default="auto",
        show_default=True,
        help="Remote data: stream whole shards through the cache, or range-read each record "
        "(auto: cache for training and DALI, direct otherwise).",
    )(fn)
    fn = click.option(
        "--cache-limit",
        default=None,
        help="Most bytes the shard cache holds, e.g. 50GB [default: RECORDKIT_CACHE_LIMIT, "
        "else 20GB].",
    )(fn)
    fn = click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Shard cache for remote data [default: RECORDKIT_CACHE, else ~/.cache/recordkit].",
    )(fn)
    return fn


def make_remote(cache_dir: Path | None, cache_limit: str | None, read: str) -> Any:
    """The :class:`~recordkit.loaders.streaming.RemoteOptions` of those options."""
    from recordkit.loaders.streaming import RemoteOptions
    from recordkit.sizes import parse_size

    limit = parse_size(cache_limit) if cache_limit is not None else None
    return RemoteOptions(cache_dir=cache_dir, cache_limit=limit, read=read)


class _NoBar:
    """What :func:`_progress_bar` gives when no bar is shown: counts, draws nothing, and needs
    no tqdm import (0.03-0.05 s of a command's start)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _progress_bar(total: int, unit: str, desc: str, *, quiet: bool = False, **kw: Any):
    """A tqdm bar on a terminal; a no-op object otherwise (CI logs, pipes, --quiet)."""
    if quiet or not sys.stderr.isatty():
        return _NoBar(total)
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, leave=False, **kw)


def _bar_callback(bar: Any) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that moves ``bar`` (the total may grow)."""

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return progress


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="recordkit")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """recordkit: image folders → sharded TFRecord datasets → DALI / PyTorch batches.

    \b
    recordkit list mydata img_data --recursive --train-ratio 0.95
    recordkit pack mydata img_data --resize 480 --quality 95 --threads 16
    recordkit verify shards/
    recordkit inspect shards/ --json
    """
    import warnings

    from recordkit.logsetup import setup_logging

    setup_logging(verbose)
    # Pillow warns (two lines on stderr) above 89 Mpx; recordkit's own limits decide instead
    # and say so in the skip reason (recordkit.memory).
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")


# --- list ------------------------------------------------------------------------------------
@main.command("list", context_settings=CONTEXT_SETTINGS)
@click.argument("prefix", type=click.Path(path_type=Path))
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--recursive/--no-recursive",
    default=False,
    show_default=True,
    help="Walk subfolders; each folder holding images becomes a class (label in walk order).",
)
@click.option(
    "--train-ratio", type=float, default=1.0, show_default=True, help="Fraction for PREFIX_train."
)
@click.option(
    "--test-ratio", type=float, default=0.0, show_default=True, help="Fraction for PREFIX_test."
)
@click.option(
    "--exts",
    default=".jpeg,.jpg,.png",
    show_default=True,
    help="Comma-separated extensions, matched case-insensitively (im2rec lower-cases the file's "
    "suffix but not --exts itself).",
)
@click.option(
    "--chunks",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Split the list into N chunk files (PREFIX_0…).",
)
@click.option(
    "--shuffle/--no-shuffle",
    default=True,
    show_default=True,
    help="Shuffle as im2rec does: random.seed(100) then random.shuffle.",
)
@click.option("-q", "--quiet", is_flag=True, help="Do not print the class table and summary.")
@user_errors
def list_cmd(
    prefix: Path,
    root: Path,
    recursive: bool,
    train_ratio: float,
    test_ratio: float,
    exts: str,
    chunks: int,
    shuffle: bool,
    quiet: bool,
) -> None:
    """Write im2rec-compatible image lists PREFIX*.lst for the images under ROOT.

    A drop-in for MXNet's `im2rec.py --list`: same walk order, labels, shuffle, line format and
    file names (PREFIX.lst at ratio 1.0, else PREFIX_train.lst, PREFIX_val.lst,
    PREFIX_test.lst; _N suffixes with --chunks). Prints the class table as im2rec does.
    """
    from recordkit.listing import format_class_table, make_lists, normalize_exts

    result = make_lists(
        prefix,
        root,
        recursive=recursive,
        exts=normalize_exts(exts),
        train_ratio=train_ratio,
        test_ratio=test_ratio,
        chunks=chunks,
        shuffle=shuffle,
    )
    if quiet:
        return
    if recursive:
        click.echo(format_class_table(result.classes))
    for key, path in result.files.items():
        click.echo(f"wrote {path} ({result.counts[key]} images)", err=True)


# --- verify ----------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("path", type=DatasetLocation())
@click.option("--no-decode", is_flag=True, help="Check framing, CRCs and index only.")
@click.option(
    "--decode",
    "images",
    is_flag=True,
    help="Also decode every image in full and check its format and size (as slow as decoding "
    "for training).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def verify(path: Path, no_decode: bool, images: bool, quiet: bool) -> None:
    """Check a shard directory (or one .tfrecord file) end to end.

    Every record's CRCs, every .idx line against the file, each record parses as an image
    Example with labels in range (one per record in a single-label split), the manifest's
    record counts, sizes and SHA-256 sums, and no shard file missing from the manifest. With
    --decode every image is decoded too. Prints each problem as FILE: offset N: WHAT and
    exits 1 if there is any.
    """
    from recordkit.verify import verify as verify_path

    if images and no_decode:
        raise click.UsageError("--decode and --no-decode exclude each other")
    total = _total_bytes(path)
    with _progress_bar(total, "B", "verify", quiet=quiet, unit_scale=True) as bar:
        report = verify_path(path, decode=not no_decode, images=images, progress=bar.update)
    for w in report.warnings:
        click.echo(one_line(f"warning: {w}"), err=True)
    for p in report.problems:
        click.echo(one_line(str(p)))
    click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


def _total_bytes(path: Path | str) -> int:
    if isinstance(path, str):  # a URL: verify reads its manifest again, and says what fails
        try:
            from recordkit.remote.manifest import read_remote_manifest

            m = read_remote_manifest(path)
        except (RecordkitError, ImportError):
            return 0
        return sum(s.bytes for s in m.splits.values())
    if path.is_file():
        return path.stat().st_size
    try:
        from recordkit.format.manifest import read_manifest

        m = read_manifest(path)
    except RecordkitError:
        return 0
    return sum(s.bytes for s in m.splits.values())


# --- inspect ---------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("path", type=DatasetLocation())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--max-records",
    type=click.IntRange(min=1),
    default=None,
    help="Scan at most N records per split (a quick sample).",
)
@click.option(
    "--classes",
    "max_classes",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Class histogram rows to print per split.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def inspect(
    path: Path, as_json: bool, max_records: int | None, max_classes: int, quiet: bool
) -> None:
    """Summarize a shard directory: splits, records, class histogram, image sizes, bytes."""
    from recordkit.dataset import open_dataset
    from recordkit.summary import format_summary, inspect_dataset

    ds = open_dataset(path)
    total = sum(len(s) for s in ds.splits.values())
    if max_records is not None:
        total = sum(min(len(s), max_records) for s in ds.splits.values())
    with _progress_bar(total, "rec", "inspect", quiet=quiet) as bar:
        info = inspect_dataset(ds, max_records=max_records, progress=bar.update)
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(format_summary(info, max_classes=max_classes))


# --- index -----------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Index file to write (one input only). Default: the input's stem + .idx.",
)
@click.option("--no-crc", is_flag=True, help="Do not check CRCs while scanning.")
@user_errors
def index(files: tuple[Path, ...], output: Path | None, no_crc: bool) -> None:
    """Build DALI-format .idx files for TFRecord FILES (like DALI's tfrecord2idx).

    Works on any TFRecord file, not only recordkit's. Each line is "<offset> <size>".
    """
    from recordkit.format.index import build_index, index_path_for, write_index

    if output is not None and len(files) > 1:
        raise click.UsageError("--output takes exactly one input file")
    for f in files:
        if not f.is_file():
            raise RecordkitError(f"no such file: {f}")
        entries = build_index(f, verify_crc=not no_crc)
        dest = output if output is not None else index_path_for(f)
        if dest.resolve() == f.resolve():
            raise RecordkitError(f"refusing to overwrite the data file {f} with its index")
        write_index(entries, dest)
        click.echo(f"{dest}: {len(entries)} records")


# --- pack ------------------------------------------------------------------------------------
def _parse_part(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected K/N such as 0/4, got {value!r}") from None
    if n < 1 or not 0 <= k < n:
        raise click.BadParameter(f"expected 0 <= K < N, got {value!r}")
    return (k, n)


def _parse_bytes(ctx: click.Context, param: click.Parameter, value: str) -> int:
    from recordkit.sizes import parse_size

    try:
        return parse_size(value)
    except RecordkitError as exc:
        raise click.BadParameter(str(exc)) from None


def _shard_options(bytes_help: str) -> Callable[[F], F]:
    """``--shard-size``, ``--shard-bytes``, ``--overwrite``: the same for pack and convert-rec."""

    def decorate(fn: F) -> F:
        for option in reversed(
            (
                click.option(
                    "--shard-size",
                    type=click.IntRange(min=1),
                    default=None,
                    help="Records per shard (overrides --shard-bytes).",
                ),
                click.option(
                    "--shard-bytes",
                    default="128MiB",
                    show_default=True,
                    callback=_parse_bytes,
                    help=bytes_help,
                ),
                click.option(
                    "--overwrite", is_flag=True, help="Replace the split if OUT already holds it."
                ),
            )
        ):
            fn = option(fn)
        return fn

    return decorate


@main.command("pack", context_settings=CONTEXT_SETTINGS)
@click.argument("args", nargs=-1, metavar="PREFIX ROOT")
@click.option(
    "--list",
    "lists",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Pack this .lst file (repeatable) instead of finding PREFIX*.lst; then give only ROOT.",
)
@click.option(
    "--split",
    default="train",
    show_default=True,
    help="Split name of PREFIX.lst, PREFIX_N.lst and --list files without _train/_val/_test.",
)
@click.option(
    "-o",
    "--out",
    default="shards",
    show_default=True,
    help="Shard directory, or a URL (s3://bucket/ds/, gs://…, https://… with PUT): shards are "
    "staged locally and uploaded as each finishes, the manifest last. Other splits already "
    "there are kept.",
)
@click.option(
    "--staging",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With a URL --out: local directory for shards waiting for upload (each is deleted "
    "once uploaded). [default: $RECORDKIT_STAGING, else $TMPDIR/recordkit-staging-UID; then a "
    "folder per URL]",
)
@click.option(
    "--resize",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Resize the shorter edge to N pixels (0: keep the size). Never enlarges unless --upscale "
    "(im2rec does).",
)
@click.option("--upscale", is_flag=True, help="Also enlarge images smaller than --resize.")
@click.option(
    "--resample",
    type=click.Choice(["fast", "area"]),
    default="fast",
    show_default=True,
    help="Shrinking filter: fast = Gaussian prefilter + bilinear (antialiased, ~4x cheaper), "
    "area = OpenCV INTER_AREA (about 1-2 dB PSNR closer to Lanczos). im2rec uses plain "
    "bilinear (aliased).",
)
@click.option("--center-crop", is_flag=True, help="Crop the centre square (as im2rec).")
@click.option(
    "--quality",
    type=click.IntRange(0, 100),
    default=95,
    show_default=True,
    help="JPEG quality 1-100; with --encoding .png the zlib level (above 9 means 9, as im2rec).",
)
@click.option(
    "--encoding",
    type=click.Choice([".jpg", ".png"]),
    default=".jpg",
    show_default=True,
    help="Encoding of the stored images.",
)
@click.option(
    "--color",
    type=click.Choice(["1", "0", "-1"]),
    default="1",
    show_default=True,
    help="1: RGB, 0: grayscale, -1: grayscale sources stay gray, others RGB (im2rec's cv2 "
    "flag). Unlike im2rec: EXIF orientation is applied and CMYK, palette, 16-bit and alpha "
    "images become clean 8-bit RGB (or gray; alpha on white).",
)
@click.option(
    "--pass-through",
    is_flag=True,
    help="Store JPEG/PNG source bytes unchanged (no resize; still fully decoded to check "
    "them), as im2rec.",
)
@click.option(
    "--pack-label",
    is_flag=True,
    help="Store every label of a multi-label .lst line (default: the first only, as im2rec).",
)
@click.option(
    "--threads",
    "--num-thread",
    "threads",
    type=click.IntRange(min=1),
    default=None,
    help="Worker threads (im2rec: --num-thread). [default: the CPUs this process may use]",
)
@click.option(
    "--pool",
    type=click.Choice(["auto", "threads", "processes"]),
    default="auto",
    show_default=True,
    help="Run the workers as threads, or as processes (faster for thumbnails, where Python "
    "rather than the codec is the work); auto moves to processes once the images prove small. "
    "The shards are the same either way.",
)
@_shard_options("Target shard size, estimated from the source files and --resize before writing.")
@click.option(
    "--resume",
    is_flag=True,
    help="Finish an interrupted pack with the same lists and options, keeping finished shards.",
)
@click.option(
    "--part",
    callback=_parse_part,
    default=None,
    metavar="K/N",
    help="Pack only shards i with i % N == K (machine K of N); then run once with --merge. "
    "In a Slurm job array the default is K = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, "
    "N = SLURM_ARRAY_TASK_COUNT.",
)
@click.option("--merge", is_flag=True, help="Write the manifest once all --part runs finished.")
@click.option(
    "--strict",
    is_flag=True,
    help="Stop at the first bad image (default: skip it), and refuse list entries outside ROOT "
    "('..', absolute paths, symlinks out; im2rec packs them, and so does the default).",
)
@click.option(
    "--memory",
    default=None,
    callback=lambda ctx, param, value: None if value is None else _parse_bytes(ctx, param, value),
    help="Memory the images being decoded may use together; an image whose decoding needs "
    "more is skipped, saying so. [default: half of what this process may still allocate]",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no list of skipped inputs.")
@user_errors
def pack_cmd(
    args: tuple[str, ...],
    lists: tuple[Path, ...],
    split: str,
    out: str,
    staging: Path | None,
    resize: int,
    upscale: bool,
    resample: str,
    center_crop: bool,
    quality: int,
    encoding: str,
    color: str,
    pass_through: bool,
    pack_label: bool,
    threads: int | None,
    pool: str,
    shard_size: int | None,
    shard_bytes: int,
    overwrite: bool,
    resume: bool,
    part: tuple[int, int] | None,
    merge: bool,
    strict: bool,
    memory: int | None,
    quiet: bool,
) -> None:
    """Pack the images of PREFIX*.lst (im2rec lists) under ROOT into TFRecord shards.

    Finds PREFIX.lst, PREFIX_train.lst, PREFIX_val.lst, PREFIX_test.lst (chunks PREFIX_N*.lst
    are joined in chunk order) and writes OUT/{split}-{i:05d}-of-{n:05d}.tfrecord + .idx and,
    last, OUT/recordkit.json. Images are processed on --threads threads; the bytes do not
    depend on the thread count. Unreadable or undecodable images are skipped and listed (in
    the manifest too) unless --strict. See docs/PACK.md.

    \b
    recordkit pack mydata img_data --resize 480 --quality 95 --threads 16
    recordkit pack val/mydata val_img --out shards/       (adds a split)
    recordkit pack mydata img_data --resume               (after an interruption)
    recordkit pack mydata img_data --out s3://bucket/ds/  (uploads; needs recordkit[s3])
    """
    from recordkit.imaging import ImageOptions
    from recordkit.pack import PackOptions, default_threads, pack

    if lists and len(args) == 1:
        prefix, root = None, args[0]
    elif not lists and len(args) == 2:
        prefix, root = args
    else:
        want = "ROOT (with --list)" if lists else "PREFIX ROOT"
        raise click.UsageError(f"expected {want}, got {len(args)} argument(s)")
    try:
        image = ImageOptions(
            resize=resize,
            center_crop=center_crop,
            quality=quality,
            encoding=encoding,
            color=int(color),
            upscale=upscale,
            pass_through=pass_through,
            resample=resample,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if part is None and not merge:
        from recordkit.pack.slurm import array_part

        part = array_part()
        if part is not None:
            click.echo(
                f"part {part[0]}/{part[1]} from the Slurm job array "
                f"(SLURM_ARRAY_TASK_ID={os.environ['SLURM_ARRAY_TASK_ID']})",
                err=True,
            )
    options = PackOptions(
        out=out,
        staging=staging,
        image=image,
        split=split,
        lists=lists,
        pack_label=pack_label,
        threads=threads or default_threads(),
        pool=pool,
        shard_size=shard_size,
        shard_bytes=shard_bytes,
        overwrite=overwrite,
        resume=resume,
        part=part or (0, 1),
        merge=merge,
        strict=strict,
        memory=memory,
    )
    from recordkit.errors import DiskFullError

    try:
        with _progress_bar(0, "img", "pack", quiet=quiet) as bar:
            result = pack(prefix, root, options, progress=_bar_callback(bar))
    except DiskFullError as exc:
        again = "rerun the same command" if merge else "rerun the same command with --resume"
        raise click.ClickException(
            one_line(
                f"{exc} (output directory {out}); its temporary files are removed and finished "
                f"shards kept: free some space, then {again} to continue"
            )
        ) from None
    if not quiet:
        for what, items in (("skipped", result.skipped), ("outside ROOT", result.outside_root)):
            for s in items[:20]:
                click.echo(one_line(f"{what} {s['split']} {s['path']}: {s['reason']}"), err=True)
            if len(items) > 20:
                click.echo(f"... and {len(items) - 20} more {what} (see the manifest)", err=True)
    if result.manifest is None:
        click.echo(f"part {options.part[0]}/{options.part[1]} done; run with --merge when all are")
    click.echo(result.summary())
    if isinstance(result.manifest, str):
        click.echo(f"dataset at {result.out}/ (manifest uploaded last)")


# --- convert-rec -----------------------------------------------------------------------------
@main.command("convert-rec", context_settings=CONTEXT_SETTINGS)
@click.argument("rec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--idx",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The .rec's index (key<TAB>offset): read the records it lists, in its order. "
    "Without it every record is read in file order.",
)
@click.option(
    "--lst",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The im2rec .lst the .rec was made from: file names, and class names from each "
    "label's folder. Checked against the records' ids and labels.",
)
@click.option(
    "--classes",
    "class_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Class names: one per line in label order, or im2rec's 'name label' table. "
    "Overrides names from --lst. [default: from --lst, else 0, 1, ...]",
)
@click.option("--split", default="train", show_default=True, help="Split name of the records.")
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("shards"),
    show_default=True,
    help="Shard directory; other splits already in it are kept.",
)
@_shard_options("Target shard size.")
@click.option(
    "--strict", is_flag=True, help="Stop at a record that is not a JPEG/PNG (default: skip it)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no list of skipped records.")
@user_errors
def convert_rec_cmd(
    rec: Path,
    idx: Path | None,
    lst: Path | None,
    class_file: Path | None,
    split: str,
    out: Path,
    shard_size: int | None,
    shard_bytes: int,
    overwrite: bool,
    strict: bool,
    quiet: bool,
) -> None:
    """Convert an MXNet RecordIO file REC (made by im2rec) into TFRecord shards.

    Image bytes are copied unchanged (no re-encode), with every label, the record id as
    image/index, and format and size read from the image header. Writes
    OUT/{split}-{i:05d}-of-{n:05d}.tfrecord + .idx and, last, OUT/recordkit.json. A damaged
    .rec stops with the byte offset and leaves nothing behind. See docs/CONVERT.md.

    \b
    recordkit convert-rec mydata.rec --out shards/
    recordkit convert-rec mydata_val.rec --idx mydata_val.idx --lst mydata_val.lst --split val
    """
    from recordkit.interop import ConvertOptions, convert_rec

    options = ConvertOptions(
        out=out,
        split=split,
        shard_size=shard_size,
        shard_bytes=shard_bytes,
        overwrite=overwrite,
        strict=strict,
    )
    with _progress_bar(0, "rec", "convert", quiet=quiet) as bar:
        result = convert_rec(
            rec, options, idx=idx, lst=lst, classes=class_file, progress=_bar_callback(bar)
        )
    if not quiet:
        for s in result.skipped[:20]:
            click.echo(
                one_line(f"skipped {s['path']} (offset {s['offset']}): {s['reason']}"), err=True
            )
        if len(result.skipped) > 20:
            click.echo(f"... and {len(result.skipped) - 20} more (see the manifest)", err=True)
    click.echo(result.summary())


# --- bench -----------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("path", type=DatasetLocation(exists=True, file_okay=False))
@click.option("--split", default="train", show_default=True, help="Split to read.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "dali", "torch"]),
    default="auto",
    show_default=True,
    help="Loader backend.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--batches", type=click.IntRange(min=1), default=200, show_default=True)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Untimed batches first (start-up excluded).",
)
@click.option("--image-size", type=click.IntRange(min=1), default=224, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="torch workers / DALI threads [default: usable CPUs].",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N.")
@click.option(
    "--augment/--no-augment",
    "train",
    default=None,
    help="Training augmentation [default: on for the train split].",
)
@click.option("--gpu-decode", is_flag=True, help="torch backend: decode JPEGs on the device.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@remote_options
@user_errors
def bench(
    path: Path,
    split: str,
    backend: str,
    batch_size: int,
    batches: int,
    warmup: int,
    image_size: int,
    workers: int | None,
    device: str,
    train: bool | None,
    gpu_decode: bool,
    as_json: bool,
    cache_dir: Path | None,
    cache_limit: str | None,
    remote_read: str,
) -> None:
    """Measure loader throughput (images/s) over PATH, warm-up excluded (like --test-io).

    Batches come from recordkit.make_loader exactly as training gets them (decode, augment,
    normalize); epochs are re-entered when the split is shorter than the run.
    """
    from recordkit.loaders import make_loader
    from recordkit.loaders.bench import measure_throughput

    try:
        loader = make_loader(
            path,
            split,
            batch_size,
            image_size,
            backend=backend,
            device=device,
            train=train,
            num_workers=workers,
            rank=0,
            world_size=1,
            gpu_decode=gpu_decode,
            remote=make_remote(cache_dir, cache_limit, remote_read),
        )
        result = measure_throughput(loader, batches=batches, warmup=warmup)
    except (KeyError, ValueError, ImportError) as exc:
        raise click.ClickException(one_line(str(exc).strip("'\""))) from None
    result.update(
        backend=getattr(loader, "backend", backend),
        split=split,
        batch_size=batch_size,
        image_size=image_size,
        device=device,
    )
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"{result['images_per_sec']:.1f} images/s ({result['backend']}, {split}, "
            f"batch {batch_size}, {result['images']} images in {result['seconds']:.2f} s)"
        )


# --- show ------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("path", type=DatasetLocation(exists=True, file_okay=False))
@click.option("--split", default="train", show_default=True, help="Split to show.")
@click.option("--augment", is_flag=True, help="Apply training augmentation (crop + flip).")
@click.option("-n", "count", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--cols", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--image-size", type=click.IntRange(min=8), default=160, show_default=True)
@click.option(
    "--backend",
    type=click.Choice(["auto", "dali", "torch"]),
    default="torch",
    show_default=True,
)
@click.option("--seed", type=int, default=0, show_default=True, help="Augmentation seed.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="PNG file to write.",
)
@user_errors
def show(
    path: Path,
    split: str,
    augment: bool,
    count: int,
    cols: int,
    image_size: int,
    backend: str,
    seed: int,
    output: Path,
) -> None:
    """Write a contact sheet of PATH's first N samples with their class names, as a PNG."""
    from recordkit.loaders.preview import contact_sheet

    try:
        sheet = contact_sheet(
            path,
            split,
            n=count,
            cols=cols,
            augment=augment,
            image_size=image_size,
            backend=backend,
            seed=seed,
        )
    except (KeyError, ValueError, ImportError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    sheet.save(output, format="PNG")
    click.echo(f"wrote {output} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":  # pragma: no cover
    main()
