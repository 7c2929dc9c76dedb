"""LSH-sampled output layer (SLIDE): hash families, bucket tables, sparse optimizer, the layer."""

from gpu_ops.lsh.config import LSHConfig
from gpu_ops.lsh.hashing import DWTAHash, SimHash, make_hash, mips_augment, query_augment
from gpu_ops.lsh.layer import LSHSoftmax, SampledLogits, merge_sets
from gpu_ops.lsh.optim import SparseRowOptimizer
from gpu_ops.lsh.schedule import RehashSchedule
from gpu_ops.lsh.tables import BucketTables, LSHIndex, dedup_by_votes

__all__ = [
    "BucketTables", "DWTAHash", "LSHConfig", "LSHIndex", "LSHSoftmax", "RehashSchedule", "SampledLogits",
    "SimHash", "SparseRowOptimizer", "dedup_by_votes", "make_hash", "merge_sets", "mips_augment",
    "query_augment",
]
