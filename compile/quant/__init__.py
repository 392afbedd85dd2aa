"""Low-bit weight quantisation: formats, packing, round-to-nearest, GPTQ, mixed precision."""
