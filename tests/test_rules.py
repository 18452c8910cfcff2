from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from s3lake.anonymize import job, rules, writes
from s3lake.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
KEY = rules.Secret(b"test-key")


def H(text: str, key: bytes = b"test-key") -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def ruleset(*specs, key=KEY):
    return rules.parse_rules(list(specs)).with_key(key)


def applied(record, *specs):
    changed = ruleset(*specs).apply(record)
    return record, changed


# ------------------------------------------------------------------------------------------- actions


def test_blank_null_and_drop_change_only_fields_that_exist():
    record, changed = applied(
        {"file_contents": "secret", "a": 1, "b": "x", "keep": True},
        {"path": "file_contents", "action": "blank"},
        {"path": "a", "action": "null"},
        {"path": "b", "action": "drop"},
        {"path": "absent", "action": "blank"},
        {"path": "also.absent", "action": "drop"},
    )
    assert record == {"file_contents": "", "a": None, "keep": True}
    assert changed == ["file_contents", "a", "b"]


def test_already_blank_and_null_values_count_as_unchanged():
    record, changed = applied({"f": "", "g": None}, {"path": "f", "action": "blank"},
                              {"path": "g", "action": "blank"}, {"path": "g", "action": "hmac"})
    assert record == {"f": "", "g": None} and changed == []


def test_nested_and_array_paths_reach_every_element():
    record, changed = applied(
        {"user": {"email": "a@x.io", "name": "Ann"}, "items": [{"note": "n1"}, {"other": 1}, "scalar", {"note": "n2"}],
         "tags": ["t1", "t2"], "notalist": {"note": "kept"}},
        {"path": "user.email", "action": "hmac"},
        {"path": "items[].note", "action": "blank"},
        {"path": "tags[]", "action": "hmac"},
        {"path": "notalist[].note", "action": "blank"},
    )
    assert record == {"user": {"email": H("a@x.io"), "name": "Ann"},
                      "items": [{"note": ""}, {"other": 1}, "scalar", {"note": ""}],
                      "tags": [H("t1"), H("t2")], "notalist": {"note": "kept"}}
    assert changed == ["user.email", "items[].note", "tags[]"]


def test_a_path_through_a_scalar_or_missing_parent_adds_nothing():
    record, changed = applied({"user": "just a string", "x": [1, 2]},
                              {"path": "user.email", "action": "blank"}, {"path": "x[].y", "action": "null"},
                              {"path": "nope.deeper", "action": "drop"})
    assert record == {"user": "just a string", "x": [1, 2]} and changed == []


def test_hmac_is_keyed_deterministic_hex_and_hashes_non_strings_as_json():
    one = ruleset({"path": "v", "action": "hmac"})
    other = ruleset({"path": "v", "action": "hmac"}, key=rules.Secret(b"another-key"))
    a, b, c = {"v": "alice@example.com"}, {"v": "alice@example.com"}, {"v": "alice@example.com"}
    one.apply(a)
    one.apply(b)
    other.apply(c)
    assert a == b == {"v": H("alice@example.com")} and len(a["v"]) == 64
    assert c["v"] == H("alice@example.com", b"another-key") != a["v"]
    n = {"v": {"b": 1, "a": [1, 2]}}
    one.apply(n)
    assert n["v"] == H('{"a":[1,2],"b":1}')


def test_mask_keeps_length_and_shape_and_optionally_the_last_characters():
    record, _ = applied({"name": "Zoë O'Neil", "card": "4111-1111-1111-1234", "n": 12345, "deep": {"x": ["ab", 7]}},
                        {"path": "name", "action": "mask"},
                        {"path": "card", "action": "mask", "char": "#", "keep_last": 4},
                        {"path": "n", "action": "mask"}, {"path": "deep", "action": "mask"})
    assert record == {"name": "*** *'****", "card": "####-####-####-1234", "n": "*****",
                      "deep": {"x": ["**", "*"]}}


def test_redact_replaces_emails_and_ipv4_anywhere_in_a_field_including_nested_strings():
    record, changed = applied(
        {"msg": "mail bob@corp.example from 10.0.0.255, not 999.1.1.1", "ctx": {"hops": ["1.2.3.4", 5]},
         "clean": "nothing here"},
        {"path": "msg", "action": "redact", "patterns": [{"builtin": "email", "hmac": True},
                                                        {"builtin": "ipv4", "replace": "[IP]"}]},
        {"path": "ctx", "action": "redact", "patterns": [{"builtin": "ipv4"}]},
        {"path": "clean", "action": "redact", "patterns": [{"regex": r"\d+"}]},
    )
    assert record == {"msg": f"mail {H('bob@corp.example')} from [IP], not 999.1.1.1",
                      "ctx": {"hops": ["[REDACTED]", 5]}, "clean": "nothing here"}
    assert changed == ["msg", "ctx"]


