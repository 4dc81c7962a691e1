"""Throughput benchmarks of the book (``make bench``)."""
