"""relay.normalize: every accepted shape, aliases, checks, limits and the error list."""

from __future__ import annotations

import random
import string
from typing import Any

import phonenumbers
import pytest
from email_validator import validate_email

from relay.errors import ValidationFailed
from relay.models import CANONICAL_FIELDS, Contact, Lead
from relay.normalize import (
    ALIASES,
    MAX_CUSTOM_TRAITS,
    MAX_TRAIT_DEPTH,
    MAX_TRAIT_NAME_CHARS,
    MAX_TRAIT_STRING_CHARS,
    _e164_quick,
    _plain_email,
    normalize_item,
    unflatten,
)

UK = "+447123456789"
US = "+16502530000"


def contact(raw: Any, **kw: Any) -> Contact:
    return normalize_item(raw, kind="contact", **kw)


def errors_of(raw: Any, **kw: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationFailed) as exc:
        normalize_item(raw, kind="contact", **kw)
    return [dict(e) for e in exc.value.errors]


# --- unflatten ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["traits__city", "traits.city", "traits[city]"])
def test_unflatten_three_notations(key: str) -> None:
    assert unflatten([(key, "Leeds")]) == {"traits": {"city": "Leeds"}}


@pytest.mark.parametrize("key", ["a__b__c", "a.b.c", "a[b][c]", "a__b[c]", "a.b__c"])
def test_unflatten_deep(key: str) -> None:
    assert unflatten([(key, 1)]) == {"a": {"b": {"c": 1}}}


def test_unflatten_form_brackets_merge_siblings() -> None:
    pairs = [("form[a][b]", "1"), ("form[a][c]", "2"), ("form[d]", "3"), ("email", "x")]
    assert unflatten(pairs) == {"email": "x", "form": {"a": {"b": "1", "c": "2"}, "d": "3"}}


def test_unflatten_plain_keys_stay() -> None:
    assert unflatten([("first_name", "Ann"), ("_id", 3)]) == {"first_name": "Ann", "_id": 3}


@pytest.mark.parametrize(
    "key", ["a..b", ".a", "a.", "__a", "a__", "[x]", "a[b", "a]b", "a[]b", "a[b].c", "a[][b]"]
)
def test_unflatten_malformed_keys_stay_as_sent(key: str) -> None:
    assert unflatten([(key, 1)]) == {key: 1}


def test_unflatten_repeated_key_becomes_list_in_order() -> None:
    assert unflatten([("tag", "a"), ("x", 0), ("tag", "b"), ("tag", "c")]) == {
        "tag": ["a", "b", "c"],
        "x": 0,
    }


def test_unflatten_repeated_nested_key() -> None:
    assert unflatten([("t[c]", "a"), ("t.c", "b")]) == {"t": {"c": ["a", "b"]}}


def test_unflatten_bracket_append_always_makes_a_list() -> None:
    assert unflatten([("tags[]", "a")]) == {"tags": ["a"]}
    assert unflatten([("tags[]", "a"), ("tags[]", "b")]) == {"tags": ["a", "b"]}
    assert unflatten([("t[tags][]", "a"), ("t[tags][]", "b")]) == {"t": {"tags": ["a", "b"]}}


def test_unflatten_append_extends_a_list_sent_as_value() -> None:
    sent = ["a"]
    assert unflatten([("tags", sent), ("tags[]", "b")]) == {"tags": ["a", "b"]}
    assert sent == ["a"]


@pytest.mark.parametrize(
    "pairs",
    [[("a", 1), ("a__b", 2)], [("a__b", 2), ("a", 1)]],
    ids=["scalar-first", "nested-first"],
)
def test_unflatten_conflict_names_the_nested_key_whatever_the_order(pairs: list[Any]) -> None:
    with pytest.raises(ValidationFailed) as exc:
        unflatten(pairs)
    assert exc.value.errors == [
        {"loc": ["a__b"], "msg": "conflicts with 'a', which was sent as a number, not fields"}
    ]


def test_unflatten_deeper_conflict() -> None:
    with pytest.raises(ValidationFailed) as exc:
        unflatten([("a.b.c", 3), ("a.b", 2), ("tags[]", "x"), ("tags[x]", "y")])
    assert [e["loc"] for e in exc.value.errors] == [["tags[x]"], ["a.b.c"]]
    assert "'a.b', which was sent as a number" in exc.value.errors[1]["msg"]
    assert "'tags', which was sent as an array" in exc.value.errors[0]["msg"]


