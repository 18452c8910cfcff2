"""JSON to Parquet: options, reading and quarantining records, the write and its commit, arrival batches
and the committer guard.

Imported by jobs/json_to_parquet.py; imports the shared modules only (not the object engine: it writes
no objects one by one).
"""
