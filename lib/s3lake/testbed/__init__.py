"""Local AWS test bed: a moto server on loopback plus helpers that seed it.

Used by the test suite (tests/conftest.py), ``make demo`` and ``make bench``; never by the jobs.
Needs the ``test`` extra (moto[server]).
"""

from s3lake.testbed.moto import MotoServer, free_port

__all__ = ["MotoServer", "free_port"]