def test_flattened_key_conflicting_with_a_string_is_refused_not_kept_flat() -> None:
    with pytest.raises(ValidationFailed) as exc:
        normalize_item(
            {"email": "a@example.com", "traits": "foo", "traits__city": "Dallas"}, kind="lead"
        )
    assert [e["loc"] for e in exc.value.errors] == [["traits__city"]]
    with pytest.raises(ValidationFailed) as exc:
        normalize_item({"lead": {"email": "a@example.com", "a": 1, "a.b": 2}}, kind="lead")
    assert [e["loc"] for e in exc.value.errors] == [["lead", "a.b"]]


def test_unflatten_merges_into_dict_value_without_mutating_it() -> None:
    traits = {"city": "Leeds"}
    out = unflatten([("traits", traits), ("traits__state", "Yorks")])
    assert out == {"traits": {"city": "Leeds", "state": "Yorks"}}
    assert traits == {"city": "Leeds"}


# --- shapes ------------------------------------------------------------------


def test_flat_contact() -> None:
    c = contact({"email": "ann@example.com", "first_name": "Ann", "last_name": "Lee"})
    assert type(c) is Contact
    assert (c.email, c.first_name, c.last_name, c.phone, c.traits) == (
        "ann@example.com",
        "Ann",
        "Lee",
        None,
        {},
    )


def test_kind_selects_the_model() -> None:
    raw = {"email": "ann@example.com"}
    assert type(normalize_item(raw, kind="lead")) is Lead
    assert type(normalize_item(raw, kind="contact")) is Contact


def test_result_is_frozen() -> None:
    c = contact({"email": "ann@example.com"})
    with pytest.raises(ValueError, match="frozen"):
        c.email = "other@example.com"  # type: ignore[misc]


@pytest.mark.parametrize("wrapper", ["contact", "lead", "Contact"])
@pytest.mark.parametrize("kind", ["contact", "lead"])
def test_wrapped(wrapper: str, kind: Any) -> None:
    item = normalize_item({wrapper: {"email": "ann@example.com", "city": "Leeds"}}, kind=kind)
    assert (item.email, item.city) == ("ann@example.com", "Leeds")
    assert type(item) is (Lead if kind == "lead" else Contact)


def test_wrapper_with_siblings_is_not_unwrapped() -> None:
    c = contact({"contact": {"email": "a@example.com"}, "phone": UK})
    assert c.email is None
    assert c.phone == UK
    assert c.traits == {"contact": {"email": "a@example.com"}}


def test_wrapped_error_locs_include_the_wrapper() -> None:
    assert errors_of({"lead": {"email": "nope"}})[0]["loc"] == ["lead", "email"]


def test_conveyour_style() -> None:
    c = contact(
        {"id": "$email", "traits": {"email": "Ann@Example.com", "firstName": "Ann", "score": 7}}
    )
    assert (c.email, c.first_name, c.traits) == ("ann@example.com", "Ann", {"score": 7})


def test_conveyour_literal_id_is_a_trait() -> None:
    c = contact({"id": "crm-42", "traits": {"email": "ann@example.com"}})
    assert c.traits == {"id": "crm-42"}


def test_conveyour_top_level_wins_over_traits() -> None:
    c = contact(
        {
            "email": "top@example.com",
            "utm_source": "top",
            "traits": {"email": "inner@example.com", "utm_source": "inner"},
        }
    )
    assert c.email == "top@example.com"
    assert c.traits == {
        "utm_source": "top",
        "traits.utm_source": "inner",
        "email": "inner@example.com",
    }


def test_conveyour_error_loc_points_into_traits() -> None:
    errs = errors_of({"id": "$email", "traits": {"email": "bad", "city": ["x"]}})
    assert [e["loc"] for e in errs] == [["traits", "email"], ["traits", "city"]]


@pytest.mark.parametrize("key", ["traits__city", "traits.city", "traits[city]"])
def test_flattened_json_keys(key: str) -> None:
    c = contact({"email": "ann@example.com", key: "Leeds", "traits": {"phone": UK}})
    assert (c.city, c.phone) == ("Leeds", UK)


def test_flattened_wrapper_from_form() -> None:
    form = unflatten([("contact[email]", "ann@example.com"), ("contact[mobile]", "07123456789")])
    c = contact(form, default_region="GB")
    assert (c.email, c.phone) == ("ann@example.com", UK)


