"""bench --profile: py-spy's collapsed stacks summed into self and inclusive shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profile import summarize
from bench.servers import BenchError

_LOOP = "<module> (relay/__main__.py:3);main (relay/cli.py:90);run_app (aiohttp/web.py:502)"
_HANDLER = "post_leads (relay/api/ingest.py:236);_accept (relay/api/ingest.py:187)"


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "ingest.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_self_time_by_module_and_function(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            f"{_LOOP} 30",  # uvloop's own work, counted to its caller
            f"{_LOOP};{_HANDLER};enqueue (relay/store.py:95) 50",
            f"{_LOOP};{_HANDLER};model_validate "
            "(/v/lib/python3.11/site-packages/pydantic/main.py:792) 20",
        ],
    )
    profile = summarize(path, process="relay-serve")
    assert profile.samples == 100
    assert profile.modules == [("relay.store", 0.5), ("aiohttp", 0.3), ("pydantic", 0.2)]
    assert profile.functions[0] == ("relay.store:enqueue", 0.5)
    assert ("pydantic:model_validate", 0.2) in profile.functions
    # Inclusive: relay's functions with what they call; entry points say nothing.
    inclusive = dict(profile.inclusive)
    assert inclusive["relay.api.ingest:_accept"] == pytest.approx(0.7)
    assert inclusive["relay.store:enqueue"] == pytest.approx(0.5)
    assert not any(name.startswith(("relay.cli", "relay.__main__")) for name in inclusive)


def test_start_up_imports_are_left_out(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            "<module> (relay/__main__.py:1);_find_and_load (<frozen importlib._bootstrap>:1176) 90",
            f"{_LOOP};{_HANDLER} 10",
        ],
    )
    profile = summarize(path, process="relay-worker")
    assert profile.samples == 10
    assert profile.modules == [("relay.api.ingest", 1.0)]


def test_an_empty_recording_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="no samples"):
        summarize(_write(tmp_path, ["", "garbage"]), process="relay-serve")
