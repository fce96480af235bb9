"""``--profile DIR``: py-spy samples relay's process while a section loads it.

The ingest section records ``relay serve`` over the relay rounds, the delivery
section records ``relay worker --drain`` from its start to its exit. Each
recording is written to ``DIR/<section>.txt`` in the collapsed-stack format
(one ``frame;frame;...;leaf count`` line per stack: open it in speedscope or
feed it to flamegraph.pl), and summed here into the share of samples whose
innermost frame is in each module and each function (self time), which the
report prints under the section's table, with the share of samples inside each of
relay's own functions (inclusive: with everything they call). Time in C code
(uvloop's loop, hiredis, orjson, pydantic-core) counts toward the Python frame
that called it: uvloop's own work shows as ``run_app`` or ``Runner.run``.

py-spy samples from outside, at 250 Hz, without stopping the process
(``--nonblocking``): the figures of a profiled run are a little lower than
those of a plain run. Idle time (the loop waiting in epoll) is not sampled.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import BenchError, Proc, Procs

__all__ = ["Profile", "Profiler", "summarize"]

_RATE_HZ = 250
#: How long py-spy may take to write its file after SIGINT.
_WRITE_TIMEOUT_S = 30.0
#: Entry points: in every stack that does not start at a loop callback; they say nothing.
_ENTRY = frozenset({"relay.__main__", "relay.cli", "relay.commands.serve"})
#: A frame as py-spy writes it: ``function (path/to/file.py:line)``.
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class Profile:
    """One recording, summed by the innermost frame of each sample."""

    process: str
    path: Path
    samples: int
    modules: list[tuple[str, float]]  #: (module, share of samples), largest first
    functions: list[tuple[str, float]]  #: (module:function, share), largest first
    #: relay's own functions with everything they call: (module:function, share)
    inclusive: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "file": str(self.path),
            "samples": self.samples,
            "self_by_module": {name: round(share, 4) for name, share in self.modules},
            "self_by_function": {name: round(share, 4) for name, share in self.functions},
            "relay_inclusive": {name: round(share, 4) for name, share in self.inclusive},
        }


def _module(path: str) -> str:
    """``relay/api/ingest.py`` -> ``relay.api.ingest``; a library's frames -> its package."""
    parts = path.removesuffix(".py").replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    if "relay" in parts:
        return ".".join(parts[parts.index("relay") :])
    return parts[0] if len(parts) > 1 else parts[-1]


def _name(frame: str) -> tuple[str, str]:
    """(module, module:function) of one frame."""
    match = _FRAME.match(frame)
    if match is None:
        return "?", frame
    module = _module(match["path"])
    return module, f"{module}:{match['func']}"


def summarize(path: Path, *, process: str, top: int = 12) -> Profile:
    """The self time of each module and function in a collapsed-stack file, and the
    inclusive time of relay's functions."""
    modules: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if "importlib._bootstrap" in stack or "(<frozen importlib" in stack:
            continue  # the process starting up, not its work
        frames = [_name(frame) for frame in stack.split(";")]
        n = int(count)
        total += n
        module, function = frames[-1]
        modules[module] += n
        functions[function] += n
        for function in {f for m, f in frames if m.startswith("relay.") and m not in _ENTRY}:
            inclusive[function] += n
    if total == 0:
        raise BenchError(f"py-spy recorded no samples of {process} ({path})")

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, n / total) for name, n in counter.most_common(top)]

    return Profile(process, path, total, shares(modules), shares(functions), shares(inclusive))


def _find_py_spy() -> str | None:
    """py-spy on PATH, or installed next to this interpreter (a venv not activated)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


class Profiler:
    """Attaches py-spy to a process for the length of a ``with`` block (or does nothing)."""

    def __init__(self, procs: Procs, out_dir: Path | None) -> None:
        self._procs = procs
        self._dir = out_dir
        self._py_spy = None if out_dir is None else _find_py_spy()
        if out_dir is not None and self._py_spy is None:
            raise BenchError("--profile needs py-spy on PATH: pip install py-spy")
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        self.profiles: dict[str, Profile] = {}

    @contextmanager
    def attach(self, proc: Proc, section: str) -> Iterator[None]:
        """Record ``proc`` while the block runs; the summary lands in ``profiles[section]``."""
        if self._dir is None or self._py_spy is None:
            yield
            return
        out = self._dir.resolve() / f"{section}.txt"
        spy = self._procs.start(
            f"py-spy-{section}",
            [
                *(self._py_spy, "record", "--pid", str(proc.pid), "--rate", str(_RATE_HZ)),
                *("--nonblocking", "--format", "raw", "--output", str(out)),
            ],
        )
        try:
            yield
        finally:
            # py-spy writes its file on SIGINT, or by itself when the process exits.
            self._procs.signal(spy, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.popen.wait(timeout=_WRITE_TIMEOUT_S)
            code = self._procs.stop(spy)
        if not out.exists():
            raise BenchError(f"py-spy wrote no profile (exit {code}):\n{spy.log_tail()}")
        self.profiles[section] = summarize(out, process=proc.name)
