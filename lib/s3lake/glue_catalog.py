"""Register Parquet tables and partitions in the Glue Data Catalog through the Glue API (never MSCK).

Tables are EXTERNAL Parquet tables (ParquetHiveSerDe) that Athena queries as registered; partitions
are added with BatchCreatePartition (100 a call) and the ones that already exist are updated with
UpdatePartition, so registering the same partitions twice is harmless.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

from pyspark.sql import types as T

from s3lake import aws
from s3lake.errors import ConfigError

log = logging.getLogger("s3lake.glue_catalog")

PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_INPUT_FORMAT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT_FORMAT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
BATCH_CREATE_MAX = 100


def split_table_name(name: str) -> tuple[str, str]:
    """``"db.table"`` -> ("db", "table")."""
    db, dot, table = name.partition(".")
    if not dot or not db or not table or "." in table:
        raise ConfigError(f"table name must be DB.TABLE, got {name!r}")
    return db, table


def hive_type(dt: T.DataType) -> str:
    """The Hive/Athena type string of a Spark type (``struct<a:bigint,b:array<string>>``)."""
    if isinstance(dt, T.StructType):
        return "struct<" + ",".join(f"{f.name}:{hive_type(f.dataType)}" for f in dt.fields) + ">"
    if isinstance(dt, T.ArrayType):
        return f"array<{hive_type(dt.elementType)}>"
    if isinstance(dt, T.MapType):
        return f"map<{hive_type(dt.keyType)},{hive_type(dt.valueType)}>"
    if isinstance(dt, T.DecimalType):
        return f"decimal({dt.precision},{dt.scale})"
    simple = {
        T.StringType: "string",
        T.LongType: "bigint",
        T.IntegerType: "int",
        T.ShortType: "smallint",
        T.ByteType: "tinyint",
        T.DoubleType: "double",
        T.FloatType: "float",
        T.BooleanType: "boolean",
        T.TimestampType: "timestamp",
        T.DateType: "date",
        T.BinaryType: "binary",
    }
    for cls, name in simple.items():
        if isinstance(dt, cls):
            return name
    raise ConfigError(f"no Glue/Hive type for Spark type {dt.simpleString()}")


def columns(schema: T.StructType) -> list[dict[str, str]]:
    return [{"Name": f.name, "Type": hive_type(f.dataType)} for f in schema.fields]


def storage_descriptor(location: str, cols: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "Columns": cols,
        "Location": location,
        "InputFormat": PARQUET_INPUT_FORMAT,
        "OutputFormat": PARQUET_OUTPUT_FORMAT,
        "Compressed": True,
        "SerdeInfo": {"SerializationLibrary": PARQUET_SERDE, "Parameters": {"serialization.format": "1"}},
        "StoredAsSubDirectories": False,
    }


def get_table(name: str) -> dict[str, Any] | None:
    db, table = split_table_name(name)
    glue = aws.glue()
    try:
        return glue.get_table(DatabaseName=db, Name=table)["Table"]
    except glue.exceptions.EntityNotFoundException:
        return None


def ensure_table(name: str, location: str, schema: T.StructType, partition_keys: Sequence[str]) -> bool:
    """Create the table if absent; True when created. An existing table must have the same partition keys."""
    db, table = split_table_name(name)
    existing = get_table(name)
    if existing is not None:
        have = [k["Name"] for k in existing.get("PartitionKeys", [])]
        if have != list(partition_keys):
            raise ConfigError(f"Glue table {name} is partitioned by {have}, not {list(partition_keys)}")
        return False
    glue = aws.glue()
    glue.create_table(
        DatabaseName=db,
        TableInput={
            "Name": table,
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"EXTERNAL": "TRUE", "classification": "parquet", "parquet.compression": "SNAPPY"},
            "StorageDescriptor": storage_descriptor(location.rstrip("/") + "/", columns(schema)),
            "PartitionKeys": [{"Name": k, "Type": "string"} for k in partition_keys],
        },
    )
    log.info("created Glue table %s at %s", name, location)
    return True


def partition_location(location: str, keys: Sequence[str], values: Sequence[str]) -> str:
    return location.rstrip("/") + "/" + "/".join(f"{k}={v}" for k, v in zip(keys, values)) + "/"


def register_partitions(name: str, location: str, partitions: Iterable[Sequence[str]]) -> dict[str, int]:
    """Add (BatchCreatePartition) or update (UpdatePartition) partitions; returns created/updated counts."""
    db, table = split_table_name(name)
    glue = aws.glue()
    meta = get_table(name)
    if meta is None:
        raise ConfigError(f"Glue table {name} does not exist")
    keys = [k["Name"] for k in meta.get("PartitionKeys", [])]
    cols = meta["StorageDescriptor"]["Columns"]

    def partition_input(values: Sequence[str]) -> dict[str, Any]:
        return {
            "Values": list(values),
            "StorageDescriptor": storage_descriptor(partition_location(location, keys, values), cols),
            "Parameters": {},
        }

    wanted = sorted({tuple(str(v) for v in p) for p in partitions})
    created = updated = 0
    for start in range(0, len(wanted), BATCH_CREATE_MAX):
        chunk = wanted[start:start + BATCH_CREATE_MAX]
        resp = glue.batch_create_partition(
            DatabaseName=db, TableName=table, PartitionInputList=[partition_input(v) for v in chunk]
        )
        errors = resp.get("Errors", [])
        created += len(chunk) - len(errors)
        for err in errors:
            values = err["PartitionValues"]
            code = err.get("ErrorDetail", {}).get("ErrorCode", "")
            if code != "AlreadyExistsException":
                raise RuntimeError(f"BatchCreatePartition {values} failed: {err.get('ErrorDetail')}")
            glue.update_partition(
                DatabaseName=db, TableName=table, PartitionValueList=values, PartitionInput=partition_input(values)
            )
            updated += 1
    log.info("Glue %s: %d partitions created, %d updated", name, created, updated)
    return {"created": created, "updated": updated}


def schema_from_table(name: str) -> T.StructType:
    """The data columns (partition keys excluded) of a Glue table as a Spark schema. Pure Python (no
    Spark session needed: the job reads its options before it starts Spark)."""
    from botocore.exceptions import ClientError

    try:
        meta = get_table(name)
    except ClientError as exc:  # e.g. AccessDeniedException: bad input, refused before anything is read
        raise ConfigError(f"--schema-table {name}: cannot read the Glue table: {aws.error_code(exc)}") from exc
    if meta is None:
        raise ConfigError(f"--schema-table {name}: no such Glue table")
    cols = meta.get("StorageDescriptor", {}).get("Columns", [])
    if not cols:
        raise ConfigError(f"--schema-table {name}: the table has no columns")
    fields = []
    for c in cols:
        try:
            fields.append(T.StructField(c["Name"], spark_type(c["Type"])))
        except ValueError as exc:
            raise ConfigError(f"--schema-table {name}: column {c['Name']!r}: {exc}") from None
    return T.StructType(fields)


_PRIMITIVES = {
    "string": T.StringType(), "varchar": T.StringType(), "char": T.StringType(), "bigint": T.LongType(),
    "int": T.IntegerType(), "integer": T.IntegerType(), "smallint": T.ShortType(), "tinyint": T.ByteType(),
    "double": T.DoubleType(), "float": T.FloatType(), "boolean": T.BooleanType(), "timestamp": T.TimestampType(),
    "date": T.DateType(), "binary": T.BinaryType(),
}


def spark_type(text: str) -> T.DataType:
    """A Hive/Glue type string (``struct<a:bigint,`b.c`:array<string>>``, ``decimal(10,2)``) as a Spark
    type; ValueError naming what is wrong."""
    parser = _TypeParser(text)
    dt = parser.type()
    parser.end()
    return dt


class _TypeParser:
    def __init__(self, text: str) -> None:
        self.text, self.i = text, 0

    def _skip(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def _expect(self, ch: str) -> None:
        self._skip()
        if not self.text.startswith(ch, self.i):
            raise ValueError(f"type {self.text!r}: expected {ch!r} at character {self.i + 1}")
        self.i += 1

    def _word(self) -> str:
        self._skip()
        start = self.i
        while self.i < len(self.text) and (self.text[self.i].isalnum() or self.text[self.i] == "_"):
            self.i += 1
        if start == self.i:
            raise ValueError(f"type {self.text!r}: expected a type name at character {self.i + 1}")
        return self.text[start:self.i].lower()

    def _name(self) -> str:
        """A struct field name: `quoted` (`` for a backtick) or up to the next ':'."""
        self._skip()
        if self.text.startswith("`", self.i):
            out, j = [], self.i + 1
            while True:
                k = self.text.find("`", j)
                if k < 0:
                    raise ValueError(f"type {self.text!r}: unclosed backtick")
                out.append(self.text[j:k])
                if self.text.startswith("``", k):
                    out.append("`")
                    j = k + 2
                    continue
                self.i = k + 1
                return "".join(out)
        k = self.text.find(":", self.i)
        if k < 0:
            raise ValueError(f"type {self.text!r}: expected name:type at character {self.i + 1}")
        name, self.i = self.text[self.i:k].strip(), k
        return name

    def type(self) -> T.DataType:
        word = self._word()
        if word == "array":
            self._expect("<")
            element = self.type()
            self._expect(">")
            return T.ArrayType(element)
        if word == "map":
            self._expect("<")
            key = self.type()
            self._expect(",")
            value = self.type()
            self._expect(">")
            return T.MapType(key, value)
        if word == "struct":
            self._expect("<")
            fields = []
            self._skip()
            while not self.text.startswith(">", self.i):
                if fields:
                    self._expect(",")
                name = self._name()
                self._expect(":")
                fields.append(T.StructField(name, self.type()))
                self._skip()
            self.i += 1
            return T.StructType(fields)
        if word == "decimal":
            self._skip()
            if not self.text.startswith("(", self.i):
                return T.DecimalType(10, 0)
            close = self.text.find(")", self.i)
            if close < 0:
                raise ValueError(f"type {self.text!r}: unclosed decimal(")
            parts = [p.strip() for p in self.text[self.i + 1:close].split(",")]
            self.i = close + 1
            try:
                return T.DecimalType(*(int(p) for p in parts))
            except (TypeError, ValueError):
                raise ValueError(f"type {self.text!r}: bad decimal precision/scale") from None
        if word in ("varchar", "char"):
            self._skip()
            if self.text.startswith("(", self.i):
                close = self.text.find(")", self.i)
                if close < 0:
                    raise ValueError(f"type {self.text!r}: unclosed {word}(")
                self.i = close + 1
        if word not in _PRIMITIVES:
            raise ValueError(f"type {self.text!r}: no Spark type for {word!r}")
        return _PRIMITIVES[word]

    def end(self) -> None:
        self._skip()
        if self.i != len(self.text):
            raise ValueError(f"type {self.text!r}: unexpected {self.text[self.i:]!r}")
