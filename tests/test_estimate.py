"""copy_in_place.py --estimate: both routes priced from the inventory, with bucket-level reads only."""

from __future__ import annotations

import os
import re
import time

import pytest
from s3lake import aws, inventory
from s3lake.replication import estimate, pricing
from s3lake_testbed.inventory import inventory_row, write_inventory
from s3lake_testbed.replication import put_replication, rule
from s3lake_testbed.seed import make_bucket, make_kms_key

from bench.bench_estimate import source_bucket, write_generated_inventory
from jobs import copy_in_place as job

MIB = 1024 * 1024
SSE_C_KEY = b"k" * 32
DRY_LINE = re.compile(r"^  (\w+)\s+(\d+) requests \((put|get|free); (\d+) made by this run\)$")
EST_LINE = re.compile(r"^    (\w+)\s+([\d,]+) requests \((put|get|free)\)$")
# what names an object: any of these during --estimate would be a request about one object
OBJECT_OPS = {"HeadObject", "GetObject", "GetObjectAcl", "GetObjectTagging", "CopyObject", "PutObject",
              "UploadPartCopy", "CreateMultipartUpload", "CompleteMultipartUpload", "ListMultipartUploads",
              "ListObjectVersions", "ListObjectsV2"}


def run_job(*args):
    return job.main([str(a) for a in args])


def dry_run_counts(text):
    """(requests per op the real run makes, KMS calls) from the dry run's closing lines."""
    would = {m.group(1): int(m.group(2)) for m in map(DRY_LINE.match, text.splitlines()) if m}
    kms = int(re.search(r"^  KMS requests\s+(\d+)$", text, re.M).group(1))
    return would, kms


def route_counts(text, route):
    """Requests per op and KMS calls of one route's section of the --estimate output."""
    lines = text.splitlines()
    start = lines.index(f"  {route}:")
    out, kms = {}, None
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        m = EST_LINE.match(line)
        if m:
            out[m.group(1)] = int(m.group(2).replace(",", ""))
        k = re.match(r"^    KMS requests\s+([\d,]+)", line)
        if k:
            kms = int(k.group(1).replace(",", ""))
    return out, kms


def seed_mix(s3, bucket):
    """A few hundred objects: classes, SSE-KMS with and without a bucket key, SSE-C, multipart, out of scope."""
    kms = make_kms_key()
    put_replication(bucket, [rule("data", prefix="data/", priority=1, kms=True),
                             rule("plain", prefix="plain/", priority=2)])  # takes no SSE-KMS object
    rows = []

    def put(key, body, **kw):
        s3.put_object(Bucket=bucket, Key=key, Body=body, **kw)
        rows.append(inventory_row(s3, bucket, key))

    for i in range(120):
        put(f"data/std/{i:04d}.json", b"x" * (100 + i))
    for i in range(30):
        put(f"data/ia/{i:04d}.csv", b"y" * (1000 + i), StorageClass="STANDARD_IA")
    for i in range(20):
        put(f"data/gir/{i:04d}.bin", b"z" * 4000, StorageClass="GLACIER_IR")
    for i in range(15):
        put(f"data/cold/{i:04d}.log", b"old" * 50, StorageClass="GLACIER")
    for i in range(30):
        put(f"data/kms/{i:04d}.json", b"{}" * 40, ServerSideEncryption="aws:kms", SSEKMSKeyId=kms)
    for i in range(20):
        put(f"data/kmsbk/{i:04d}.json", b"{}" * 40, ServerSideEncryption="aws:kms", SSEKMSKeyId=kms,
            BucketKeyEnabled=True)
    for i in range(3):
        put(f"data/big/{i}.bin", b"\0" * (6 * MIB + i * 3 * MIB))
    for i in range(5):
        put(f"plain/kms/{i}.json", b"{}", ServerSideEncryption="aws:kms", SSEKMSKeyId=kms)
    for i in range(40):
        put(f"other/{i:04d}.txt", b"o" * 10)
    for i in range(10):  # SSE-C: a HEAD needs the key, so the row is written from the PUT's answer
        key = f"data/ssec/{i}.bin"
        out = s3.put_object(Bucket=bucket, Key=key, Body=b"secret", SSECustomerAlgorithm="AES256",
                            SSECustomerKey=SSE_C_KEY)
        rows.append({"key": key, "version_id": out.get("VersionId"), "is_latest": True, "is_delete_marker": False,
                     "size": 6, "e_tag": out["ETag"].strip('"'), "storage_class": "STANDARD",
                     "encryption_status": "SSE-C"})
    return rows


