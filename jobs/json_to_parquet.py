"""NDJSON (Kinesis Firehose output, gzip or plain) to Parquet partitioned by event time, registered in Glue.

    spark-submit jobs/json_to_parquet.py \
        --input s3://raw/firehose/2024/05/01/* --output s3://lake/events \
        --schema conf/schemas/firehose-events.json --timestamp-field event_time --partition-by dt \
        [--table lake.events] [--dedup-key event_id] [--max-records-per-file N] \
        [--bad-records s3://lake/events_bad_records] [--mode overwrite-partitions|append] \
        [--max-bad-fraction 0.01] [--files-per-partition N]

Bad records go raw (with their input file and reason) to --bad-records/input_id=<hash of --input>;
the job fails, leaving the output untouched, when more than --max-bad-fraction of them are bad.
Run on EMR with conf/emr-configurations.json (EMRFS S3-optimized committer and commit protocol).
"""

from __future__ import annotations

import sys
from typing import Sequence

from s3lake.cli import run
from s3lake.json_to_parquet import cli_main as _main


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    sys.exit(run(_main))
