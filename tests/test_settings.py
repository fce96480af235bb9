"""relay.settings: precedence, relay.toml, ${NAME} interpolation, error messages, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.errors import ConfigError
from relay.settings import (
    DEFAULT_CONVERTR_FIELDS,
    DEFAULT_RETRY_SCHEDULE_S,
    ConvertrDestination,
    ConveyourDestination,
    RateLimit,
    Settings,
    WebhookDestination,
    load_settings,
    parse_rate_limit,
)

CONVEYOUR_TOKEN = "cvy-token-7f3a9c1e5d"
CONVEYOUR_APPKEY = "cvy-appkey-b2d4f6a8"
CONVERTR_API_KEY = "cvtr-key-91e0c3b7aa"
CRM_WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REDIS_PASSWORD = "redis-pw-5e6f7a8b9c"

#: The contract's example relay.toml (ARCHITECTURE.md, "relay.toml").
CONTRACT_TOML = """
[destinations.conveyour]
type = "conveyour"
domain = "acme"                      # https://acme.conveyour.com
token = "${CONVEYOUR_TOKEN}"
appkey = "${CONVEYOUR_APPKEY}"
id = "$email"
events = ["contact", "lead"]
rate_limit = "2000/5m"

[destinations.convertr]
type = "convertr"
subdomain = "acme"                   # https://acme.cvtr.io
api_key = "${CONVERTR_API_KEY}"
campaign_id = 123
form_id = 45
publisher_id = 6
link_id = 7
events = ["lead"]
rate_limit = "3000/5m"
max_in_flight = 8
[destinations.convertr.fields]
first_name = "firstName"
last_name = "lastName"
email = "email"
phone = "telephone"
company = "company"
job_title = "jobTitle"

