"""Benchmarks run by ``sats bench``: ours against the tools a user would otherwise pick."""