@pytest.fixture
def mix(moto_server, unique, s3):
    bucket = make_bucket(f"est-{unique}", versioned=True)
    rows = seed_mix(s3, bucket)
    delivery = write_inventory(make_bucket(f"est-inv-{unique}"), bucket, rows)
    return bucket, delivery, rows


# ------------------------------------------------------------------------------------ against the dry run


def test_estimate_request_counts_match_the_dry_run_on_the_same_inventory_without_one_object_request(
        spark, mix, tmp_path, s3_proxy, capsys):
    bucket, delivery, rows = mix
    args = ["--inventory-manifest", delivery.manifest_url, "--multipart-threshold", 5 * MIB]
    capsys.readouterr()
    with s3_proxy.window() as dry:
        assert run_job(*args, "--results", tmp_path / "dry", "--run-id", "dry", "--dry-run") == 0
    dry_out = capsys.readouterr().out
    with s3_proxy.window() as est:
        assert run_job(*args, "--results", tmp_path / "r", "--estimate") == 0
    out = capsys.readouterr().out

    would, dry_kms = dry_run_counts(dry_out)
    got, kms = route_counts(out, "copy")
    with capsys.disabled():
        print(f"\ndry run: {would}, KMS {dry_kms}\nestimate: {got}, KMS {kms}\nproxy during --estimate: {est.counts}")
    assert sum(got.values()) == pytest.approx(sum(would.values()), rel=0.01)
    for op in set(would) | set(got):
        assert got.get(op, 0) == pytest.approx(would.get(op, 0), rel=0.01), op
    assert got == would  # exact on this mix: the inventory is current and the multipart objects untagged
    assert kms == dry_kms == 30 * 2
    assert would["UploadPartCopy"] == 2 + 2 + 3  # 6, 9 and 12 MiB in 5 MiB parts
    # the estimate's object-level requests are exactly the inventory's own reads, the dry run's minus its HEADs
    inventory_heads = dry.counts["HeadObject"] - would["HeadObject"]
    assert {op: n for op, n in est.counts.items() if op in OBJECT_OPS} == {
        "GetObject": dry.counts["GetObject"], **({"HeadObject": inventory_heads} if inventory_heads else {})}
    assert est.counts["GetBucketNotificationConfiguration"] == 1
    assert est.counts["GetBucketLifecycleConfiguration"] == 1
    assert not (tmp_path / "r").exists()


def test_estimate_counts_candidates_by_what_each_route_does_with_them(spark, mix, tmp_path, capsys):
    bucket, delivery, rows = mix
    capsys.readouterr()

    assert run_job("--inventory-manifest", delivery.manifest_url, "--results", tmp_path / "r",
                   "--multipart-threshold", 5 * MIB, "--estimate") == 0

    out = capsys.readouterr().out
    assert re.search(r"^    copied\s+223 objects", out, re.M)
    assert re.search(r"^    archived \(GLACIER/DEEP_ARCHIVE\)\s+15 objects", out, re.M)
    assert re.search(r"^    SSE-C\s+10 objects", out, re.M)
    assert re.search(r"^    out of scope by key \(neither route\)\s+40 objects", out, re.M)
    assert re.search(r"^    SSE-KMS no rule takes \(neither route\)\s+5 objects", out, re.M)
    assert re.search(r"^    SSE-KMS without a bucket key\s+30 objects", out, re.M)
    assert re.search(r"^    multipart copies \(above threshold\)\s+3 objects", out, re.M)
    batch, _ = route_counts(out, "batch-replication")
    assert batch == {"GetBucketReplication": 1, "GetBucketVersioning": 1, "GetObject": 2, "PutObject": 3}
    assert re.search(r"Batch Operations fees\s+USD 0\.25 \(1 job\(s\) x USD 0\.25 \+ 233 objects", out)
    assert "cheaper: copy, " in out  # a few hundred objects: the job fee is the larger sum


