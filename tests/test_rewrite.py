"""The anonymizer's pure line rewrite (s3lake.anonymize.rewrite): bytes through the rules, no S3, no Spark."""

from __future__ import annotations

import gzip
import json

import pytest
from s3lake.anonymize import rewrite, rules


def ruleset(*specs):
    return rules.parse_rules(list(specs))


def test_untouched_lines_stay_byte_identical_and_changed_lines_keep_their_style():
    rs = ruleset({"path": "f", "action": "blank"})
    untouched = b'{"g":  1.50, "h": "\\u00e9"}\r\n'
    assert rewrite.rewrite_line(untouched, rs) == (None, [])
    assert rewrite.rewrite_line(b'{"f": "x", "e": "\\u00e9"}\r\n', rs) == (b'{"f": "", "e": "\\u00e9"}\r\n', ["f"])
    assert rewrite.rewrite_line('{"f":"x","e":"é"}'.encode(), rs) == ('{"f":"","e":"é"}'.encode(), ["f"])
    assert rewrite.rewrite_line(b"   \n", rs) == (None, [])


@pytest.mark.parametrize("line", [b'{"f": NaN}\n', b'{"f": 1\n', b"\xff\xfe\n", b"plain text\n"])
def test_non_json_lines_raise(line):
    with pytest.raises(ValueError):
        rewrite.rewrite_line(line, ruleset({"path": "f", "action": "blank"}))


def test_lines_split_across_chunks_and_a_missing_final_newline_are_kept():
    chunks = [b'{"a":', b'1}\n{"b"', b":2}\n", b'{"c":3}']
    assert list(rewrite.line_batches(chunks)) == [([b'{"a":1}'], True), ([b'{"b":2}'], True), ([b'{"c":3}'], False)]
    with pytest.raises(rewrite.BadLine, match="line 2: longer than 10 bytes"):
        list(rewrite.line_batches([b"short\n", b"x" * 8, b"y" * 8], max_line=10))
    with pytest.raises(rewrite.BadLine, match="line 3: longer than 10 bytes"):
        list(rewrite.line_batches([b"a\nb\n" + b"z" * 10 + b"\n"], max_line=10))


def test_chunks_are_rewritten_line_by_line_whatever_the_chunk_boundaries():
    rs = ruleset({"path": "f", "action": "blank"})
    data = b'{"f": "x"}\r\n{"g":  1.50}\n\n{"f":"y","h":[1, 2]}\n{"g": 2}'
    want = b'{"f": ""}\r\n{"g":  1.50}\n\n{"f":"","h":[1,2]}\n{"g": 2}'
    for size in (1, 3, 7, len(data)):
        stats = rewrite.Stats()
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        assert b"".join(rewrite.rewrite_chunks(chunks, rs, stats)) == want
        assert (stats.lines, stats.records_changed, dict(stats.fields)) == (5, 2, {"f": 2})
    with pytest.raises(rewrite.BadLine, match="line 3: not valid JSON"):
        list(rewrite.rewrite_chunks([b'{"f": 1}\n{}\n', b'{"f": \n'], rs, rewrite.Stats()))


def test_multi_member_gzip_is_read_whole():
    raw = gzip.compress(b'{"a":1}\n') + gzip.compress(b'{"b":2}\n')
    stats = rewrite.Stats()
    got = b"".join(rewrite.decoded_chunks([raw[:5], raw[5:]], True, stats))
    assert got == b'{"a":1}\n{"b":2}\n' and stats.bytes_in == len(raw)
    with pytest.raises(rewrite.BadLine, match="not gzip"):
        list(rewrite.decoded_chunks([b"plain"], True, rewrite.Stats()))


def test_fields_changed_and_matched_are_sorted_json_per_rule():
    stats = rewrite.Stats()
    stats.fields.update({"b": 2, "a": 1})
    stats.matched.update({"b": 3, "a": 1, "c": 4})
    assert list(json.loads(stats.fields_json())) == ["a", "b"]
    assert json.loads(stats.matched_json()) == {"a": 1, "b": 3, "c": 4}
    assert rewrite.Stats().fields_json() is None and rewrite.Stats().matched_json() is None


def test_each_rule_counts_the_fields_it_reached_and_changed_over_a_stream():
    rs = ruleset({"path": "f", "action": "blank"}, {"path": "items[].x", "action": "null"},
                 {"path": "nowhere", "action": "drop"})
    data = (b'{"f": "a", "items": [{"x": 1}, {"x": null}, {"y": 2}]}\n'
            b'{"f": "", "items": []}\n'
            b'{"g": 1}\n')
    stats = rewrite.Stats()
    out = b"".join(rewrite.rewrite_chunks([data], rs, stats))
    assert out.splitlines()[0] == b'{"f": "", "items": [{"x": null}, {"x": null}, {"y": 2}]}'
    assert (stats.lines, stats.records_changed) == (3, 1)
    assert stats.matched == {"f": 2, "items[].x": 2}  # "nowhere" reached nothing: absent, not 0
    assert stats.fields == {"f": 1, "items[].x": 1}
