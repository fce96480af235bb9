"""The docs stay true to the code: examples/relay.toml loads and names every key,
every RELAY_* variable settings read is in ``relay --help`` and the README (and no
other is), and every file the README names is in the repository."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from pydantic import BaseModel

from relay.cli import _parser
from relay.settings import (
    ConvertrDestination,
    ConveyourDestination,
    HooksSettings,
    WebhookDestination,
    environment_variables,
    load_settings,
)
from tests.procs import ROOT

EXAMPLE = ROOT / "examples" / "relay.toml"
README = ROOT / "README.md"
SECRETS = {
    "CONVEYOUR_TOKEN": "cvy-token-example",
    "CONVEYOUR_APPKEY": "cvy-appkey-example",
    "CONVERTR_API_KEY": "cvtr-key-example",
    "CRM_WHSEC": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}


def test_example_config_loads_with_one_destination_of_each_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env=SECRETS, config=EXAMPLE)
    assert sorted(d.type for d in settings.destinations.values()) == [
        "convertr",
        "conveyour",
        "webhook",
    ]


def test_example_config_commented_keys_are_valid_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncomment every ``# key = value`` line: what the comments offer must load."""
    monkeypatch.chdir(tmp_path)
    text = re.sub(r"(?m)^# (\w+ = )", r"\1", EXAMPLE.read_text())
    assert text != EXAMPLE.read_text()
    uncommented = tmp_path / "relay.toml"
    uncommented.write_text(text)
    settings = load_settings(env=SECRETS, config=uncommented)
    conveyour = settings.destinations["conveyour"]
    assert isinstance(conveyour, ConveyourDestination)
    assert conveyour.batch_size == 25
    assert conveyour.appkey is not None
    assert settings.port == 8080


def _tables(text: str) -> dict[str, set[str]]:
    """Table name -> every key named in it, set or commented out."""
    tables: dict[str, set[str]] = {"": set()}
    current = ""
    for line in text.splitlines():
        if header := re.fullmatch(r"\[([\w.]+)\]\s*(#.*)?", line):
            current = header[1]
            tables.setdefault(current, set())
            parent, _, child = current.rpartition(".")
            tables.setdefault(parent, set()).add(child)
        elif key := re.match(r"#? ?(\w+) = ", line):
            tables[current].add(key[1])
    return tables


@pytest.mark.parametrize(
    ("table", "model"),
    [
        ("destinations.conveyour", ConveyourDestination),
        ("destinations.convertr", ConvertrDestination),
        ("destinations.crm", WebhookDestination),
        ("hooks", HooksSettings),
    ],
)
def test_example_config_names_every_key(table: str, model: type[BaseModel]) -> None:
    named = _tables(EXAMPLE.read_text())[table]
    assert set(model.model_fields) - named == set(), f"[{table}] does not show these keys"


class _Recorder(Mapping[str, str]):
    """An empty environment that remembers every name it was asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@pytest.fixture
def read_by_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every RELAY_* variable load_settings looks at."""
    monkeypatch.chdir(tmp_path)
    env = _Recorder()
    load_settings(env=env)
    names = {n for n in env.asked if n.startswith("RELAY_")}
    assert {"RELAY_REDIS_URL", "RELAY_CONFIG", "RELAY_LOG_LEVEL"} <= names
    return names


def test_help_lists_every_variable_settings_read(read_by_settings: set[str]) -> None:
    listed = dict(environment_variables())
    assert set(listed) == read_by_settings
    undescribed = [name for name, text in listed.items() if not text]
    assert undescribed == [], "give these fields a Field(description=...)"
    help_text = _parser().format_help()
    for name in read_by_settings:
        assert re.search(rf"^  {name} +\S", help_text, re.M), f"{name} not in relay --help"


def test_readme_documents_exactly_the_variables_settings_read(read_by_settings: set[str]) -> None:
    named = set(re.findall(r"\bRELAY_[A-Z0-9_]*[A-Z0-9]", README.read_text()))
    assert read_by_settings - named == set(), "README does not document these"
    assert named - read_by_settings == set(), "README names variables relay does not read"


def test_deploy_files_name_only_variables_settings_read(read_by_settings: set[str]) -> None:
    named = {
        name
        for path in (ROOT / "deploy").rglob("*")
        if path.is_file()
        for name in re.findall(r"\bRELAY_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace"))
    }
    assert "RELAY_REDIS_URL" in named
    assert named - read_by_settings == set()


def _tracked() -> set[str] | None:
    """The repository's files, or None outside a git checkout (then: the disk)."""
    try:
        done = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(done.stdout.splitlines())


def test_every_file_the_readme_names_is_in_the_repository() -> None:
    text = README.read_text()
    named = set(
        re.findall(r"\b((?:examples|deploy|integrations|bench|relay|tests)/[\w./-]*\w)", text)
    )
    named |= {"Procfile"} if "Procfile" in text else set()
    assert "examples/relay.toml" in named
    tracked = _tracked()
    missing = []
    for name in sorted(named):
        if tracked is None:
            if not (ROOT / name).exists():
                missing.append(name)
        elif name not in tracked and not any(t.startswith(name.rstrip("/") + "/") for t in tracked):
            missing.append(name)
    assert missing == []
