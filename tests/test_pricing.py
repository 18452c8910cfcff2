from __future__ import annotations

import json
from pathlib import Path

import pytest
from s3lake.replication import pricing

ROOT = Path(__file__).resolve().parents[1]


def table(**overrides):
    doc = json.loads((ROOT / "conf" / "prices" / "us-east-1.json").read_text())
    doc.update(overrides)
    return pricing.parse(doc, "t.json")


def test_shipped_table_is_dated_and_cites_its_source_pages():
    t = pricing.load(str(ROOT / "conf" / "prices" / "us-east-1.json"))
    assert t.region == "us-east-1" and t.as_of == "2026-12-01"
    assert "https://aws.amazon.com/s3/pricing/" in t.sources and "https://aws.amazon.com/kms/pricing/" in t.sources
    assert t.request_price("STANDARD", "put") == pytest.approx(0.005 / 1000)
    assert t.request_price("GLACIER_IR", "get") == pytest.approx(0.01 / 1000)
    assert t.request_price("EXPRESS_ONEZONE", "put") == t.request_price("STANDARD", "put")


@pytest.mark.parametrize("op,expected", [("CopyObject", "put"), ("UploadPartCopy", "put"),
                                         ("ListMultipartUploads", "put"), ("HeadObject", "get"),
                                         ("GetObjectAcl", "get"), ("GetBucketReplication", "get"),
                                         ("AbortMultipartUpload", "free")])
def test_request_tiers_follow_the_pricing_page(op, expected):
    assert pricing.tier(op) == expected


def test_copy_write_requests_for_single_and_multipart_copies():
    assert pricing.copy_write_requests(None, True) == {"CopyObject": 1}
    assert pricing.copy_write_requests(3, True) == {"ListMultipartUploads": 1, "CreateMultipartUpload": 1,
                                                    "UploadPartCopy": 3, "CompleteMultipartUpload": 1,
                                                    "GetObjectTagging": 1}
    assert "GetObjectTagging" not in pricing.copy_write_requests(3, False)


def test_kms_calls_only_for_kms_objects_without_a_bucket_key():
    assert pricing.kms_calls("aws:kms", False, None) == 2
    assert pricing.kms_calls("aws:kms:dsse", False, 4) == 9
    assert pricing.kms_calls("aws:kms", True, None) == 0
    assert pricing.kms_calls("AES256", False, None) == 0


def test_estimate_prices_each_request_at_its_storage_class():
    tally = pricing.Tally()
    tally.add("HeadObject", 1000, "STANDARD_IA").add("CopyObject", 1000, "STANDARD_IA")
    tally.add("GetBucketReplication", 1)
    tally.kms_calls = 20000
    tally.add_version("STANDARD_IA", 10 * pricing.GIB)

    cost = pricing.estimate(tally, table())

    assert cost["requests"]["put"] == {"requests": 1000, "cost": pytest.approx(0.01)}
    assert cost["requests"]["get"]["cost"] == pytest.approx(0.001 + 0.0004 / 1000)
    assert cost["kms"] == pytest.approx(0.06)
    assert cost["retrieval"] == pytest.approx(0.1)
    assert cost["storage_per_month"] == pytest.approx(0.125)
    assert cost["replication_transfer"] == pytest.approx(0.2)
    assert cost["one_time"] == pytest.approx(0.01 + 0.001 + 0.0000004 + 0.06 + 0.1)


def test_tallies_merge_made_and_predicted_requests():
    a = pricing.Tally().add("HeadObject", 2).predict("CopyObject", 1)
    a.add_version("STANDARD", 5)
    b = pricing.Tally().add("HeadObject", 3)
    b.kms_calls, b.counted = 2, 3
    merged = pricing.Tally().merge(a).merge(b)
    assert merged.by_operation() == {"CopyObject": 1, "HeadObject": 5} and merged.kms_calls == 2
    assert merged.by_operation(made_only=True) == {"HeadObject": 5} and merged.counted == 3
    assert merged.new_bytes == {"STANDARD": 5} and merged.total_requests == 6


def test_format_estimate_names_the_date_the_source_and_the_total():
    tally = pricing.Tally().predict("CopyObject", 2000)
    tally.add_version("STANDARD", pricing.GIB)
    text = pricing.format_estimate(tally, table())
    assert text.splitlines()[0] == ("estimated cost of the real run (us-east-1 list prices as of 2026-12-01, "
                                    "https://aws.amazon.com/s3/pricing/):")
    assert "  CopyObject                           2000 requests (put; 0 made by this run)" in text
    assert "  one-time total               USD 0.01" in text
    assert "  storage of the old versions  USD 0.02 per month" in text
    tiny = pricing.format_estimate(pricing.Tally().predict("CopyObject", 3), table())
    assert "  one-time total               USD 0.000015" in tiny


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "price table {p}: not valid JSON (Expecting property name enclosed in double quotes: "
                      "line 1 column 2 (char 1))"),
        ("[]", "price table {p}: not a JSON object"),
        ('{"region": "x"}', "price table {p}: missing 'as_of'"),
    ],
)
def test_a_table_that_does_not_parse_is_one_line(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(pricing.PriceTableError) as err:
        pricing.load(str(path))
    assert str(err.value) == message.format(p=path)


def test_negative_or_missing_prices_are_refused():
    with pytest.raises(pricing.PriceTableError, match=r"requests_per_1000.STANDARD.put must be a non-negative"):
        table(requests_per_1000={"STANDARD": {"put": -1, "get": 0}})
    with pytest.raises(pricing.PriceTableError, match="must be an object with a STANDARD entry"):
        table(storage_per_gb_month={"GLACIER": 0.0036})
    with pytest.raises(pricing.PriceTableError, match="cannot read it"):
        pricing.load("/nonexistent/prices.json")
