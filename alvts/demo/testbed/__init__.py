"""A small LLaVA testbed (CLIP tower with absolute positions, 12-layer decoder) for judging layer-wise selection."""
