"""DLRM: configs, embedding backends, arches, training loop, metrics."""
