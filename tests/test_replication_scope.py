from __future__ import annotations

import pytest
from s3lake.replication import scope as rs
from s3lake_testbed.replication import put_replication, rule
from s3lake_testbed.seed import make_bucket


def scope(*rules):
    return rs.parse("src", {"Role": "r", "Rules": list(rules)})


# ------------------------------------------------------------------------------------ pure parsing


def test_prefix_rule_covers_only_its_prefix():
    s = scope(rule("p", prefix="logs/"))
    assert s.covers("logs/a.json") and not s.covers("data/a.json")
    assert not s.needs_tags("logs/a.json") and not s.maybe_covers("data/a.json")


def test_empty_filter_and_empty_prefix_cover_everything():
    assert scope({"ID": "e", "Status": "Enabled", "Filter": {}, "Destination": {}}).covers("any/key")
    assert scope(rule("p", prefix="")).covers("any/key")


def test_tag_rule_needs_the_tags_and_matches_key_and_value():
    s = scope(rule("t", tags={"replicate": "yes"}))
    assert s.needs_tags("a") and s.maybe_covers("a")
    assert s.covers("a", {"replicate": "yes", "other": "1"})
    assert not s.covers("a", {"replicate": "no"})
    assert not s.covers("a", {})
    with pytest.raises(ValueError):
        s.covers("a")


def test_and_rule_needs_the_prefix_and_every_tag():
    s = scope(rule("and", prefix="data/", tags={"a": "1", "b": "2"}))
    assert s.covers("data/x", {"a": "1", "b": "2"})
    assert not s.covers("data/x", {"a": "1"})
    assert not s.covers("logs/x", {"a": "1", "b": "2"})
    assert not s.maybe_covers("logs/x") and not s.needs_tags("logs/x")


def test_a_tag_free_rule_over_the_key_makes_tags_unnecessary():
    s = scope(rule("t", tags={"a": "1"}, priority=2), rule("p", prefix="data/", priority=1))
    assert not s.needs_tags("data/x") and s.covers("data/x")
    assert s.needs_tags("logs/x") and s.covers("logs/x", {"a": "1"}) and not s.covers("logs/x", {})


def test_disabled_rule_covers_nothing_even_at_a_higher_priority():
    s = scope(rule("off", prefix="data/", enabled=False, priority=9), rule("on", prefix="logs/", priority=1))
    assert not s.covers("data/x") and not s.maybe_covers("data/x") and s.covers("logs/y")


def test_legacy_rule_prefix_is_read():
    s = scope(rule("v1", prefix="old/", legacy=True))
    assert s.rules[0].priority is None
    assert s.covers("old/file") and not s.covers("new/file")


def test_kms_objects_replicate_only_under_a_rule_that_selects_them():
    s = scope(rule("plain", prefix="a/"), rule("kms", prefix="b/", kms=True))
    assert s.covers("a/x", encryption="SSE-S3") and not s.covers("a/x", encryption="SSE-KMS")
    assert s.covers("b/x", encryption="aws:kms") and not s.maybe_covers("a/x", "DSSE-KMS")


@pytest.mark.parametrize(
    "rules,message",
    [
        ([], "bucket src: replication configuration has no rules"),
        ([{"ID": "x", "Status": "On", "Destination": {}}],
         "bucket src: replication rule 'x': Status must be Enabled or Disabled, got 'On'"),
        ([{"ID": "x", "Status": "Enabled", "Filter": {"Prefix": "a", "Tag": {"Key": "k", "Value": "v"}}}],
         "bucket src: replication rule 'x': Filter must hold one of Prefix, Tag or And, not ['Prefix', 'Tag']"),
    ],
)
def test_unreadable_configuration_is_one_line(rules, message):
    with pytest.raises(rs.ReplicationScopeError) as err:
        rs.parse("src", {"Rules": rules})
    assert str(err.value) == message


def test_no_configuration_and_no_versioning_are_refused():
    with pytest.raises(rs.ReplicationScopeError, match="^bucket b has no replication configuration"):
        rs.parse("b", None)
    with pytest.raises(rs.ReplicationScopeError, match="^bucket b: versioning is Suspended"):
        rs.check_versioning("b", "Suspended")
    with pytest.raises(rs.ReplicationScopeError, match="^bucket b: versioning is never enabled"):
        rs.check_versioning("b", None)
    rs.check_versioning("b", "Enabled")


# ------------------------------------------------------------------------- against the moto server


def test_fetch_reads_each_rule_kind_from_the_bucket(moto_server, unique):
    bucket = make_bucket(f"rs-{unique}", versioned=True)
    put_replication(bucket, [
        rule("prefix", prefix="logs/", priority=1),
        rule("tag", tags={"replicate": "yes"}, priority=2, kms=True),
        rule("and", prefix="data/", tags={"a": "1", "b": "2"}, priority=3),
        rule("off", prefix="", enabled=False, priority=4),
    ])

    s = rs.fetch(bucket)

    assert [(r.id, r.enabled, r.prefix, r.tags, r.priority, r.kms_objects) for r in s.rules] == [
        ("prefix", True, "logs/", (), 1, False),
        ("tag", True, "", (("replicate", "yes"),), 2, True),
        ("and", True, "data/", (("a", "1"), ("b", "2")), 3, False),
        ("off", False, "", (), 4, False),
    ]
    assert s.covers("logs/x") and not s.covers("other/x", {})
    assert s.covers("data/x", {"a": "1", "b": "2"}) and not s.covers("data/x", {"a": "1"})


def test_fetch_reads_a_legacy_rule(moto_server, unique):
    bucket = make_bucket(f"rs-v1-{unique}", versioned=True)
    put_replication(bucket, [rule("v1", prefix="old/", legacy=True)])
    assert rs.fetch(bucket).covers("old/a") and not rs.fetch(bucket).covers("new/a")


def test_fetch_refuses_a_bucket_without_replication_or_versioning(moto_server, unique, s3):
    plain = make_bucket(f"rs-plain-{unique}")
    with pytest.raises(rs.ReplicationScopeError, match=f"^bucket {plain}: versioning is never enabled"):
        rs.fetch(plain)
    versioned = make_bucket(f"rs-ver-{unique}", versioned=True)
    with pytest.raises(rs.ReplicationScopeError, match=f"^bucket {versioned} has no replication configuration"):
        rs.fetch(versioned)
    put_replication(versioned, [rule("all")])
    s3.put_bucket_versioning(Bucket=versioned, VersioningConfiguration={"Status": "Suspended"})
    with pytest.raises(rs.ReplicationScopeError, match=f"^bucket {versioned}: versioning is Suspended"):
        rs.fetch(versioned)
