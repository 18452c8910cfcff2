"""s3lake: PySpark batch jobs that keep an S3 data lake healthy."""
from setuptools import find_packages, setup

RUNTIME = [
    "boto3>=1.34",
    # The AWS CRT: botocore computes CRC64NVME (S3's default checksum) and CRC32C only with it.
    "botocore[crt]>=1.34",
    "pyarrow>=14",
    "pandas>=1.5",  # pyspark needs it for mapInArrow/Arrow UDFs
]

setup(
    name="s3lake",
    version="0.1.0",
    description="PySpark batch jobs that keep an S3 data lake healthy (EMR, tested locally).",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    python_requires=">=3.9",
    install_requires=RUNTIME,
    extras_require={
        # pyspark comes with EMR; locally it is installed by the `spark` extra.
        "spark": ["pyspark>=3.5,<3.6"],
        "test": [
            "pyspark>=3.5,<3.6",
            "pytest>=7",
            "chispa>=0.9",
            "moto[server]>=5.0",
            "ruff>=0.4",
            "awscli>=1.32",
            "wheel>=0.40",  # launch_emr.sh builds the s3lake wheel offline
        ],
        "bench": ["duckdb>=1.0"],
    },
)
