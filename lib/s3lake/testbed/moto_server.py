"""``python -m s3lake.testbed.moto_server``: moto's server, minus two per-request costs.

moto 5's dispatcher lists its own package directory (``os.listdir`` + ``isdir`` on ~150 folders) for
every request while holding a global lock, and werkzeug logs every request line. Both serialize the
server, which made moto -- not the code under test -- the limit in benchmarks. The module list never
changes while the server runs, so it is computed once; access logging is turned off. Everything else
is moto's own ``moto.server.main``.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> None:
    import moto.backends as backends

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from s3lake.testbed import moto_replication

    moto_replication.install()  # GetBucketReplication with each rule's own filter (moto answers Prefix "")
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
