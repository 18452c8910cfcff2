"""``--results-table DB.TABLE``: a Glue table over a results (or replication report) dataset, one
partition per ``run_id``, so Athena queries the runs as they land.

Reuses :mod:`s3lake.glue_catalog` (EXTERNAL Parquet table, BatchCreatePartition then UpdatePartition);
the database is created when absent. Idempotent: registering the same run again updates its partition.
Glue API: https://docs.aws.amazon.com/glue/latest/webapi/API_CreateTable.html,
https://docs.aws.amazon.com/glue/latest/webapi/API_BatchCreatePartition.html.
"""

from __future__ import annotations

import logging

from pyspark.sql import types as T

from s3lake import aws, glue_catalog
from s3lake.errors import ConfigError, NotRegistered

log = logging.getLogger("s3lake.objects.results_table")
PARTITION = "run_id"


def check_name(name: str) -> str:
    """Fail before any work on a malformed ``DB.TABLE`` (one line, exit 2)."""
    glue_catalog.split_table_name(name)
    return name


def data_schema(schema: T.StructType) -> T.StructType:
    """The dataset's columns without the partition column (Glue keeps partition keys apart)."""
    return T.StructType([f for f in schema.fields if f.name != PARTITION])


def table_location(path: str) -> str:
    """Athena reads ``s3://``; EMR paths may say ``s3a://`` or ``s3n://``."""
    for scheme in ("s3a://", "s3n://"):
        if path.startswith(scheme):
            return "s3://" + path[len(scheme):]
    return path


def register_run(name: str, path: str, schema: T.StructType, run_id: str) -> dict[str, int]:
    """Create the table if absent (partitioned by run_id) and add or update this run's partition."""
    database, _ = glue_catalog.split_table_name(name)
    glue = aws.glue()
    try:
        glue.create_database(DatabaseInput={"Name": database})
    except glue.exceptions.AlreadyExistsException:
        pass
    location = table_location(path)
    glue_catalog.ensure_table(name, location, data_schema(schema), [PARTITION])
    counts = glue_catalog.register_partitions(name, location, [[run_id]])
    log.info("Glue table %s: run %s registered at %s", name, run_id, location)
    return counts


def register_before_run(name: str, path: str, schema: T.StructType, run_id: str) -> dict[str, int]:
    """:func:`register_run` before any object is touched, so Athena reads the rows the tasks commit while the
    run goes on; a failure is one line, exit 2, nothing touched."""
    try:
        return register_run(name, path, schema, run_id)
    except Exception as exc:  # noqa: BLE001 - whatever Glue answered
        raise ConfigError(f"--results-table {name}: cannot register run {run_id} "
                          f"({aws.error_code(exc)}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                          "nothing was touched") from None


def register_after_run(name: str, path: str, schema: T.StructType, run_id: str) -> dict[str, int]:
    """:func:`register_run` once the run's rows are written: a failure (denied, throttled, a table of
    another shape) becomes one line saying where the rows are and how to register them (exit 1)."""
    try:
        return register_run(name, path, schema, run_id)
    except Exception as exc:  # noqa: BLE001 - whatever Glue answered, the rows are written
        where = f"{path.rstrip('/')}/{PARTITION}={run_id}"
        raise NotRegistered(
            f"run {run_id}'s rows are written under {where}, but registering them in Glue table {name} failed "
            f"({aws.error_code(exc)}: {str(exc).splitlines()[0] if str(exc) else ''}); once that is fixed, "
            f"rerun with --run-id {run_id} (done objects are not written again) or, if the table exists, "
            f"run MSCK REPAIR TABLE {name} in Athena") from None