def test_flattened_keys_inside_wrapper() -> None:
    c = contact({"lead": {"traits__email": "ann@example.com", "traits.utm": "x"}})
    assert (c.email, c.traits) == ("ann@example.com", {"utm": "x"})


def test_deep_flattened_custom_trait_is_nested() -> None:
    c = contact({"email": "ann@example.com", "meta__utm__source": "ads"})
    assert c.traits == {"meta": {"utm": {"source": "ads"}}}


def test_repeated_form_key_is_a_list_trait() -> None:
    form = unflatten([("email", "ann@example.com"), ("interest", "a"), ("interest", "b")])
    assert contact(form).traits == {"interest": ["a", "b"]}


def test_repeated_canonical_form_key_is_an_error() -> None:
    form = unflatten([("email", "a@example.com"), ("email", "b@example.com")])
    assert errors_of(form) == [
        {"loc": ["email"], "msg": "expected text (a string or a number), got an array"}
    ]


# --- aliases and key spelling ------------------------------------------------


ALIAS_CASES = [(alias, field) for field, aliases in ALIASES.items() for alias in aliases]

SAMPLE = {"email": "Ann@Example.com", "phone": "+44 7123 456789"}


@pytest.mark.parametrize(("alias", "field"), ALIAS_CASES)
def test_alias(alias: str, field: str) -> None:
    value = SAMPLE.get(field, "Some value")
    other = {"phone": UK} if field == "email" else {"email": "x@example.com"}
    c = contact({alias: value, **other})
    expected = {"email": "ann@example.com", "phone": UK}.get(field, "Some value")
    assert getattr(c, field) == expected
    assert c.traits == {}


def test_alias_table_targets_canonical_fields() -> None:
    assert set(ALIASES) <= set(CANONICAL_FIELDS)


def test_title_is_not_job_title() -> None:
    c = contact({"email": "a@example.com", "title": "Dr", "jobTitle": "CTO"})
    assert (c.title, c.job_title) == ("Dr", "CTO")


@pytest.mark.parametrize(
    "key", ["firstName", "FirstName", "first name", "First-Name", " first_name ", "FIRST_NAME"]
)
def test_key_spellings(key: str) -> None:
    assert contact({"email": "a@example.com", key: "Ann"}).first_name == "Ann"


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("ZIPCode", "postcode"),
        ("PhoneNumber", "phone"),
        ("eMail", "email"),
        ("E-Mail", "email"),
        ("addressLine1", "address"),
        ("Address Line 1", "address"),
        ("Company Name", "company"),
    ],
)
def test_more_key_spellings(key: str, field: str) -> None:
    value = {"phone": UK, "email": "b@example.com"}.get(field, "V")
    other = {"phone": UK} if field == "email" else {"email": "a@example.com"}
    assert getattr(contact({**other, key: value}), field) == value


def test_custom_traits_keep_original_names_and_types() -> None:
    raw = {
        "email": "a@example.com",
        "utm_source": "ads",
        "LeadScore": 12,
        "Opt In": True,
        "tags": ["a", "b"],
        "meta": {"x": None},
        "note": "  spaced  ",
        "blank": "",
    }
    c = contact(raw)
    assert c.traits == {k: v for k, v in raw.items() if k != "email"}


def test_city_is_canonical() -> None:
    c = contact({"email": "a@example.com", "City": " Leeds "})
    assert (c.city, c.traits) == ("Leeds", {})


# --- conflicts ---------------------------------------------------------------


def test_phone_and_mobile_canonical_wins_other_kept() -> None:
    c = contact({"mobile": "+1 650 253 0000", "phone": "07123 456789"}, default_region="GB")
    assert c.phone == UK
    assert c.traits == {"mobile": "+1 650 253 0000"}


def test_alias_priority_follows_table() -> None:
    c = contact({"cell": "+1 650 253 0000", "telephone": "+44 7123 456789"})
    assert c.phone == UK
    assert c.traits == {"cell": "+1 650 253 0000"}


def test_exact_alias_spelling_beats_other_spelling() -> None:
    c = contact({"Mobile": US, "mobile": UK})
    assert (c.phone, c.traits) == (UK, {"Mobile": US})


def test_same_rank_same_spelling_first_sent_wins() -> None:
    c = contact({"Mobile": US, "MOBILE": UK})
    assert (c.phone, c.traits) == (US, {"MOBILE": UK})


def test_dollar_id_inside_wrapper_is_dropped() -> None:
    c = contact({"contact": {"id": "$email", "email": "a@example.com"}})
    assert c.traits == {}


