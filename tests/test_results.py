from __future__ import annotations

import pytest
from s3lake.errors import ConfigError, ResultsPathError
from s3lake.objects import results


def test_write_probe_leaves_nothing_behind(spark, tmp_path):
    results.check_writable(spark, str(tmp_path / "new" / "results"))
    (tmp_path / "kept").mkdir()
    results.check_writable(spark, str(tmp_path / "kept"))

    assert not (tmp_path / "new" / "results").exists()
    assert list((tmp_path / "kept").iterdir()) == []


def test_unwritable_results_path_is_one_clear_error(spark, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsPathError, match=f"cannot write results to {tmp_path}/file/r"):
        results.check_writable(spark, str(tmp_path / "file" / "r"))


@pytest.mark.parametrize("bad", ["", "a/b", "a=b"])
def test_run_ids_that_cannot_name_a_partition_are_refused(bad):
    with pytest.raises(ConfigError, match="--run-id must not"):
        results.check_run_id(bad)


def test_a_plain_run_id_passes():
    assert results.check_run_id("cip-2026-11-24T00-00Z-1a2b3c4d") == "cip-2026-11-24T00-00Z-1a2b3c4d"
