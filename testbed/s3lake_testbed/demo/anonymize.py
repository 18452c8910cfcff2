"""Demo of jobs/anonymize.py: blank ``file_contents`` and pseudonymize emails in JSON-lines uploads.

``run(workdir, spark)`` needs the moto server the demo already started (AWS_ENDPOINT_URL set).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

CONF = Path(__file__).resolve().parents[3] / "conf" / "anonymize"
BUCKET = "demo-uploads"


def _records(n: int, start: int = 0) -> bytes:
    lines = []
    for i in range(start, start + n):
        lines.append(json.dumps({
            "id": i, "user": {"email": f"user{i % 7}@example.com", "name": f"User {i % 7}",
                              "phone": f"+44 20 7946 {i:04d}"},
            "source_ip": f"10.0.0.{i % 250}", "file_contents": f"-----BEGIN SECRET {i}-----",
            "session_token": f"tok-{i}", "recipients": [f"ops{i % 3}@example.com"],
            "attachments": [{"name": f"f{i}.txt", "file_contents": "c2VjcmV0", "password": "pw"}],
            "message": f"sent to ops{i % 3}@example.com from 192.168.1.{i % 200}",
        }))
    return ("\n".join(lines) + "\n").encode()


def run(workdir: str, spark) -> None:
    """Seed a few uploads, anonymize them with the richer example rules, run again (a no-op), print both."""
    import os

    from s3lake import aws

    from jobs import anonymize as job
    from s3lake_testbed.seed import make_bucket, make_kms_key, writer

    s3 = aws.s3()
    make_bucket(BUCKET, versioned=True)
    kms = make_kms_key("demo uploads key")
    seed = writer()  # no client checksum: strict S3 gives each upload its default CRC64NVME
    seed.put_object(Bucket=BUCKET, Key="uploads/2024/05/01/a.json", Body=_records(20), Tagging="team=sec",
                    ServerSideEncryption="aws:kms", SSEKMSKeyId=kms, ContentType="application/x-ndjson")
    seed.put_object(Bucket=BUCKET, Key="uploads/2024/05/01/b.json.gz", Body=gzip.compress(_records(30, 100)),
                    ContentEncoding="gzip", ContentType="application/x-ndjson")
    seed.put_object(Bucket=BUCKET, Key="uploads/2024/05/01/clean.json", Body=b'{"id": 1, "note": "nothing"}\n')
    seed.put_object(Bucket=BUCKET, Key="uploads/2024/05/01/broken.json", Body=_records(2) + b'{"id": \n')
    results = str(Path(workdir) / "anonymize" / "results")
    os.environ.setdefault("S3LAKE_HMAC_KEY", "demo-key-not-secret")
    common = ["--source", f"s3://{BUCKET}/uploads/", "--rules", str(CONF / "security-lake.json"),
              "--results", results, "--min-age", "0s", "--max-failures", "1"]
    print("anonymize: first run (broken.json has a truncated last line on purpose: FAILED, left untouched)")
    job.main(common + ["--run-id", "demo-1", "--purge-noncurrent"])
    failed = spark.read.parquet(results).where("run_id = 'demo-1' AND status = 'FAILED'").collect()
    for row in failed:
        print(f"anonymize: FAILED {row.key}: {row.error_code}: {row.error_message}")
    first = json.loads(s3.get_object(Bucket=BUCKET, Key="uploads/2024/05/01/a.json")["Body"].read().splitlines()[0])
    print(f"anonymize: a.json line 1 is now {json.dumps(first)}")
    print("anonymize: second run (everything already processed)")
    job.main(common + ["--run-id", "demo-2"])
