"""Releases: signed documents, keys and verification, prefetch lists as data, and the
CPU-level variants a release may carry."""
