"""s3lake: PySpark batch jobs that keep an S3 data lake healthy."""

__version__ = "0.1.0"
