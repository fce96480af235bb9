"""Child processes of the tests run this checkout's relay, not whatever the venv installed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, assert_tree_under_test, clean_env, relay_package


def decoy(where: Path) -> Path:
    """Another checkout's ``relay`` package, as a venv made from it would import it."""
    package = where / "relay"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import pathlib, platform\n"
        "here = pathlib.Path(__file__).parent\n"
        "print(f'relay 0.0.1 from {here} (python {platform.python_version()})')\n"
    )
    return package


def test_children_import_the_tree_under_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = decoy(tmp_path / "other-checkout")
    # Whatever the developer's environment would have the interpreter import first...
    monkeypatch.setenv("PYTHONPATH", str(other.parent))
    # ...a child started with the tests' environment runs this tree.
    env = clean_env()
    found = relay_package(env, tmp_path)
    assert found == ROOT / "relay"
    assert found.is_relative_to(ROOT)
    assert_tree_under_test(env, tmp_path)


def test_a_child_running_another_tree_fails_the_check(tmp_path: Path) -> None:
    other = decoy(tmp_path / "other-checkout")
    env = {**os.environ, "PYTHONPATH": str(other.parent)}
    assert relay_package(env, tmp_path) == other
    with pytest.raises(AssertionError, match="not the tree under test"):
        assert_tree_under_test(env, tmp_path)


def test_version_names_the_package_directory(tmp_path: Path) -> None:
    assert relay_package(clean_env(), tmp_path) == Path(sys.modules["relay"].__file__ or "").parent
