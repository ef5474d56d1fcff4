"""Peers for benchmarks/side_by_side.py: the other systems M5 is measured against."""
