"""The per-object engine under copy in place and anonymize: the task driver, pacing, progress, at-most-once
writes, object attributes, ACL grants, bucket facts, result rows and their Glue table.

Imported by the job families (replication, anonymize) and the jobs; imports only the shared modules
(s3lake.aws, cli, errors, glue_catalog, ...) and itself.
"""
