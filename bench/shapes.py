"""The matmuls `lutlm bench kernels` times, on WebGPU (kernels.py) and on the CPU kernels
(cpu_kernels.py): SmolLM2-135M's, as (name, K inputs, N rows)."""

GROUP = 32
# q/k/v and gate/up read the same activations, so they run fused (rows concatenated), as a decode
# plan runs them: 4 matmuls, 4 table builds
LAYER = [("qkv", 576, 960), ("o", 576, 576), ("gate_up", 576, 3072), ("down", 1536, 576)]
HEAD = [("head", 576, 49152)]
PREFILL = 64  # tokens of the prefill GEMM cases
