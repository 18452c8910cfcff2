"""``make demo``: every s3lake job end to end on an embedded local default.

Starts a moto server on a free loopback port (the local AWS: S3, Glue, KMS, SSM), in strict mode (the
S3 behaviours moto lacks, :mod:`s3lake_testbed.strict_s3`) unless ``--plain-moto``, points boto3 at it
through ``AWS_ENDPOINT_URL``, then runs copy-in-place through spark-submit on local Spark, and the
anonymization pass and JSON-to-Parquet on a local SparkSession, each printing its summary.

    python -m s3lake_testbed.demo [--workdir DIR] [--only copy-in-place|anonymize|json-to-parquet ...] [--plain-moto]
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time
from pathlib import Path

from s3lake_testbed import MotoServer
from s3lake_testbed.spark import local_session

STEPS = ("copy-in-place", "anonymize", "json-to-parquet")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m s3lake_testbed.demo", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--workdir", default=".demo", help="scratch folder, emptied first (default .demo)")
    p.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--plain-moto", action="store_true", help="plain moto instead of the strict S3 emulation")
    args = p.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    status = 0
    server = MotoServer(log_path=str(workdir / "moto.log"), strict=not args.plain_moto)
    with server as url:
        os.environ.update(server.environ())
        kind = "plain moto" if args.plain_moto else "moto, strict S3"
        print(f"local AWS endpoint ({kind}): {url}\nscratch: {workdir}\n", flush=True)
        spark = None
        for step in args.only:
            print(f"=== {step} ===", flush=True)
            started = time.monotonic()
            module = importlib.import_module(f"s3lake_testbed.demo.{step.replace('-', '_')}")
            if step == "copy-in-place":
                code = module.run(str(workdir))
            else:
                spark = spark or local_session("s3lake-demo", shuffle_partitions=4)
                code = module.run(str(workdir / step), spark) or 0
            print(f"--- {step}: {'ok' if not code else f'FAILED ({code})'} in {time.monotonic() - started:.1f} s\n",
                  flush=True)
            status = status or code
        if spark is not None:
            spark.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
