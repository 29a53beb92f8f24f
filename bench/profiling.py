"""Sampling profiles of a server worker under load (py-spy), summarised.

py-spy samples the worker's Python stacks from outside (`--nonblocking`: the worker is never
paused), writing collapsed stacks. `summarise` turns them into the share of on-CPU samples
by package (self time), the functions with the most self time, and the functions that most
often appear anywhere on the stack (inclusive time).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Frames that sit under everything and say nothing about where the time goes.
BORING = (
    "<module>",
    "run (asyncio",
    "run_forever",
    "run_until_complete",
    "_run_once",
    "_run (asyncio/events",
    "main (",
    "run (uvicorn",
    "serve (uvicorn",
    "_serve (uvicorn",
    "subprocess_started",
    "_bootstrap",
    "_main (multiprocessing",
    "spawn_main",
    "_bootstrap_inner",
    "cmd_serve",
)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found


def available() -> bool:
    return Path(py_spy()).exists()


async def record(pid: int, seconds: float, out: Path, rate: int = 200) -> str:
    """Sample `pid` for `seconds`; returns py-spy's own messages."""
    proc = await asyncio.create_subprocess_exec(
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    text, _ = await proc.communicate()
    return text.decode(errors="replace")


def category(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/ordergraph/" in filename or filename.startswith("ordergraph/"):
        return "ordergraph"
    match = re.search(r"python3\.\d+/([^/]+)", filename)
    if match:
        return "stdlib:" + match.group(1).removesuffix(".py")
    return filename or "?"


def short(func: str, filename: str) -> str:
    if "site-packages/" in filename:
        filename = filename.split("site-packages/", 1)[1]
    elif "/ordergraph/" in filename:
        filename = "ordergraph/" + filename.split("/ordergraph/", 1)[1]
    else:
        filename = re.sub(r".*python3\.\d+/", "", filename)
    return f"{func} ({filename})"


def summarise(raw: Path, top: int = 20) -> dict[str, Any]:
    total = 0
    by_package: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    ours_inclusive: Counter[str] = Counter()
    if not raw.exists():
        return {"samples": 0}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for part in stack.split(";"):
            match = FRAME.match(part)
            if match and match.group("file") is not None:
                frames.append((match.group("func"), match.group("file")))
        if not frames:
            continue
        total += count
        func, filename = frames[-1]
        by_package[category(filename)] += count
        self_time[short(func, filename)] += count
        seen = set()
        for f, fn in frames:
            name = short(f, fn)
            if name in seen or any(b in name for b in BORING):
                continue
            seen.add(name)
            inclusive[name] += count
            if category(fn) == "ordergraph":
                ours_inclusive[name] += count

    def share(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(n)] if total else []

    return {
        "samples": total,
        "by_package": share(by_package, 15),
        "self": share(self_time, top),
        "inclusive": share(inclusive, top + 10),
        "ordergraph": share(ours_inclusive, top),
    }