[destinations.crm]
type = "webhook"
url = "https://example.com/hook"
secret = "${CRM_WHSEC}"
events = ["lead"]
"""

SECRETS_ENV = {
    "CONVEYOUR_TOKEN": CONVEYOUR_TOKEN,
    "CONVEYOUR_APPKEY": CONVEYOUR_APPKEY,
    "CONVERTR_API_KEY": CONVERTR_API_KEY,
    "CRM_WHSEC": CRM_WHSEC,
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory, so that no ./relay.toml is picked up by accident."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load_toml(workdir: Path, text: str, **env: str) -> Settings:
    """Settings from ``text`` as ./relay.toml and ``env`` as the whole environment."""
    write(workdir / "relay.toml", text)
    return load_settings(env=env)


def config_error(workdir: Path, text: str, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_toml(workdir, text, **env)
    return str(info.value)


# -- defaults and precedence -------------------------------------------------


def test_defaults_without_file_or_environment(workdir: Path) -> None:
    settings = load_settings(env={})
    assert settings.redis_url is None
    assert settings.data_dir == Path(".relay")
    assert settings.config is None
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.default_region == "US"
    assert (settings.max_body_bytes, settings.max_batch) == (1_048_576, 500)
    assert settings.retention_s == 7 * 86400
    assert settings.log_level == "INFO"
    assert settings.destinations == {}
    assert settings.hooks.allow_private_targets is False
    assert settings.destinations_for("lead") == []


def test_settings_constructor_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PORT", "1234")
    assert Settings().port == 8080
    assert load_settings(env={}).port == 8080


def test_environment_is_read(workdir: Path) -> None:
    settings = load_settings(
        env={
            "RELAY_REDIS_URL": "redis://localhost:6379/1",
            "RELAY_DATA_DIR": "/var/lib/relay",
            "RELAY_HOST": "192.0.2.1",
            "RELAY_PORT": "9000",
            "RELAY_DEFAULT_REGION": "gb",
            "RELAY_LOG_LEVEL": "debug",
            "RELAY_MAX_BATCH": "50",
        }
    )
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == "redis://localhost:6379/1"
    assert settings.data_dir == Path("/var/lib/relay")
    assert (settings.host, settings.port, settings.max_batch) == ("192.0.2.1", 9000, 50)
    assert (settings.default_region, settings.log_level) == ("GB", "DEBUG")


def test_body_timeout_is_read_from_the_environment_and_must_be_positive(workdir: Path) -> None:
    assert load_settings(env={}).body_timeout_s == 30.0
    assert load_settings(env={"RELAY_BODY_TIMEOUT_S": "2.5"}).body_timeout_s == 2.5
    for bad in ("0", "-1", "soon"):
        message = config_error(workdir, "", RELAY_BODY_TIMEOUT_S=bad)
        assert message.startswith("environment: RELAY_BODY_TIMEOUT_S: "), message


def test_empty_variable_counts_as_unset(workdir: Path) -> None:
    assert load_settings(env={"RELAY_REDIS_URL": "", "RELAY_PORT": ""}).redis_url is None


def test_environment_overrides_file(workdir: Path) -> None:
    settings = load_toml(workdir, 'port = 9000\nhost = "10.0.0.1"\n', RELAY_PORT="9100")
    assert (settings.port, settings.host) == (9100, "10.0.0.1")


def test_overrides_beat_environment_and_file(workdir: Path) -> None:
    write(workdir / "relay.toml", "port = 9000\n")
    settings = load_settings(env={"RELAY_PORT": "9100"}, port=9200, host=None)
    assert settings.port == 9200
    assert settings.host == "127.0.0.1"  # None overrides are ignored


def test_settings_are_frozen(workdir: Path) -> None:
    settings = load_settings(env={})
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


# -- finding relay.toml -------------------------------------------------------


def test_dot_relay_toml_is_picked_up(workdir: Path) -> None:
    settings = load_toml(workdir, "port = 9001\n")
    assert settings.port == 9001
    assert settings.config == Path("relay.toml")


def test_relay_config_names_the_file(workdir: Path) -> None:
    write(workdir / "relay.toml", "port = 9001\n")
    other = write(workdir / "other.toml", "port = 9002\n")
    settings = load_settings(env={"RELAY_CONFIG": str(other)})
    assert settings.port == 9002
    assert settings.config == other


def test_relay_config_missing_file(workdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"RELAY_CONFIG": "nowhere/relay.toml"})
    assert str(info.value) == "RELAY_CONFIG=nowhere/relay.toml: no such file"


def test_config_override_picks_the_file(workdir: Path) -> None:
    other = write(workdir / "other.toml", "port = 9003\n")
    assert load_settings(env={"RELAY_CONFIG": "missing.toml"}, config=other).port == 9003


def test_config_key_in_the_file_is_refused(workdir: Path) -> None:
    assert "relay.toml: config: unknown key" in config_error(workdir, 'config = "x.toml"\n')


def test_toml_syntax_error_names_file_and_line(workdir: Path) -> None:
    message = config_error(workdir, 'port = 9000\nhost = "unterminated\n')
    assert message.startswith("relay.toml: invalid TOML: ")
    assert "line 2" in message


# -- ${NAME} interpolation ------------------------------------------------------


def test_interpolation_replaces_references_anywhere_in_a_string(workdir: Path) -> None:
    settings = load_toml(
        workdir,
        'host = "${PREFIX}.${SUFFIX}"\n[destinations.c]\ntype = "convertr"\n'
        'base_url = "http://127.0.0.1:${PORT}/"\napi_key = "k"\n'
        'campaign_id = "${CAMPAIGN}"\nform_id = 1\npublisher_id = 2\n',
        PREFIX="10.0",
        SUFFIX="0.1",
        PORT="9001",
        CAMPAIGN="123",
    )
    convertr = settings.destinations["c"]
    assert settings.host == "10.0.0.1"
    assert isinstance(convertr, ConvertrDestination)
    assert convertr.url == "http://127.0.0.1:9001"
    assert convertr.campaign_id == 123


def test_interpolation_unset_variable_names_file_key_and_variable(workdir: Path) -> None:
    message = config_error(workdir, CONTRACT_TOML, CONVERTR_API_KEY="k", CRM_WHSEC=CRM_WHSEC)
    assert message.splitlines() == [
        "relay.toml: destinations.conveyour.token: environment variable CONVEYOUR_TOKEN is not set",
        "relay.toml: destinations.conveyour.appkey: "
        "environment variable CONVEYOUR_APPKEY is not set",
    ]


def test_interpolation_inside_lists(workdir: Path) -> None:
    message = config_error(workdir, 'data_dir = "x"\n[hooks]\nx = ["a", "${NOPE}"]\n')
    assert message == "relay.toml: hooks.x[1]: environment variable NOPE is not set"


def test_double_dollar_escapes_a_literal_reference(workdir: Path) -> None:
    settings = load_toml(workdir, 'host = "$${HOST}-${HOST}"\n', HOST="h")
    assert settings.host == "${HOST}-h"


@pytest.mark.parametrize("value", ["${not closed", "${MY-VAR}", "${}"])
def test_malformed_reference_is_an_error(workdir: Path, value: str) -> None:
    message = config_error(workdir, f'host = "{value}"\n')
    assert message == "relay.toml: host: expected ${NAME} (write $${ for a literal '${')"


def test_interpolation_uses_os_environ_without_env(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_TEST_HOST", "from-os-environ")
    write(workdir / "relay.toml", 'host = "${RELAY_TEST_HOST}"\n')
    assert load_settings().host == "from-os-environ"


# -- destinations ---------------------------------------------------------------


def test_contract_example_loads(workdir: Path) -> None:
    settings = load_toml(workdir, CONTRACT_TOML, **SECRETS_ENV)
    assert list(settings.destinations) == ["conveyour", "convertr", "crm"]

    conveyour = settings.destinations["conveyour"]
    assert isinstance(conveyour, ConveyourDestination)
    assert conveyour.url == "https://acme.conveyour.com"
    assert conveyour.token.get_secret_value() == CONVEYOUR_TOKEN
    assert conveyour.appkey is not None
    assert conveyour.appkey.get_secret_value() == CONVEYOUR_APPKEY
    assert conveyour.id == "$email"
    assert conveyour.rate_limit == RateLimit(count=2000, period_s=300)
    assert (conveyour.max_in_flight, conveyour.batch_size, conveyour.timeout_s) == (4, 1, 10.0)
    assert conveyour.retry_schedule == list(DEFAULT_RETRY_SCHEDULE_S)

    convertr = settings.destinations["convertr"]
    assert isinstance(convertr, ConvertrDestination)
    assert convertr.url == "https://acme.cvtr.io"
    assert convertr.api_key.get_secret_value() == CONVERTR_API_KEY
    assert (convertr.campaign_id, convertr.form_id, convertr.publisher_id) == (123, 45, 6)
    assert convertr.link_id == 7
    assert str(convertr.rate_limit) == "3000/5m"
    assert convertr.fields == dict(DEFAULT_CONVERTR_FIELDS)

    crm = settings.destinations["crm"]
    assert isinstance(crm, WebhookDestination)
    assert crm.url == "https://example.com/hook"
    assert crm.secret.get_secret_value() == CRM_WHSEC
    assert (crm.events, crm.rate_limit, crm.max_in_flight) == (["lead"], None, 8)


def test_destination_defaults(workdir: Path) -> None:
    settings = load_toml(
        workdir,
        '[destinations.a]\ntype = "conveyour"\ndomain = "acme"\ntoken = "t"\n'
        '[destinations.b]\ntype = "convertr"\nsubdomain = "acme"\napi_key = "k"\n'
        "campaign_id = 1\nform_id = 2\npublisher_id = 3\n"
        '[destinations.c]\ntype = "webhook"\nurl = "http://127.0.0.1:9/h"\n'
        f'secret = "{CRM_WHSEC}"\n',
    )
    a, b, c = settings.destinations.values()
    assert (a.events, b.events, c.events) == (["contact", "lead"], ["lead"], ["lead"])
    assert (str(a.rate_limit), str(b.rate_limit)) == ("2000/5m", "3000/5m")
    assert c.rate_limit is None
    assert (a.max_in_flight, b.max_in_flight, c.max_in_flight) == (4, 8, 8)
    assert all(d.enabled and d.timeout_s == 10 for d in (a, b, c))
    assert isinstance(b, ConvertrDestination)
    assert b.fields == dict(DEFAULT_CONVERTR_FIELDS)
    assert b.link_id is None


def test_convertr_fields_table_replaces_the_default(workdir: Path) -> None:
    settings = load_toml(
        workdir,
        '[destinations.b]\ntype = "convertr"\nsubdomain = "acme"\napi_key = "k"\n'
        "campaign_id = 1\nform_id = 2\npublisher_id = 3\n"
        '[destinations.b.fields]\nemail = "emailAddress"\npostcode = "postcode"\n',
    )
    convertr = settings.destinations["b"]
    assert isinstance(convertr, ConvertrDestination)
    assert convertr.fields == {"email": "emailAddress", "postcode": "postcode"}


@pytest.mark.parametrize(
    ("where", "url"),
    [
        ('domain = "acme"', "https://acme.conveyour.com"),
        ('domain = "Acme"', "https://acme.conveyour.com"),
        ('base_url = "http://127.0.0.1:9000/"', "http://127.0.0.1:9000"),
        ('domain = "acme"\nbase_url = "https://acme.conveyour.app"', "https://acme.conveyour.app"),
    ],
)
def test_conveyour_domain_or_base_url(workdir: Path, where: str, url: str) -> None:
    text = f'[destinations.c]\ntype = "conveyour"\ntoken = "t"\n{where}\n'
    assert load_toml(workdir, text).destinations["c"].url == url


def test_conveyour_needs_domain_or_base_url(workdir: Path) -> None:
    message = config_error(workdir, '[destinations.c]\ntype = "conveyour"\ntoken = "t"\n')
    assert message == (
        "relay.toml: destinations.c: set domain (https://DOMAIN.conveyour.com) or base_url"
    )


def test_convertr_subdomain_or_base_url(workdir: Path) -> None:
    head = '[destinations.v]\ntype = "convertr"\napi_key = "k"\ncampaign_id = 1\nform_id = 2\n'
    head += "publisher_id = 3\n"
    local = load_toml(workdir, head + 'base_url = "http://127.0.0.1:9001"\n')
    assert local.destinations["v"].url == "http://127.0.0.1:9001"
    assert "set subdomain (https://SUBDOMAIN.cvtr.io) or base_url" in config_error(workdir, head)


@pytest.mark.parametrize(
    ("given", "stored"), [("$mobile", "$mobile"), ("$email, $mobile", "$email,$mobile")]
)
def test_conveyour_id(workdir: Path, given: str, stored: str) -> None:
    text = f'[destinations.c]\ntype = "conveyour"\ndomain = "a"\ntoken = "t"\nid = "{given}"\n'
    destination = load_toml(workdir, text).destinations["c"]
    assert isinstance(destination, ConveyourDestination)
    assert destination.id == stored


def test_destinations_for_keeps_file_order_and_skips_disabled(workdir: Path) -> None:
    text = CONTRACT_TOML + '\n[destinations.off]\ntype = "conveyour"\ndomain = "b"\n'
    text += 'token = "t"\nenabled = false\n'
    settings = load_toml(workdir, text, **SECRETS_ENV)
    assert settings.destinations_for("lead") == ["conveyour", "convertr", "crm"]
    assert settings.destinations_for("contact") == ["conveyour"]
    assert settings.destinations_for("other") == []


# -- hooks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "env", "allowed"),
    [
        ("", {}, False),
        ("[hooks]\nallow_private_targets = true\n", {}, True),
        ("", {"RELAY_ALLOW_PRIVATE_TARGETS": "1"}, True),
        ("[hooks]\nallow_private_targets = true\n", {"RELAY_ALLOW_PRIVATE_TARGETS": "0"}, False),
    ],
)
def test_allow_private_targets(
    workdir: Path, toml: str, env: dict[str, str], allowed: bool
) -> None:
    assert load_toml(workdir, toml, **env).hooks.allow_private_targets is allowed


# -- error messages -----------------------------------------------------------------

CONVERTR_HEAD = (
    '[destinations.convertr]\ntype = "convertr"\nsubdomain = "acme"\napi_key = "k"\n'
    "form_id = 45\npublisher_id = 6\n"
)


def test_bad_type_error_text(workdir: Path) -> None:
    message = config_error(workdir, CONVERTR_HEAD + 'campaign_id = "abc"\n')
    assert (
        message == "relay.toml: destinations.convertr.campaign_id: expected an integer, got 'abc'"
    )


def test_unknown_key_error_text(workdir: Path) -> None:
    message = config_error(workdir, CONVERTR_HEAD + 'campaign_id = 1\ncolour = "red"\n')
    assert message == (
        "relay.toml: destinations.convertr.colour: unknown key (allowed: api_key, base_url,"
        " campaign_id, enabled, events, fields, form_id, link_id, max_in_flight, publisher_id,"
        " rate_limit, retry_schedule, subdomain, timeout_s, type)"
    )


def test_unknown_top_level_key(workdir: Path) -> None:
    message = config_error(workdir, "prot = 9000\n")
    assert message.startswith("relay.toml: prot: unknown key (allowed: body_timeout_s, claim_after")
    assert "config" not in message


def test_unknown_destination_type(workdir: Path) -> None:
    message = config_error(workdir, '[destinations.crm]\ntype = "hubspot"\n')
    assert message == (
        "relay.toml: destinations.crm.type: expected one of conveyour, convertr, webhook,"
        " got 'hubspot'"
    )


def test_missing_key(workdir: Path) -> None:
    message = config_error(workdir, CONVERTR_HEAD)
    assert message == "relay.toml: destinations.convertr.campaign_id: required key is missing"


def test_bad_rate_limit_error_text(workdir: Path) -> None:
    message = config_error(workdir, CONVERTR_HEAD + 'campaign_id = 1\nrate_limit = "lots"\n')
    assert message.startswith(
        "relay.toml: destinations.convertr.rate_limit: expected a rate limit like '2000/5m'"
    )
    assert message.endswith("got 'lots'")


def test_one_line_per_problem(workdir: Path) -> None:
    text = CONVERTR_HEAD + (
        'campaign_id = 1\nmax_in_flight = 12\nevents = ["lead", "deal"]\ntimeout_s = 0\n'
        "retry_schedule = [5, -1]\nenabled = 'maybe'\n"
    )
    assert config_error(workdir, text, RELAY_PORT="abc").splitlines() == [
        "environment: RELAY_PORT: expected an integer between 1 and 65535, got 'abc'",
        "relay.toml: destinations.convertr.timeout_s: expected a number > 0 and <= 120, got 0",
        "relay.toml: destinations.convertr.retry_schedule[1]: expected a number > 0, got -1",
        "relay.toml: destinations.convertr.max_in_flight: expected an integer between 1 and 9,"
        " got 12",
        "relay.toml: destinations.convertr.events[1]: expected contact or lead, got 'deal'",
        "relay.toml: destinations.convertr.enabled: expected true or false, got 'maybe'",
    ]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RELAY_PORT": "abc"}, "RELAY_PORT: expected an integer between 1 and 65535, got 'abc'"),
        ({"RELAY_PORT": "70000"}, "RELAY_PORT: expected an integer between 1 and 65535"),
        ({"RELAY_DEFAULT_REGION": "XX"}, "RELAY_DEFAULT_REGION: expected an ISO 3166 code"),
        ({"RELAY_LOG_LEVEL": "loud"}, "RELAY_LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR"),
        ({"RELAY_ALLOW_PRIVATE_TARGETS": "maybe"}, "RELAY_ALLOW_PRIVATE_TARGETS: expected true"),
        ({"RELAY_REDIS_URL": "http://x"}, "RELAY_REDIS_URL: unknown scheme http://"),
    ],
)
def test_environment_error_text(workdir: Path, env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert str(info.value).startswith(f"environment: {expected}")


def test_override_error_text(workdir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^overrides: port: expected an integer between"):
        load_settings(env={}, port=0)
    with pytest.raises(ConfigError, match=r"^overrides: bogus: unknown key"):
        load_settings(env={}, bogus=1)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('url = "ftp://example.com/x"', "url: expected an http:// or https:// URL, got 'ftp://"),
        ('url = "https://x"\nsecret = "hunter2"', "secret: expected 'whsec_' + base64"),
        ('url = "https://x"\nsecret = "whsec_not base64!"', "secret: expected 'whsec_' + base64"),
    ],
)
def test_webhook_validation(workdir: Path, line: str, expected: str) -> None:
    text = f'[destinations.crm]\ntype = "webhook"\n{line}\n'
    if "secret" not in line:
        text += f'secret = "{CRM_WHSEC}"\n'
    message = config_error(workdir, text)
    assert message.startswith(f"relay.toml: destinations.crm.{expected}")
    assert "hunter2" not in message


def test_bad_destination_name(workdir: Path) -> None:
    message = config_error(
        workdir,
        f'[destinations."Bad Name"]\ntype = "webhook"\nurl = "https://x"\nsecret = "{CRM_WHSEC}"\n',
    )
    assert message.startswith("relay.toml: destinations.Bad Name: expected a name of a-z")


def test_errors_never_show_secrets(workdir: Path) -> None:
    text = (
        '[destinations.c]\ntype = "conveyour"\ntoken = ["${CONVEYOUR_TOKEN}"]\n'
        f'[destinations.w]\ntype = "webhook"\nurl = "https://x"\nsecret = "{CONVEYOUR_APPKEY}"\n'
    )
    message = config_error(
        workdir, text, RELAY_REDIS_URL=f"http://:{REDIS_PASSWORD}@host", **SECRETS_ENV
    )
    assert [line.split(": ")[1] for line in message.splitlines()] == [
        "RELAY_REDIS_URL",
        "destinations.c.token",
        "destinations.w.secret",
    ]
    for secret in (CONVEYOUR_TOKEN, CONVEYOUR_APPKEY, REDIS_PASSWORD):
        assert secret not in message


def test_config_error_does_not_chain_the_validation_error(workdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"RELAY_PORT": "abc"})
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# -- secrets --------------------------------------------------------------------------


def test_secrets_absent_from_repr_and_str(workdir: Path) -> None:
    env = {**SECRETS_ENV, "RELAY_REDIS_URL": f"redis://:{REDIS_PASSWORD}@localhost:6379/0"}
    settings = load_toml(workdir, CONTRACT_TOML, **env)
    shown = [repr(settings), str(settings), settings.model_dump_json()]
    shown += [repr(d) for d in settings.destinations.values()]
    shown += [str(d) for d in settings.destinations.values()]
    for text in shown:
        for secret in (CONVEYOUR_TOKEN, CONVEYOUR_APPKEY, CONVERTR_API_KEY, CRM_WHSEC):
            assert secret not in text
        assert REDIS_PASSWORD not in text
    assert settings.redis_url is not None
    assert REDIS_PASSWORD in settings.redis_url.get_secret_value()


# -- rate limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "period_s", "shown"),
    [
        ("2000/5m", 2000, 300, "2000/5m"),
        ("10/s", 10, 1, "10/s"),
        ("100/m", 100, 60, "100/m"),
        ("100/min", 100, 60, "100/m"),
        ("1000/h", 1000, 3600, "1000/h"),
        ("60/1h", 60, 3600, "60/h"),
        ("5000/d", 5000, 86400, "5000/d"),
        ("3/10s", 3, 10, "3/10s"),
        ("3/90s", 3, 90, "3/90s"),
        (" 5 / 2 hours ", 5, 7200, "5/2h"),
        ("1/0.5s", 1, 0.5, "1/0.5s"),
    ],
)
def test_parse_rate_limit(text: str, count: int, period_s: float, shown: str) -> None:
    limit = parse_rate_limit(text)
    assert (limit.count, limit.period_s) == (count, period_s)
    assert str(limit) == shown
    assert parse_rate_limit(str(limit)) == limit


def test_rate_limit_is_a_named_pair(workdir: Path) -> None:
    assert parse_rate_limit("2000/5m") == RateLimit(2000, 300.0) == (2000, 300.0)
    assert RateLimit(count=10, period_s=1) == parse_rate_limit("10/s")
    settings = load_toml(workdir, CONTRACT_TOML, **SECRETS_ENV)
    assert '"rate_limit":"2000/5m"' in settings.model_dump_json()


@pytest.mark.parametrize(
    "text", ["", "2000", "2000/", "/5m", "0/m", "-1/m", "10/0s", "10/5", "10/5w", "ten/m", "1.5/m"]
)
def test_parse_rate_limit_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected a rate limit like '2000/5m'.*got"):
        parse_rate_limit(text)