def test_exact_spelling_beats_other_spelling() -> None:
    c = contact({"Email": "b@example.com", "email": "a@example.com"})
    assert c.email == "a@example.com"
    assert c.traits == {"Email": "b@example.com"}


def test_empty_canonical_loses_to_alias_and_is_dropped() -> None:
    c = contact({"phone": "  ", "mobile": UK, "email": None})
    assert (c.phone, c.email, c.traits) == (UK, None, {})


def test_same_alias_top_level_beats_traits() -> None:
    c = contact({"mobile": US, "traits": {"mobile": UK}})
    assert (c.phone, c.traits) == (US, {"mobile": UK})


def test_alias_rank_beats_top_level() -> None:
    c = contact({"mobile": US, "traits": {"phone": UK}})
    assert (c.phone, c.traits) == (UK, {"mobile": US})


def test_losers_colliding_by_name_are_all_kept() -> None:
    c = contact({"phone": UK, "mobile": US, "traits": {"mobile": "+16502530001"}})
    assert c.phone == UK
    assert c.traits == {"mobile": US, "traits.mobile": "+16502530001"}


def test_invalid_winner_reports_error_and_does_not_fall_back() -> None:
    errs = errors_of({"phone": "junk", "mobile": UK})
    assert [e["loc"] for e in errs] == [["phone"]]


# --- values ------------------------------------------------------------------


def test_strings_stripped_and_empties_absent() -> None:
    c = contact({"email": " a@example.com ", "first_name": "  Ann ", "company": "", "city": None})
    assert (c.email, c.first_name, c.company, c.city, c.traits) == (
        "a@example.com",
        "Ann",
        None,
        None,
        {},
    )


def test_numbers_become_text() -> None:
    c = contact({"phone": 6502530000, "postcode": 2000, "company": 3.5, "state": 7.0})
    assert (c.phone, c.postcode, c.company, c.state) == (US, "2000", "3.5", "7")


def test_zapier_text_values_kept_sensible() -> None:
    # Zapier sends every field as text; so do forms.
    c = contact(
        {
            "email": "a@example.com",
            "postcode": "02134",
            "opted_in": "true",
            "vip": " FALSE ",
            "score": "42",
            "zip_plus": "02134-1234",
            "tags": ["true", "x"],
            "traits__newsletter": "false",
            "note": "true story",
        }
    )
    assert c.postcode == "02134"
    assert c.traits == {
        "opted_in": True,
        "vip": False,
        "score": "42",  # digits stay text: ids, zips and phone-like values keep their zeros
        "zip_plus": "02134-1234",
        "tags": [True, "x"],
        "newsletter": False,
        "note": "true story",
    }


@pytest.mark.parametrize(
    ("value", "got"), [(True, "a boolean"), (["a"], "an array"), ({"a": 1}, "an object")]
)
def test_non_text_canonical_is_an_error(value: Any, got: str) -> None:
    assert errors_of({"email": "a@example.com", "company": value}) == [
        {"loc": ["company"], "msg": f"expected text (a string or a number), got {got}"}
    ]


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("Ann.Lee@Example.COM", "ann.lee@example.com"),
        ("ANN@EXAMPLE.COM", "ann@example.com"),
        ("  a+tag@sub.example.co.uk ", "a+tag@sub.example.co.uk"),
    ],
)
def test_email_lower_cased(sent: str, stored: str) -> None:
    assert contact({"email": sent}).email == stored


@pytest.mark.parametrize(
    "bad", ["nope", "a@b", "a@@example.com", "@example.com", "a b@example.com"]
)
def test_email_rejected(bad: str) -> None:
    (err,) = errors_of({"email": bad, "phone": UK})
    assert err["loc"] == ["email"]
    assert err["msg"].startswith("not a valid email address: ")


def test_email_message_says_what_is_wrong() -> None:
    (err,) = errors_of({"email": "ann@example", "phone": UK})
    assert err["msg"] == (
        "not a valid email address: The part after the @-sign is not valid. It should have a period"
    )


@pytest.mark.parametrize(
    ("sent", "region", "stored"),
    [
        ("(650) 253-0000", "US", US),
        ("650.253.0000", "US", US),
        ("+1 650 253 0000", "GB", US),
        ("001 650 253 0000", "GB", US),
        ("001 650 253 0000", "US", US),
        ("07123 456789", "GB", UK),
        ("+44 7123 456789", "US", UK),
        ("+44 (0)7123 456789", "US", UK),
        ("0044 7123 456789", "US", UK),
        ("0044 7123 456789", "GB", UK),
        ("447123456789", "GB", UK),
    ],
)
def test_phone_e164(sent: str, region: str, stored: str) -> None:
    assert contact({"phone": sent}, default_region=region).phone == stored


