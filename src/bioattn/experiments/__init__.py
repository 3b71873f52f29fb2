"""Experiments: attention sweeps and the end-to-end replication."""
