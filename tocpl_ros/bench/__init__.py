"""Benchmarks of the nodes, the MPC and policy inference (command-line tools)."""