@pytest.mark.parametrize("bad", ["junk", "123", "+44 12", "447123456789", "1" * 30])
def test_phone_rejected(bad: str) -> None:
    (err,) = errors_of({"phone": bad, "email": "a@example.com"})
    assert err["loc"] == ["phone"]
    assert "E.164" in err["msg"]
    assert "include the country code, e.g. +44 7123 456789" in err["msg"]


def test_missing_email_and_phone() -> None:
    msg = "provide an email or a phone number (none was given)"
    assert errors_of({"first_name": "Ann"}) == [{"loc": [], "msg": msg}]
    assert errors_of({"email": " ", "phone": None}) == [{"loc": [], "msg": msg}]
    assert errors_of({}) == [{"loc": [], "msg": msg}]


def test_every_problem_reported_at_once() -> None:
    with pytest.raises(ValidationFailed) as exc:
        normalize_item(
            {"first_name": ["Ann"], "traits": {"city": {"x": 1}}, "x" * 101: 1}, kind="lead"
        )
    assert [e["loc"] for e in exc.value.errors] == [
        [],
        ["first_name"],
        ["x" * 101],
        ["traits", "city"],
    ]
    assert exc.value.detail.startswith(
        "4 problems in this lead: lead: provide an email or a phone number (none was given); "
        "first_name: expected text"
    )
    assert exc.value.detail.endswith("; and 1 more")
    assert exc.value.status == 422


def test_invalid_email_and_phone_both_reported_without_missing_error() -> None:
    errs = errors_of({"email": "bad", "phone": "bad"})
    assert [e["loc"] for e in errs] == [["email"], ["phone"]]


def test_detail_for_one_problem() -> None:
    with pytest.raises(ValidationFailed) as exc:
        contact({"email": "ann@example", "phone": UK})
    assert exc.value.detail == (
        "1 problem in this contact: email: not a valid email address: "
        "The part after the @-sign is not valid. It should have a period"
    )


@pytest.mark.parametrize(
    ("raw", "got"),
    [
        ([{"email": "a@example.com"}], "an array"),
        ("a@example.com", "a string"),
        (None, "null"),
        (3, "a number"),
    ],
)
def test_item_must_be_an_object(raw: Any, got: str) -> None:
    assert errors_of(raw) == [
        {"loc": [], "msg": f"expected a JSON object with contact fields, got {got}"}
    ]


# --- limits ------------------------------------------------------------------


def test_email_length_limit() -> None:
    ok = "a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".com"
    assert len(ok) <= 254
    assert contact({"email": ok}).email == ok
    long = "a" * 64 + "@" + ".".join(["b" * 60] * 4) + ".com"
    assert errors_of({"email": long, "phone": UK}) == [
        {"loc": ["email"], "msg": f"too long: {len(long)} characters, at most 254"}
    ]


def test_field_and_address_limits() -> None:
    base = {"email": "a@example.com"}
    assert contact({**base, "company": "c" * 255}).company == "c" * 255
    assert contact({**base, "address": "a" * 500}).address == "a" * 500
    errs = errors_of({**base, "company": "c" * 256, "street": "a" * 501})
    assert errs == [
        {"loc": ["company"], "msg": "too long: 256 characters, at most 255"},
        {"loc": ["street"], "msg": "too long: 501 characters, at most 500"},
    ]


def test_custom_trait_count_limit() -> None:
    many = {f"f{i}": i for i in range(MAX_CUSTOM_TRAITS)}
    assert len(contact({"email": "a@example.com", **many}).traits) == MAX_CUSTOM_TRAITS
    too_many = {**many, "one_more": 1}
    assert errors_of({"email": "a@example.com", **too_many}) == [
        {"loc": [], "msg": f"too many custom fields: 201 given, at most {MAX_CUSTOM_TRAITS}"}
    ]


def test_custom_trait_name_limit() -> None:
    ok = "n" * MAX_TRAIT_NAME_CHARS
    assert ok in contact({"email": "a@example.com", ok: 1}).traits
    bad = ok + "n"
    assert errors_of({"email": "a@example.com", bad: 1}) == [
        {"loc": [bad], "msg": "field name too long: 101 characters, at most 100"}
    ]


