"""bench.instructions: callgrind counts exactly the requests it is told to, in relay serve
and in Redis, for the tree it is given (this one)."""

from __future__ import annotations

import shutil

import pytest

from bench.ingest import LEAD
from bench.instructions import count_trees, main
from tests.ci import missing
from tests.procs import ROOT


def test_it_counts_a_tree_s_relay_serve_and_redis() -> None:
    if shutil.which("valgrind") is None:
        missing("valgrind", hint="apt-get install valgrind")
    (count,) = count_trees([ROOT], requests=20, warmup=5, connections=2, lead=LEAD)
    assert count.tree == ROOT
    assert count.requests == 20
    # Python's work for an ingest request is hundreds of thousands of instructions, a
    # script call's in Redis tens of thousands: nothing counted, or all of start-up,
    # would be far outside.
    assert 100_000 < count.api < 20_000_000, count
    assert 5_000 < count.redis < 2_000_000, count


def test_a_directory_that_is_no_checkout_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([str(ROOT / "tests")])
    assert exit_.value.code == 2
    assert "is not a relay checkout" in capsys.readouterr().err