def test_redact_replacement_may_use_groups():
    pattern = {"regex": r"user=(\w)\w*", "replace": r"user=\1…"}
    record, _ = applied({"m": "user=alice id=7"}, {"path": "m", "action": "redact", "patterns": [pattern]})
    assert record == {"m": "user=a… id=7"}


# ---------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("doc,message", [
    ([], "non-empty JSON list"),
    ({"rules": "x"}, "non-empty JSON list"),
    ([{"path": "a", "action": "shred"}], "unknown action 'shred'"),
    ([{"path": "a..b", "action": "blank"}], "bad rule path"),
    ([{"path": "a[0]", "action": "blank"}], "bad rule path"),
    ([{"path": "", "action": "blank"}], "non-empty string"),
    ([{"path": "a[]", "action": "drop"}], "drop needs a field name"),
    ([{"path": "a", "action": "blank", "char": "#"}], "unknown option"),
    ([{"path": "a", "action": "mask", "char": "##"}], "one character"),
    ([{"path": "a", "action": "mask", "keep_last": -1}], "non-negative"),
    ([{"path": "a", "action": "redact"}], "non-empty 'patterns'"),
    ([{"path": "a", "action": "redact", "patterns": [{"regex": "(unclosed"}]}], "bad regex"),
    ([{"path": "a", "action": "redact", "patterns": [{"regex": "x", "replace": r"\2"}]}], "bad 'replace'"),
    ([{"path": "a", "action": "redact", "patterns": [{"builtin": "ssn"}]}], "unknown builtin"),
    ([{"path": "a", "action": "redact", "patterns": [{"regex": "x", "builtin": "email"}]}], "exactly one"),
])
def test_invalid_rules_are_config_errors(doc, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        rules.parse_rules(doc)


def test_hmac_rules_without_a_key_are_a_startup_error():
    parsed = rules.parse_rules([{"path": "a", "action": "redact", "patterns": [{"builtin": "email", "hmac": True}]}])
    with pytest.raises(ConfigError, match="no key was given.*--hmac-key-param"):
        parsed.with_key(None)
    assert rules.parse_rules([{"path": "a", "action": "blank"}]).with_key(None).rules


def test_secret_never_shows_in_repr():
    assert "test-key" not in repr(KEY) + str(KEY) + repr(ruleset({"path": "a", "action": "hmac"}))


def test_shipped_rules_files_load(tmp_path):
    blank = rules.load(str(ROOT / "conf/anonymize/file-contents.json"))
    assert [(r.path, r.action) for r in blank.rules] == [("file_contents", "blank")] and not blank.needs_key
    rich = rules.load(str(ROOT / "conf/anonymize/security-lake.json"))
    assert rich.needs_key and len(rich.digest) == 64
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        rules.load(str(bad))
    with pytest.raises(ConfigError, match="cannot read rules file"):
        rules.load(str(tmp_path / "missing.json"))


def test_rules_and_hmac_key_come_from_s3_and_ssm_securestring(moto_server, s3, unique):
    s3.create_bucket(Bucket=f"rules-{unique}")
    s3.put_object(Bucket=f"rules-{unique}", Key="r.json", Body=b'[{"path": "e", "action": "hmac"}]')
    from s3lake import aws

    aws.client("ssm").put_parameter(Name=f"/s3lake/{unique}/hmac", Value="ssm-key", Type="SecureString")

    loaded = rules.load(f"s3://rules-{unique}/r.json")
    key = rules.hmac_key(f"/s3lake/{unique}/hmac", {"S3LAKE_HMAC_KEY": "env-key"})
    record = {"e": "x"}
    loaded.with_key(key).apply(record)

    assert record == {"e": H("x", b"ssm-key")}
    assert rules.hmac_key(None, {"S3LAKE_HMAC_KEY": "env-key"}).reveal() == b"env-key"
    assert rules.hmac_key(None, {}) is None
    with pytest.raises(ConfigError, match="ParameterNotFound"):
        rules.hmac_key(f"/s3lake/{unique}/nope", {})


# ------------------------------------------------------------------------------------- lines and bytes


@pytest.mark.parametrize("text,seconds", [("300", 300), ("300s", 300), ("5m", 300), ("2h", 7200), ("1d", 86400)])
def test_min_age_units(text, seconds):
    assert job.parse_min_age(text) == seconds


def test_bad_options_are_config_errors():
    for call in (lambda: job.parse_min_age("soon"), lambda: job.parse_tag("PROCESSED"),
                 lambda: job.parse_tag("aws:x=1")):
        with pytest.raises(ConfigError):
            call()
    assert job.parse_tag("PROCESSED=true") == ("PROCESSED", "true")


def test_tags_merge_replaces_the_processed_key_and_refuses_an_eleventh():
    tags = [{"Key": "a", "Value": "1"}, {"Key": "PROCESSED", "Value": "false"}]
    assert writes.merge_tags(tags, ("PROCESSED", "true")) == [{"Key": "a", "Value": "1"},
                                                                {"Key": "PROCESSED", "Value": "true"}]
    with pytest.raises(writes.TooManyTags, match="exceed S3's 10"):
        writes.merge_tags([{"Key": f"k{i}", "Value": "v"} for i in range(10)], ("PROCESSED", "true"))
    assert writes.tagging_header([{"Key": "a b", "Value": "x&y=z"}]) == "a%20b=x%26y%3Dz"


def test_rules_digest_is_part_of_the_default_run_id():
    one = job.default_run_id("src/daily/2026-11-24T00-00Z", "a" * 64)
    assert one == job.default_run_id("src/daily/2026-11-24T00-00Z", "a" * 64)
    assert one != job.default_run_id("src/daily/2026-11-24T00-00Z", "b" * 64)
    assert "/" not in one and "=" not in one


# ----------------------------------------------------------------------------------- dotted keys


ZEEK = {"ts": 1409444955.12, "uid": "C1", "id.orig_h": "10.0.0.1", "id.orig_p": 5353, "id.resp_h": "224.0.0.251"}


def test_a_dotted_path_reaches_a_literal_key_holding_dots():
    record, changed = applied(dict(ZEEK), {"path": "id.orig_h", "action": "null"},
                              {"path": "`id.resp_h`", "action": "hmac"})
    assert record == {**ZEEK, "id.orig_h": None, "id.resp_h": H("224.0.0.251")}
    assert changed == ["id.orig_h", "`id.resp_h`"]


def test_where_both_readings_exist_an_unquoted_path_takes_both_and_backticks_only_the_literal_key():
    both = {"a.b": "literal", "a": {"b": "nested"}}
    assert applied(json.loads(json.dumps(both)), {"path": "a.b", "action": "blank"})[0] == {
        "a.b": "", "a": {"b": ""}}
    assert applied(json.loads(json.dumps(both)), {"path": "`a.b`", "action": "blank"})[0] == {
        "a.b": "", "a": {"b": "nested"}}
    assert applied(json.loads(json.dumps(both)), {"path": "`a`.b", "action": "blank"})[0] == {
        "a.b": "literal", "a": {"b": ""}}


def test_paths_reach_keys_with_any_character_json_allows():
    record = {"a b": 1, "x[0]": 2, "q`t": 3, "\u00e9t\u00e9": 4, "0lead": 5, "_u": 6, "Case": 7, "case": 8,
              "deep": {"k.v": [{"in.ner": "s"}]}}
    specs = [{"path": p, "action": "null"} for p in
             ("a b", "`x[0]`", "`q``t`", "\u00e9t\u00e9", "0lead", "_u", "Case", "deep.`k.v`[].in.ner")]
    out, changed = applied(record, *specs)
    assert out == {"a b": None, "x[0]": None, "q`t": None, "\u00e9t\u00e9": None, "0lead": None, "_u": None,
                   "Case": None, "case": 8, "deep": {"k.v": [{"in.ner": None}]}}
    assert len(changed) == len(specs)


@pytest.mark.parametrize("path", ["a..b", ".a", "a.", "`a", "a`b`", "a[]b", "a[0]", "``", "a.[]"])
def test_a_malformed_path_is_one_config_error(path):
    with pytest.raises(ConfigError, match="rule path") as err:
        rules.parse_rules([{"path": path, "action": "null"}])
    assert "\n" not in str(err.value)


def test_rules_sharing_a_path_are_counted_apart():
    rs = ruleset({"path": "f", "action": "mask"}, {"path": "f", "action": "blank"})
    changed, matched = {}, {}
    assert rs.apply_counted({"f": "abc"}, changed, matched)
    assert rs.labels == ["f (rule 1)", "f (rule 2)"]
    assert (changed, matched) == ({"f (rule 1)": 1, "f (rule 2)": 1}, {"f (rule 1)": 1, "f (rule 2)": 1})