# ------------------------------------------------------------------------------------ side effects


def test_side_effects_list_notifications_eventbridge_lifecycle_clocks_and_kept_versions(
        spark, moto_server, unique, tmp_path, s3, capsys):
    bucket = make_bucket(f"est-fx-{unique}", versioned=True)
    put_replication(bucket, [rule("all", kms=True)])
    queue = aws.client("sqs").create_queue(QueueName=f"est-{unique}")["QueueUrl"]
    queue_arn = aws.client("sqs").get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "QueueConfigurations": [
            {"Id": "json-copies", "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"],
             "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".json"}]}}},
            {"Id": "deletes", "QueueArn": queue_arn, "Events": ["s3:ObjectRemoved:*"]}],
        "EventBridgeConfiguration": {}})
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "logs-expire", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 365}},
        {"ID": "data-cold", "Status": "Enabled", "Filter": {"Prefix": "data/"},
         "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}],
         "NoncurrentVersionExpiration": {"NoncurrentDays": 7}}]})
    keys = [f"data/{i}.json" for i in range(6)] + [f"logs/{i}.log" for i in range(4)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 1024)
    delivery = write_inventory(make_bucket(f"est-fx-inv-{unique}"), bucket,
                               [inventory_row(s3, bucket, k) for k in keys])
    capsys.readouterr()

    assert run_job("--inventory-manifest", delivery.manifest_url, "--results", tmp_path / "r", "--estimate") == 0

    out = capsys.readouterr().out
    effects = out.split("  side effects of copy in place:\n", 1)[1].splitlines()
    assert f"    6 s3:ObjectCreated:Copy events to {queue_arn} (notification json-copies)" in effects
    assert not any("deletes" in line for line in effects)
    assert f"    EventBridge: 10 Object Created events (bucket {bucket})" in effects
    assert "    lifecycle rule logs-expire (expire after 365 days): 4 objects' clocks restart" in effects
    assert "    lifecycle rule data-cold (to GLACIER after 30 days): 6 objects' clocks restart" in effects
    assert ("    no NoncurrentVersionExpiration rule covers 4 copied objects: their old versions (4.00 KiB) are kept "
            "forever") in effects
    assert "(for 7 days, NoncurrentVersionExpiration)" in out


def test_a_bucket_without_noncurrent_expiration_keeps_the_old_versions_forever(
        spark, moto_server, unique, tmp_path, s3, capsys):
    bucket = make_bucket(f"est-nc-{unique}", versioned=True)
    put_replication(bucket, [rule("all")])
    s3.put_object(Bucket=bucket, Key="a", Body=b"a" * 2048)
    delivery = write_inventory(make_bucket(f"est-nc-inv-{unique}"), bucket, [inventory_row(s3, bucket, "a")])
    capsys.readouterr()

    assert run_job("--inventory-manifest", delivery.manifest_url, "--results", tmp_path / "r", "--estimate") == 0

    out = capsys.readouterr().out
    assert "    no NoncurrentVersionExpiration: the old versions (2.00 KiB) are kept forever" in out
    assert not re.search(r"EventBridge|s3:ObjectCreated|clocks restart", out)


# ------------------------------------------------------------------------------------ pure pricing


def group(**kw):
    base = dict(bucket="b", storage_class="STANDARD", encryption="SSE-S3", bucket_key=False, fate=estimate.COPY,
                tags_read=False, acl_read=True, multipart=False, versionless=True, noncurrent_days=None,
                objects=10 ** 8, bytes=500 * 10 ** 12, parts=0)
    base.update(kw)
    return estimate.Group(**base)


def facts(**kw):
    from s3lake.replication.scope import parse

    base = dict(bucket="b", acls_enabled=True, owner_id="me", owner_requests=2,
                scope=parse("b", {"Rules": [{"Status": "Enabled", "Filter": {}, "Destination": {"Bucket": "d"}}]}),
                versioning="Enabled")
    base.update(kw)
    return {"b": estimate.BucketFacts(**base)}


