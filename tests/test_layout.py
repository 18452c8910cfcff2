"""The house's plan, checked: jobs -> job families -> the object engine -> the shared modules, nothing
importing upward, and the test bed (moto, the proxy, the demo) outside the product."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib" / "s3lake"
ENGINE = "objects"
FAMILIES = ("replication", "anonymize", "parquet")
FORBIDDEN_IN_PRODUCT = ("s3lake_testbed", "moto", "tests", "bench")


def imported_modules(source: str) -> set[str]:
    """Every module ``source`` imports, at the top or inside a function (``from a import b`` gives a.b
    as well as a, since b may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def layer(module: str) -> tuple[int, str | None]:
    """(0 shared, 1 engine, 2 family; the family's name) of an ``s3lake.*`` module."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in (ENGINE, *FAMILIES):
        return 0, None
    if parts[1] == ENGINE:
        return 1, None
    return 2, parts[1]


def product_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(LIB.rglob("*.py")):
        rel = path.relative_to(LIB.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        modules[".".join(parts)] = path
    return modules


def upward_imports(module: str, imports: set[str]) -> list[str]:
    """The imports of ``module`` that break the layering (as 'module -> imported')."""
    mine, family = layer(module)
    bad = []
    for name in sorted(imports):
        top = name.split(".")[0]
        if top in FORBIDDEN_IN_PRODUCT:
            bad.append(f"{module} -> {name}")
        if top != "s3lake" or name == "s3lake":
            continue
        theirs, their_family = layer(name)
        if theirs > mine or (theirs == 2 and their_family != family):
            bad.append(f"{module} -> {name}")
    return bad


def test_every_product_module_imports_only_its_own_layer_or_below():
    bad = []
    for module, path in product_modules().items():
        bad += upward_imports(module, imported_modules(path.read_text(encoding="utf-8")))
    assert bad == []


@pytest.mark.parametrize("module, source, expected", [
    ("s3lake.aws", "from s3lake.objects import pacing",
     ["s3lake.aws -> s3lake.objects", "s3lake.aws -> s3lake.objects.pacing"]),
    ("s3lake.objects.driver", "def f():\n    from s3lake.replication.copy_in_place import MARKER",
     ["s3lake.objects.driver -> s3lake.replication.copy_in_place",
      "s3lake.objects.driver -> s3lake.replication.copy_in_place.MARKER"]),
    ("s3lake.anonymize.job", "from s3lake.replication import pricing",
     ["s3lake.anonymize.job -> s3lake.replication", "s3lake.anonymize.job -> s3lake.replication.pricing"]),
    ("s3lake.parquet.convert", "import moto", ["s3lake.parquet.convert -> moto"]),
    ("s3lake.cli", "from s3lake_testbed import seed",
     ["s3lake.cli -> s3lake_testbed", "s3lake.cli -> s3lake_testbed.seed"]),
    ("s3lake.replication.copy_in_place", "from s3lake import aws\nfrom s3lake.objects import results\n"
     "from s3lake.replication import scope", []),
])
def test_the_layering_check_names_each_upward_import(module, source, expected):
    assert upward_imports(module, imported_modules(source)) == expected


def test_jobs_import_the_product_and_never_the_test_bed():
    bad = []
    for path in sorted((ROOT / "jobs").glob("*.py")):
        imports = imported_modules(path.read_text(encoding="utf-8"))
        bad += [f"{path.name} -> {name}" for name in sorted(imports) if name.split(".")[0] in FORBIDDEN_IN_PRODUCT]
        assert any(name.startswith("s3lake.") for name in imports), path.name
    assert bad == []


def test_every_package_says_what_lives_there_and_who_may_import_it():
    for package in (ENGINE, *FAMILIES):
        doc = ast.get_docstring(ast.parse((LIB / package / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "import" in doc, package



def test_the_pure_line_rewrite_loads_neither_spark_nor_boto():
    """The anonymizer's line rewrite is testable without S3 or Spark: importing it (and the rules it
    applies) pulls in neither."""
    probe = ("import sys; import s3lake.anonymize.rewrite, s3lake.anonymize.rules; "
             "print(sorted(m for m in ('pyspark', 'boto3', 'botocore', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
