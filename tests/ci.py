"""What a test does when a tool it needs is absent: under CI a failure, else a skip.

``.ci/run`` installs every such tool (chromium, promtool) and runs pytest with ``CI=1``,
so there a missing one is a broken CI, never a test quietly not run.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["in_ci", "missing"]


def in_ci() -> bool:
    """Whether this runs under CI (``.ci/run`` sets CI=1; hosted CIs set CI=true)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(what: str, *, hint: str) -> NoReturn:
    """Fail (under CI) or skip (elsewhere) a test that needs ``what``."""
    if in_ci():
        pytest.fail(f"CI is set and {what} is absent ({hint})")
    pytest.skip(f"{what} is absent ({hint}); with CI=1 this is a failure")