def test_custom_trait_string_limit_also_nested() -> None:
    ok = "s" * MAX_TRAIT_STRING_CHARS
    assert contact({"email": "a@example.com", "note": ok}).traits == {"note": ok}
    errs = errors_of({"email": "a@example.com", "note": ok + "s", "m": {"l": ["x", ok + "s"]}})
    msg = "too long: 10001 characters, at most 10000"
    assert errs == [{"loc": ["note"], "msg": msg}, {"loc": ["m", "l", 1], "msg": msg}]


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = {"k": value} if i % 2 else [value]
    return value


def test_custom_trait_depth_limit() -> None:
    assert contact({"email": "a@example.com", "deep": nested(MAX_TRAIT_DEPTH)}).traits == {
        "deep": nested(MAX_TRAIT_DEPTH)
    }
    (err,) = errors_of({"email": "a@example.com", "deep": nested(MAX_TRAIT_DEPTH + 1)})
    assert err["msg"] == "nested too deeply: at most 5 levels of objects and arrays"
    assert len(err["loc"]) == MAX_TRAIT_DEPTH + 1
    assert err["loc"][0] == "deep"


def test_very_deep_value_does_not_recurse_forever() -> None:
    (err,) = errors_of({"email": "a@example.com", "deep": nested(5000)})
    assert err["loc"][0] == "deep"


def test_non_json_custom_value_is_an_error() -> None:
    (err,) = errors_of({"email": "a@example.com", "file": object()})
    assert err["loc"] == ["file"]
    assert err["msg"].startswith("expected a JSON value")


def test_plain_email_fast_path_agrees_with_email_validator() -> None:
    # The fast path may only accept what email-validator accepts, normalized alike.
    rng = random.Random(7)
    tlds = ["com", "io", "c", "x1", "123", "test", "local", "co", "arpa", "xn--p1ai", "ab--cd"]
    chars = string.ascii_letters + string.digits

    def address() -> str:
        local = "".join(rng.choice(chars + "._+-") for _ in range(rng.randint(1, 70)))
        labels = ["".join(rng.choice(chars + "-") for _ in range(rng.randint(1, 12)))]
        labels += ["".join(rng.choice(chars) for _ in range(3))] * rng.randint(0, 2)
        return local + "@" + ".".join([*labels, rng.choice(tlds)])

    fast = 0
    for _ in range(20_000):
        text = address()
        if not _plain_email(text):
            continue
        fast += 1
        normalized = validate_email(text, check_deliverability=False).normalized
        assert normalized.lower() == text.lower(), text
    assert fast > 2_000  # the generator does reach the fast path
    for slow in ("a..b@x.com", "a@x.test", "a@x.123", "a@xn--bcher-kva.example", "a@-x.com"):
        assert not _plain_email(slow)


def _phone_by_the_library(text: str) -> str | None:
    """What phonenumbers itself makes of ``text``: the answer the fast path must give."""
    try:
        number = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def test_e164_fast_path_agrees_with_phonenumbers_on_every_country_code() -> None:
    # For every country code: every length E.164 allows, random digits, and national
    # numbers that start with the country's national prefix or with zeros (the cases
    # where parsing strips or keeps digits).
    rng = random.Random(11)
    checked = possible = 0
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        meta = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
            code, phonenumbers.region_code_for_country_code(code)
        )
        starts = ["", "0", "00", "1", (meta.national_prefix if meta else None) or ""]
        for total in range(7, 16):
            for start in starts:
                size = total - len(str(code)) - len(start)
                if size < 0:
                    continue
                rest = "".join(rng.choice(string.digits) for _ in range(size))
                digits = f"{code}{start}{rest}"
                quick = _e164_quick(digits)
                assert quick == _phone_by_the_library("+" + digits), digits
                checked += 1
                possible += quick is not None
    assert checked > 9_000
    assert possible > checked // 4  # both answers are reached often


def test_phone_fast_path_leaves_unknown_country_codes_to_the_library() -> None:
    # +210... has no country code phonenumbers knows: the fast path does not guess,
    # and the general path's answer (not a possible number) stands.
    assert _e164_quick("2101234567") is False
    with pytest.raises(ValidationFailed):
        contact({"phone": "+2101234567"})
    # Written with spaces, it is the general path too, with the same answer.
    assert contact({"phone": "+1 415 555 0100"}).phone == "+14155550100"
