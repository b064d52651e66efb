"""Evaluating a trained policy: continuous use (continuous) and its figures (inspect, tocpl-inspect)."""
