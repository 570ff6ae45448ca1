// FlashInfer FA2 kernels for head_dim 64, bf16 queries (KV bf16 or fp8 e4m3).
#include "fi_prefill.cuh"

TRTKV_FI_INSTANTIATE(64, kBF16)
