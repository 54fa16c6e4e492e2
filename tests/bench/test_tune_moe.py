"""The MoE tuner's pure parts (benchmarks/tune_moe.py; its timing needs a GPU): the candidates fit the
shared memory and grow with the pairs an expert gets, and the table it prints is what ops/triton_moe.py
reads, bounds and all."""

from __future__ import annotations

from benchmarks import tune_moe
from engine_service.ops import triton_moe
from engine_service.ops.triton_moe import MoeConfig


def test_candidates_fit_shared_memory_and_follow_the_pairs_per_expert():
    for num_tokens in (1, 64, 8192):
        configs = tune_moe.candidates(num_tokens, 128, 8)
        assert configs and len(set(configs)) == len(configs)
        for c in configs:
            assert c.num_stages * (c.block_m + 2 * c.block_n) * c.block_k * 2 <= tune_moe.SMEM_BUDGET
    # decode (8 pairs over 128 experts): only the shortest tile; a prefill's 512 pairs an expert: tall ones
    assert {c.block_m for c in tune_moe.candidates(1, 128, 8)} == {16}
    assert max(c.block_m for c in tune_moe.candidates(8192, 128, 8)) == 128


def test_printed_table_is_the_kernels_lookup(monkeypatch):
    a, b = MoeConfig(16, 64, 256, 1, 4, 5), MoeConfig(64, 128, 64, 8, 8, 3)
    table = tune_moe.config_table([(1, a), (8, a), (64, b), (8192, b)])
    assert table == [(8, a), (1 << 62, b)]
    source = tune_moe.table_source(("cpu", 4, 32, 16), table)
    entries = eval("{" + source + "}", {"MoeConfig": MoeConfig})  # what gets pasted into _CONFIGS
    monkeypatch.setattr(triton_moe, "_CONFIGS", entries)
    dev = triton_moe.torch.device("cpu")
    assert [triton_moe.moe_config(t, 4, 32, 16, dev) for t in (1, 8, 9, 100_000)] == [a, a, b, b]
    assert triton_moe.moe_config(1, 4, 32, 17, dev) == triton_moe._DEFAULT[0][1]  # another shape
