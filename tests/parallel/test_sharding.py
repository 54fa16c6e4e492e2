"""The sharding math: which rows and columns each rank loads, KV-head replication, and lazy slice reads.

No process group is needed: each rank's layer is built on its own and fed a full checkpoint tensor whose
entries name their own row (or column), so the loaded shard shows exactly what the rank took.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from engine_service.core.model_config import ModelConfig
from engine_service.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from engine_service.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from engine_service.models.registry import model_class
from engine_service.worker.weights import CheckpointTensor, checkpoint_files, load_weights


def row_ids(rows: int, cols: int) -> torch.Tensor:
    return torch.arange(rows, dtype=torch.float64)[:, None].expand(rows, cols).clone()  # entry = its row


def col_ids(rows: int, cols: int) -> torch.Tensor:
    return torch.arange(cols, dtype=torch.float64)[None, :].expand(rows, cols).clone()  # entry = its column


def loaded_rows(param: torch.Tensor) -> list[int]:
    return param[:, 0].long().tolist()


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_column_parallel_takes_its_rows_and_the_outputs_concatenate(tp):
    x, full = torch.randn(3, 8, dtype=torch.float64), torch.randn(12, 8, dtype=torch.float64)
    outs = []
    for rank in range(tp):
        layer = ColumnParallelLinear(8, 12, False, rank, tp).double()
        layer.weight_loader(layer.weight, row_ids(12, 8))
        assert loaded_rows(layer.weight) == list(range(rank * 12 // tp, (rank + 1) * 12 // tp))
        layer.weight_loader(layer.weight, full)
        outs.append(layer(x))
    torch.testing.assert_close(torch.cat(outs, dim=-1), x @ full.T)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_merged_gate_up_shards_each_half_on_its_own(tp):
    inter = 8
    per = inter // tp
    for rank in range(tp):
        layer = MergedColumnParallelLinear(4, [inter, inter], False, rank, tp).double()
        layer.weight_loader(layer.weight, row_ids(inter, 4), 0)  # gate
        layer.weight_loader(layer.weight, row_ids(inter, 4) + 100, 1)  # up
        mine = list(range(rank * per, (rank + 1) * per))
        assert loaded_rows(layer.weight) == mine + [100 + r for r in mine]  # [gate_r | up_r]


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_row_parallel_takes_its_columns_and_the_partial_sums_add_up(tp):
    x, full, bias = (
        torch.randn(3, 8, dtype=torch.float64),
        torch.randn(5, 8, dtype=torch.float64),
        torch.randn(5, dtype=torch.float64),
    )
    total = torch.zeros(3, 5, dtype=torch.float64)
    per = 8 // tp
    for rank in range(tp):
        layer = RowParallelLinear(8, 5, True, rank, tp).double()
        layer.weight_loader(layer.weight, col_ids(5, 8))
        assert layer.weight[0].long().tolist() == list(range(rank * per, (rank + 1) * per))
        layer.bias.weight_loader(layer.bias, bias)
        torch.testing.assert_close(layer.bias.data, bias)  # whole on every rank, added after the all-reduce
        layer.weight_loader(layer.weight, full)
        total += x[:, rank * per : (rank + 1) * per] @ layer.weight.T  # what all_reduce sums
    torch.testing.assert_close(total + bias, x @ full.T + bias)


# (query heads, KV heads, tp) -> the KV heads each rank holds, in checkpoint numbering
KV_LAYOUTS = [
    (4, 4, 2, [[0, 1], [2, 3]]),  # split
    (4, 2, 2, [[0], [1]]),  # split, one each
    (4, 1, 2, [[0], [0]]),  # replicated: fewer KV heads than ranks
    (8, 2, 4, [[0], [0], [1], [1]]),  # each KV head on two ranks
    (4, 1, 4, [[0], [0], [0], [0]]),
]


@pytest.mark.parametrize("num_heads,num_kv_heads,tp,expected", KV_LAYOUTS)
def test_qkv_split_and_kv_head_replication(num_heads, num_kv_heads, tp, expected):
    D, hidden = 2, 4
    group = num_heads // num_kv_heads  # query heads per KV head
    for rank in range(tp):
        layer = QKVParallelLinear(hidden, D, num_heads, num_kv_heads, False, rank, tp).double()
        # Checkpoint rows, labelled by head: q head h -> 100 + h, k head h -> 200 + h, v head h -> 300 + h.
        for shard, base, heads in (("q", 100, num_heads), ("k", 200, num_kv_heads), ("v", 300, num_kv_heads)):
            labels = torch.arange(heads, dtype=torch.float64).repeat_interleave(D) + base
            layer.weight_loader(layer.weight, labels[:, None].expand(-1, hidden).clone(), shard)
        heads = [int(r) for r in loaded_rows(layer.weight)[::D]]
        q_local = num_heads // tp
        q_heads = [h - 100 for h in heads[:q_local]]
        k_heads = [h - 200 for h in heads[q_local : q_local + layer.num_kv_heads]]
        v_heads = [h - 300 for h in heads[q_local + layer.num_kv_heads :]]
        assert q_heads == list(range(rank * q_local, (rank + 1) * q_local))
        assert k_heads == v_heads == expected[rank]
        # Attention on this rank pairs local q head j with local KV head j // (q_local / kv_local):
        # that must be the KV head the checkpoint pairs it with.
        local_group = q_local // layer.num_kv_heads
        for j, q in enumerate(q_heads):
            assert k_heads[j // local_group] == q // group


def test_kv_heads_that_neither_divide_nor_are_divided_by_tp_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        QKVParallelLinear(4, 2, 6, 3, False, 0, 2)  # 3 KV heads over 2 ranks
    with pytest.raises(ValueError, match="divisible"):
        QKVParallelLinear(4, 2, 12, 2, False, 0, 3)  # 2 KV heads over 3 ranks


@pytest.mark.parametrize("vocab,tp", [(10, 1), (10, 2), (10, 4), (9, 4)])
def test_vocab_shards_pad_the_last_rank_and_gather_to_the_full_vocabulary(vocab, tp):
    hidden = 3
    full = torch.randn(vocab, hidden, dtype=torch.float64)
    h = torch.randn(2, hidden, dtype=torch.float64)
    parts = []
    for rank in range(tp):
        emb = VocabParallelEmbedding(vocab, hidden, rank, tp).double()
        emb.weight_loader(emb.weight, row_ids(vocab, hidden))
        per = -(-vocab // tp)
        rows = [r for r in range(rank * per, (rank + 1) * per) if r < vocab]
        assert loaded_rows(emb.weight)[: len(rows)] == rows
        assert emb.weight[len(rows) :].abs().sum() == 0  # padding rows stay zero
        head = ParallelLMHead(vocab, hidden, rank, tp).double()
        head.weight_loader(head.weight, full)
        parts.append(h @ head.weight.T)  # this rank's logits, before the all-gather
    torch.testing.assert_close(torch.cat(parts, dim=-1)[:, :vocab], h @ full.T)


@pytest.mark.parametrize("name", ["llama", "qwen2", "kv1"])
def test_each_rank_reads_only_its_slices_of_the_checkpoint(tp_models, name, monkeypatch):
    """Lazy loading gives what loading whole tensors gives, and reads no sharded tensor whole."""
    mc = ModelConfig.from_dir(tp_models[name])
    whole_reads: list[tuple[int, ...]] = []
    original = CheckpointTensor.__getitem__

    def spy(self, index):
        whole_reads.append(tuple(self.shape))
        return original(self, index)

    for rank in range(2):
        lazy = model_class(mc.architecture)(mc, rank, 2)
        monkeypatch.setattr(CheckpointTensor, "__getitem__", spy)
        load_weights(lazy, mc.path)
        monkeypatch.setattr(CheckpointTensor, "__getitem__", original)
        eager = model_class(mc.architecture)(mc, rank, 2)
        _load_whole_tensors(eager, mc.path)
        for (n, a), (_, b) in zip(lazy.named_parameters(), eager.named_parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert whole_reads and all(len(shape) == 1 for shape in whole_reads)  # norms and the o_proj bias only


def _load_whole_tensors(model, folder) -> None:
    """The loaders fed whole in-memory tensors (what loading did before it was lazy)."""
    params = dict(model.named_parameters())
    tied = model.args.tie_word_embeddings
    for file in checkpoint_files(folder):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                if tied and name.startswith("lm_head."):
                    continue
                tensor = f.get_tensor(name)
                for fragment, (ours, shard) in model.stacked_params.items():
                    if fragment in name:
                        param = params[name.replace(fragment, ours)]
                        param.weight_loader(param, tensor, shard)
                        break
                else:
                    param = params[name]
                    getattr(param, "weight_loader", lambda p, t: p.data.copy_(t))(param, tensor)
