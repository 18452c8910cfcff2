"""``python -m s3lake_testbed.moto_server [--strict] [moto_server options]``: moto's server, minus two
per-request costs, optionally strict.

moto 5's dispatcher lists its own package directory (``os.listdir`` + ``isdir`` on ~150 folders) for
every request while holding a global lock, and werkzeug logs every request line. Both serialize the
server, which made moto -- not the code under test -- the limit in benchmarks. The module list never
changes while the server runs, so it is computed once; access logging is turned off.

``--strict`` installs :mod:`s3lake_testbed.strict_s3` (the S3 behaviours moto lacks) and
:mod:`s3lake_testbed.iam_corrections` (IAM as AWS applies it, for principals) before serving.
:mod:`s3lake_testbed.batch_jobs` (S3 Batch Operations jobs) is installed in both modes.
Everything else is moto's own ``moto.server.main``.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> None:
    import moto.backends as backends

    args = list(argv if argv is not None else sys.argv[1:])
    strict = "--strict" in args
    args = [a for a in args if a != "--strict"]
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from s3lake_testbed import moto_replication

    moto_replication.install()  # GetBucketReplication with each rule's own filter (moto answers Prefix "")
    if strict:
        from s3lake_testbed import iam_corrections, strict_s3

        strict_s3.install()
        iam_corrections.install()
    from s3lake_testbed import batch_jobs

    batch_jobs.install(strict)  # S3 Batch Operations jobs (moto has none); IAM for principals when strict
    from moto.server import main as moto_main

    moto_main(args)


if __name__ == "__main__":
    main()
