"""LSH attention for long sequences (Reformer) and SimHash top-k retrieval (ETA): pure PyTorch."""

from gpu_ops.lsh_attention.attention import lsh_attention, lsh_buckets, num_buckets_for, random_rotations
from gpu_ops.lsh_attention.dense import dense_attention
from gpu_ops.lsh_attention.modules import ChunkedFeedForward, LSHEncoder, LSHSelfAttention
from gpu_ops.lsh_attention.reference import SELF_SCORE, full_attention
from gpu_ops.lsh_attention.reversible import ReversibleBlock, ReversibleSequence
from gpu_ops.lsh_attention.simhash import hamming_topk, simhash_signatures

__all__ = [
    "SELF_SCORE", "ChunkedFeedForward", "LSHEncoder", "LSHSelfAttention", "ReversibleBlock",
    "ReversibleSequence", "dense_attention", "full_attention", "hamming_topk", "lsh_attention", "lsh_buckets",
    "num_buckets_for", "random_rotations", "simhash_signatures",
]
