// Host-side check of libtrtkv_flashinfer.so's boundary validation: every malformed step or
// shape must come back as a status before any CUDA call, so this runs without a GPU (the device
// pointers below are never dereferenced). Built and run by tests/plugins/test_flashinfer_compile.py.
#include <cstdio>
#include <cstdint>
#include <vector>

#include "trtkv_flashinfer.h"

namespace fa = trtkv::flashinfer_attn;

static int failures = 0;

static void expect(fa::Status got, fa::Status want, char const* what) {
    if (got != want) {
        std::printf("FAIL %s: got %d (%s), want %d\n", what, static_cast<int>(got), fa::status_string(got),
            static_cast<int>(want));
        ++failures;
    }
}

int main() {
    fa::ProblemShape shape;
    shape.num_heads = 8;
    shape.num_kv_heads = 2;
    shape.head_dim = 128;
    shape.block_size = 16;
    shape.num_blocks = 64;
    shape.max_blocks_per_seq = 4;
    shape.query_dtype = fa::DType::kFP16;
    shape.kv_dtype = fa::DType::kFP16;

    fa::WorkspaceSizes const ws = fa::workspace_size(shape, 32, 4);
    if (ws.device_bytes == 0 || ws.host_bytes == 0) {
        std::printf("FAIL workspace_size of a valid shape is zero\n");
        ++failures;
    }
    fa::ProblemShape bad_shape = shape;
    bad_shape.num_kv_heads = 3;  // 8 % 3 != 0
    if (fa::workspace_size(bad_shape, 32, 4).device_bytes != 0) {
        std::printf("FAIL workspace_size of an invalid shape is not zero\n");
        ++failures;
    }

    // Fake, aligned device addresses: the calls below must reject the step before using them.
    void* dev = reinterpret_cast<void*>(uintptr_t{1} << 40);
    std::vector<char> host(ws.host_bytes);
    int32_t const* dev_tables = reinterpret_cast<int32_t const*>(uintptr_t{1} << 41);
    std::vector<int32_t> qsl = {0, 5, 6, 8};
    std::vector<int32_t> ctx = {0, 17, 64};
    std::vector<int32_t> tables = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};

    auto step_with = [&](std::vector<int32_t> const& q, std::vector<int32_t> const& c, std::vector<int32_t> const* t) {
        fa::StepInputs s;
        s.num_tokens = 10;
        s.num_seqs = 3;
        s.query_start_loc_host = q.data();
        s.context_lens_host = c.data();
        s.block_tables = dev_tables;
        s.block_tables_host = t ? t->data() : nullptr;
        s.max_tokens = 32;
        s.max_seqs = 4;
        return s;
    };
    fa::Plan plan;
    auto plan_of = [&](fa::ProblemShape const& sh, fa::StepInputs const& s, size_t dev_bytes) {
        return fa::plan(sh, s, dev, dev_bytes, host.data(), host.size(), &plan, nullptr);
    };

    expect(plan_of(shape, step_with({1, 5, 6, 8}, ctx, &tables), ws.device_bytes), fa::Status::kINVALID_ARGUMENT,
        "query_start_loc[0] != 0");
    expect(plan_of(shape, step_with({0, 5, 4, 8}, ctx, &tables), ws.device_bytes), fa::Status::kINVALID_ARGUMENT,
        "query_start_loc not monotonic");
    expect(plan_of(shape, step_with({0, 5, 6, 11}, ctx, &tables), ws.device_bytes), fa::Status::kINVALID_ARGUMENT,
        "query_start_loc[S] > T");
    expect(plan_of(shape, step_with(qsl, {0, 17, 65}, &tables), ws.device_bytes), fa::Status::kINVALID_ARGUMENT,
        "context_lens > M * B");
    expect(plan_of(shape, step_with(qsl, {0, -1, 3}, &tables), ws.device_bytes), fa::Status::kINVALID_ARGUMENT,
        "negative context_lens");
    std::vector<int32_t> oob = tables;
    oob[5] = 64;  // sequence 1 uses blocks [4, 5] (17 tokens): entry 5 == N
    expect(plan_of(shape, step_with(qsl, ctx, &oob), ws.device_bytes), fa::Status::kINVALID_ARGUMENT,
        "block id == num_blocks");
    oob = tables;
    oob[8] = -1;
    expect(plan_of(shape, step_with(qsl, ctx, &oob), ws.device_bytes), fa::Status::kINVALID_ARGUMENT,
        "negative block id");
    fa::StepInputs big = step_with(qsl, ctx, &tables);
    big.num_tokens = 33;
    expect(plan_of(shape, big, ws.device_bytes), fa::Status::kINVALID_ARGUMENT, "T > max_tokens");
    fa::StepInputs no_tables = step_with(qsl, ctx, &tables);
    no_tables.block_tables = nullptr;
    expect(plan_of(shape, no_tables, ws.device_bytes), fa::Status::kINVALID_ARGUMENT, "history without block_tables");
    fa::ProblemShape hd96 = shape;
    hd96.head_dim = 96;
    expect(plan_of(hd96, step_with(qsl, ctx, &tables), ws.device_bytes), fa::Status::kUNSUPPORTED, "head_dim 96");
    fa::ProblemShape mixed = shape;
    mixed.kv_dtype = fa::DType::kBF16;
    expect(plan_of(mixed, step_with(qsl, ctx, &tables), ws.device_bytes), fa::Status::kUNSUPPORTED,
        "fp16 query over a bf16 pool");
    expect(plan_of(bad_shape, step_with(qsl, ctx, &tables), ws.device_bytes), fa::Status::kINVALID_ARGUMENT,
        "H % Hkv != 0");
    expect(plan_of(shape, step_with(qsl, ctx, &tables), ws.device_bytes - 1), fa::Status::kWORKSPACE_TOO_SMALL,
        "device workspace one byte short");

    fa::Plan empty;
    fa::LayerInputs layer;
    expect(fa::run(empty, layer, dev, nullptr), fa::Status::kINVALID_ARGUMENT, "run with a plan never made");
    int64_t err = 0;
    expect(fa::read_device_error(empty, dev, &err, nullptr), fa::Status::kINVALID_ARGUMENT,
        "read_device_error with a plan never made");

    if (failures == 0) {
        std::printf("ok\n");
    }
    return failures == 0 ? 0 : 1;
}
