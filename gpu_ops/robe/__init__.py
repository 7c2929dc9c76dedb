"""The ROBE-Z embedding lookup: reference, CPU path, Triton kernels, torch.library op."""
