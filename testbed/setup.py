"""s3lake-testbed: the local AWS the tests, `make demo` and `make bench` run against; never on EMR.

A distribution of its own so the wheel launch_emr.sh ships to every EMR node holds the product only
(tests/test_wheel.py checks it). `make install` installs it editable beside s3lake's test extras.
"""
from setuptools import find_packages, setup

setup(
    name="s3lake-testbed",
    version="0.1.0",
    description="moto server with S3's strict behaviours, IAM, a fault/throttling proxy, seeds and the demo",
    packages=find_packages(include=["s3lake_testbed", "s3lake_testbed.*"]),
    python_requires=">=3.9",
    install_requires=[
        "s3lake",
        # Pinned: the test bed patches moto's internals (strict_s3, iam_corrections) and its tests record
        # what plain moto lacks; moto 5.2.6 changed plain moto's IAM (test_iam_strict's plain cases). Move
        # the pin on purpose, with those tests.
        "moto[server]==5.2.5",
    ],
)