def test_at_scale_batch_replication_is_cheaper_and_the_verdict_says_why():
    est = estimate.build([group()], facts(), pricing.load())

    assert est.cheaper is est.batch
    assert est.batch.fees == pytest.approx(0.25 + 100.0)
    assert est.copy.tally.by_operation()["CopyObject"] == 10 ** 8
    assert est.copy.monthly == pytest.approx(500 * 10 ** 12 / 2 ** 30 * 0.023)
    text = estimate.format_estimate(est)
    # the fees plus 10^8 HEADs for the version ids the inventory lacks
    assert text.splitlines()[-1].startswith("  cheaper: batch-replication, USD 140.25 (USD 100.25 of it Batch")
    assert "kept forever, counted 12 months" in text.splitlines()[-1]


def test_noncurrent_expiration_bounds_the_old_versions_cost():
    est = estimate.build([group(noncurrent_days=30)], facts(), pricing.load())

    assert est.copy.monthly == 0
    assert est.copy.bounded == pytest.approx(500 * 10 ** 12 / 2 ** 30 * 0.023)


def test_a_price_table_without_batch_fees_still_parses_and_prices_them_at_zero():
    doc = {"region": "x", "as_of": "2026-01-01", "sources": ["s"], "requests_per_1000": {
        "STANDARD": {"put": 0.005, "get": 0.0004}}, "storage_per_gb_month": {"STANDARD": 0.023},
        "kms_per_10000_requests": 0.03}
    assert pricing.parse(doc).batch_job == 0.0
    with pytest.raises(pricing.PriceTableError, match="batch_operations.per_job must be a non-negative number"):
        pricing.parse({**doc, "batch_operations": {"per_job": -1}})


def test_notification_answers_are_parsed_with_their_filters_and_eventbridge():
    notes, eventbridge = estimate.parse_notifications({
        "TopicConfigurations": [{"Id": "t", "TopicArn": "arn:t", "Events": ["s3:ObjectCreated:Copy"],
                                 "Filter": {"Key": {"FilterRules": [{"Name": "Prefix", "Value": "a/"},
                                                                    {"Name": "Suffix", "Value": ".gz"}]}}}],
        "LambdaFunctionConfigurations": [{"LambdaFunctionArn": "arn:f", "Events": ["s3:ObjectCreated:Put"]}],
        "EventBridgeConfiguration": {}})

    assert notes[0] == estimate.Notification("t", "arn:t", ("s3:ObjectCreated:Copy",), "a/", ".gz")
    assert notes[1].fires_on("s3:ObjectCreated:Copy") is False and notes[1].id == "lambdafunction#1"
    assert eventbridge is True
    assert estimate.parse_notifications({})[1] is False


def test_estimate_with_dry_run_or_from_report_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        job.parse_args(["--inventory-manifest", "s3://x/m.json", "--results", "/tmp/r", "--estimate", "--dry-run"])
    assert e.value.code == 2
    assert "--estimate prices an inventory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        job.parse_args(["--from-report", "/tmp/rep", "--results", "/tmp/r", "--estimate"])
    assert "not with --from-report" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ scale


@pytest.mark.skipif(os.environ.get("S3LAKE_SKIP_SLOW") == "1", reason="S3LAKE_SKIP_SLOW=1")
def test_a_million_row_inventory_is_estimated_without_one_object_request(
        spark, moto_server, unique, tmp_path, s3_proxy, capsys):
    src = source_bucket(f"est-big-{unique}")  # holds no object: an object request would also be an error
    manifest = write_generated_inventory(make_bucket(f"est-big-inv-{unique}"), src, 10 ** 6)
    capsys.readouterr()

    started = time.monotonic()
    with s3_proxy.window() as w:
        assert run_job("--inventory-manifest", manifest, "--results", tmp_path / "r", "--estimate") == 0
    seconds = time.monotonic() - started

    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n--estimate over 10^6 rows: {seconds:.1f} s; requests {w.counts}")
    with s3_proxy.window() as reading:  # the inventory's own reads: manifest, checksum, data files
        inventory.read(spark, manifest=manifest)[1].count()
    assert {op: n for op, n in w.counts.items() if op in OBJECT_OPS} == reading.counts
    candidates = sum(int(m.group(1).replace(",", "")) for m in
                     re.finditer(r"^    (?:copied|archived|SSE-C|out of|owned)[^\d]*([\d,]+) objects", out, re.M))
    assert candidates == 800_000  # one in five rows is already replicated
