"""Parallelism: process-group state (:mod:`.state`), Ulysses all-to-all, halo exchange for causal convs."""
