"""Custom ops: the ROBE-Z embedding lookup (Triton GPU kernel + CPU path)."""
