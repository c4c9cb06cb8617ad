"""Benchmarks: our training phases side by side with TRL's trainers (`make bench`, see bench.py)."""
