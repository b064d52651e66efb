"""Training benchmarks and the comparisons: tocpl-train-bench (train), tocpl-oc-bench (oc), tocpl-bench
(compare, with its summary and the warm-start study), tocpl-train-profile (profile)."""
