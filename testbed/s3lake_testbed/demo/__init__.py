"""Local end-to-end demos of every job on the test bed (`make demo`: ``python -m s3lake_testbed.demo``)."""
