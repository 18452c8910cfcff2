"""Replication backfill: copy in place, which objects a replication rule takes, its price, and the
replication report.

Imported by jobs/copy_in_place.py and jobs/replication_report.py; imports the object engine and the
shared modules, no other family.
"""
