"""The anonymization pass: field rules, the pure streaming rewrite of JSON lines, and the per-object job.

Imported by jobs/anonymize.py; imports the object engine and the shared modules, no other family.
"""
