"""Custom ops: the ROBE-Z embedding lookup (Triton GPU kernel + CPU path)."""

from gpu_ops.robe.hashing import P, RobeHash
from gpu_ops.robe.module import RobeEmbedding
from gpu_ops.robe.op import robe_lookup, robe_sgd_update_
from gpu_ops.robe.reference import robe_lookup_reference, robe_slot_indices

__all__ = [
    "P", "RobeEmbedding", "RobeHash", "robe_lookup", "robe_lookup_reference", "robe_sgd_update_",
    "robe_slot_indices",
]
