"""Fused kernels (Triton) with the PyTorch paths they are tested against; they import nothing from alvts."""
