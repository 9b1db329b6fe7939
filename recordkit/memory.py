"""How much memory image decoding may use here, probed at run time, and a budget to share it.

A decompression bomb need not pass Pillow's pixel limit to hurt: a 13,000 x 13,000 PNG of a
few hundred KB is under it, yet decoding and converting it takes about 2 GB. So before an
image is decoded its cost is estimated from the header (:data:`BYTES_PER_PIXEL` per pixel
plus the file itself) and held against a :class:`MemoryBudget`:

* an image whose cost exceeds the whole budget is refused with one line that says so;
* otherwise it waits until the images being decoded leave room for it.

The budget does not depend on the thread count (a thread that decodes a large image simply
holds more of it), so the same lists and options give the same shards with 1 thread or 16
(DESIGN.md contract 6). It does depend on the machine: the default is half of what
:func:`usable_memory` finds.
"""

from __future__ import annotations

import os
import threading

__all__ = [
    "BYTES_PER_PIXEL",
    "MemoryBudget",
    "decode_cost",
    "default_decode_budget",
    "format_bytes",
    "usable_memory",
]

BYTES_PER_PIXEL = 24
"""Peak bytes per pixel while one image is decoded, converted, resized and encoded.

Measured with ``ru_maxrss`` on 3000 x 3000 inputs (Pillow 13, OpenCV 5): 8-bit RGB 9-15,
1-bit and 16-bit gray 11-12, RGBA / LA / palette with transparency / 16-bit RGBA 21-22
(compositing on white), CMYK JPEG 8. Rounded up to the worst case.
"""

_FALLBACK = 4 << 30


def decode_cost(width: int, height: int, file_bytes: int = 0) -> int:
    """Estimated peak bytes to decode and process one ``width`` x ``height`` image."""
    return max(width, 0) * max(height, 0) * BYTES_PER_PIXEL + max(file_bytes, 0)


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(64).strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _proc_bytes(path: str, key: str) -> int | None:
    """A ``key: N kB`` line of a ``/proc`` file, in bytes; None where absent or unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, then v1), if any."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0" and parts[1] == "":
            base = "/sys/fs/cgroup" + parts[2].rstrip("/")
            limit = _read_int(base + "/memory.max")  # "max" reads as None
            used = _read_int(base + "/memory.current")
            if limit is not None and used is not None:
                return max(limit - used, 0)
    limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    used = _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes")
    if limit is not None and used is not None and limit < 1 << 60:
        return max(limit - used, 0)
    return None


def _rlimit_room() -> int | None:
    """Address space left under ``RLIMIT_AS`` / ``RLIMIT_DATA``, if either is set."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    rooms = []
    for name in ("RLIMIT_AS", "RLIMIT_DATA"):
        which = getattr(resource, name, None)
        if which is None:
            continue
        soft, _ = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY:
            used = _proc_bytes("/proc/self/status", "VmSize") or 0
            rooms.append(max(soft - used, 0))
    return min(rooms) if rooms else None


def usable_memory() -> tuple[int, str]:
    """Bytes this process may still allocate, and where that figure comes from.

    The least of: ``MemAvailable`` (``/proc/meminfo``), the room under the cgroup memory
    limit, and the room under ``RLIMIT_AS`` / ``RLIMIT_DATA``. Falls back to the physical
    memory, then to 4 GiB, where none can be read.

    Returns:
        ``(bytes, source)``, e.g. ``(25_000_000_000, "available memory")``.
    """
    found: list[tuple[int, str]] = []
    avail = _proc_bytes("/proc/meminfo", "MemAvailable")
    if avail is not None:
        found.append((avail, "available memory"))
    cgroup = _cgroup_room()
    if cgroup is not None:
        found.append((cgroup, "room under the cgroup memory limit"))
    rlimit = _rlimit_room()
    if rlimit is not None:
        found.append((rlimit, "room under the address-space limit (ulimit -v)"))
    if found:
        return min(found)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory"
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return _FALLBACK, "a 4 GiB assumption"


def default_decode_budget() -> tuple[int, str]:
    """Half of :func:`usable_memory`, and a phrase saying so (for messages)."""
    usable, source = usable_memory()
    budget = max(usable // 2, 64 << 20)
    return budget, f"half the {format_bytes(usable)} of {source}"


def format_bytes(n: int) -> str:
    """``1.2 GB``, ``340 MB``, ``12 KB`` (decimal units)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class MemoryBudget:
    """Bytes shared by threads that decode images; a thread holds its image's cost meanwhile.

    Args:
        total: The budget in bytes.
        source: Where the figure comes from, for messages (``"half the 8.0 GB of available
            memory"``, ``"--memory"``).
    """

    def __init__(self, total: int, source: str = "") -> None:
        if total < 1:
            raise ValueError(f"a memory budget must be at least 1 byte, got {total}")
        self.total = total
        self.source = source
        self._free = total
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0

    @classmethod
    def probe(cls) -> MemoryBudget:
        """The default budget: half of what this process may still allocate."""
        return cls(*default_decode_budget())

    def refusal(self, cost: int, what: str) -> str | None:
        """The one-line reason ``what`` (costing ``cost`` bytes) cannot be taken, or None."""
        if cost <= self.total:
            return None
        where = f" ({self.source})" if self.source else ""
        return (
            f"{what} needs about {format_bytes(cost)} of memory to decode, more than the "
            f"{format_bytes(self.total)} this process may use{where}"
        )

    def hold(self, cost: int) -> _Hold:
        """Wait until ``cost`` bytes are free (at most the whole budget), hold them, give back.

        Use as ``with budget.hold(cost): ...``.
        """
        return _Hold(self, cost)

    def acquire(self, cost: int) -> int:
        """Wait until ``cost`` bytes (at most the whole budget) are free and take them.

        Returns:
            The bytes taken, to give back with :meth:`release`.
        """
        cost = min(max(cost, 0), self.total)
        with self._lock:
            if self._free >= cost and not self._waiting:  # the common case: no waiting
                self._free -= cost
                return cost
            self._waiting += 1
            try:
                while self._free < cost:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._free -= cost
        return cost

    def release(self, taken: int) -> None:
        """Give back what :meth:`acquire` returned."""
        with self._lock:
            self._free += taken
            if self._waiting:
                self._cond.notify_all()


class _Hold:
    """The context manager :meth:`MemoryBudget.hold` returns (a class: thumbnails are held by
    the tens of thousands per second, where a generator-based one costs more than the rest)."""

    __slots__ = ("_budget", "_cost")

    def __init__(self, budget: MemoryBudget, cost: int) -> None:
        self._budget = budget
        self._cost = cost

    def __enter__(self) -> None:
        self._cost = self._budget.acquire(self._cost)

    def __exit__(self, *exc: object) -> None:
        self._budget.release(self._cost)
