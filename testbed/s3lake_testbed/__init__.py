"""The local AWS test bed: a moto server on loopback (strict: S3's behaviours moto lacks, IAM as AWS
applies it), the fault/throttling proxy, inventory writer, seeded scenarios and the demo.

Used by the tests, ``make demo`` and ``make bench``; may import s3lake, never imported by it. Not in the
product wheel (its own distribution, ``testbed/setup.py``).
"""

from s3lake_testbed.moto import MotoServer, free_port

__all__ = ["MotoServer", "free_port"]
