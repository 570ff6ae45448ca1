// FlashInfer FA2 kernels for head_dim 128, fp16 queries (KV fp16 or fp8 e4m3).
#include "fi_prefill.cuh"

TRTKV_FI_INSTANTIATE(128, kFP16)
