"""s3lake: PySpark batch jobs that keep an S3 data lake healthy."""
from setuptools import find_packages, setup

RUNTIME = [
    "boto3>=1.34",
    # The AWS CRT: botocore computes CRC64NVME (S3's default checksum) and CRC32C only with it.
    "botocore[crt]>=1.34",
    "pyarrow>=14",
    "pandas>=1.5",  # pyspark needs it for mapInArrow/Arrow UDFs
]
# One extra per Spark line (EMR provides pyspark; locally these install it). emr-7.x: Spark 3.5 on Python
# 3.9/3.11; emr-spark-8.1.x: Spark 4.1 on Python 3.11/3.13, whose Arrow functions need pandas>=2.2 and
# pyarrow>=15 (pyspark 4.1's own minimums).
SPARK_3_5 = ["pyspark>=3.5,<3.6"]
SPARK_4_1 = ["pyspark>=4.1,<4.2", "pandas>=2.2", "pyarrow>=15"]
# The test bed (testbed/: moto[server], the proxy, seeds, the demo) is installed beside these by
# `make install` (pip install -e testbed); it is not on PyPI, so no extra can name it.
TEST = [
    "pytest>=7",
    "chispa>=0.9",
    "ruff>=0.4",
    "awscli>=1.32",  # launch_emr.sh's tests run the real AWS CLI (emr, emr-serverless) against moto
    "wheel>=0.40",  # launch_emr.sh builds the s3lake wheel offline
]

setup(
    name="s3lake",
    version="0.1.0",
    description="PySpark batch jobs that keep an S3 data lake healthy (EMR, tested locally).",
    package_dir={"": "lib"},
    # lib/ holds the product only: the test bed (moto, proxy, demo) is testbed/, a distribution of its own.
    packages=find_packages("lib"),
    python_requires=">=3.9",
    install_requires=RUNTIME,
    extras_require={
        "spark": SPARK_3_5,
        "spark4": SPARK_4_1,
        "test": TEST + SPARK_3_5,  # the default line (make test SPARK_LINE=3.5)
        "test-spark4": TEST + SPARK_4_1,  # make test SPARK_LINE=4.1
        "bench": ["duckdb>=1.0"],
    },
)
