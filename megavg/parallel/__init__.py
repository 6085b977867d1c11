"""Parallelism: process-group state (:mod:`.state`), Ulysses all-to-all, halo exchange for causal convs,
loading weights straight into ZeRO-3 partitions (:mod:`.zero_load`)."""
