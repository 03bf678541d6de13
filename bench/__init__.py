"""Benchmark scripts (run as files: python bench/run.py); a package only so
that type checking tells bench/run.py from fuzz/run.py."""
