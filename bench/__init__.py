"""Benchmarks of Berth against containerd (see bench/berthbench and docs/benchmarks.md)."""
