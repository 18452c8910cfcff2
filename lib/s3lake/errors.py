"""Named exceptions: every contract violation s3lake reports is one of these."""

from __future__ import annotations


class S3LakeError(Exception):
    """Base class: a job prints ``s3lake: error: <message>`` and exits with ``exit_code`` (2: bad input,
    nothing touched)."""

    exit_code = 2


class InventoryError(S3LakeError):
    """The S3 Inventory report cannot be resolved or read (table, manifest, data file)."""


class ConfigError(S3LakeError):
    """A command-line option, rules file or schema is invalid."""


class ResultsPathError(S3LakeError):
    """The results location cannot be written."""


class BucketUnreachableError(S3LakeError):
    """A bucket the input names cannot be used: missing, in another region, or access denied."""


class NotRegistered(S3LakeError):
    """The data is written but registering it in Glue failed: the message says what was written and how to
    finish; exit 1 (done, look at this), not 2 (nothing touched)."""

    exit_code = 1


class RunInUseError(S3LakeError):
    """Another driver is working this run id right now, or the run's committed rows come from another kind
    of run (a dry run, another job): nothing was touched."""
