"""Data parallelism's bookkeeping that needs no second process: optimizer states in either keying, which
validation batches each process measures, and what sharding refuses.

Training under torchrun (DDP and FSDP against one process, resume across modes) is in test_training.py."""

import re

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from codelm.config import ModelConfig, OptimConfig
from codelm.errors import UserError
from codelm.model.llama import Transformer
from codelm.train.loop import build_optimizer
from codelm.train.parallel import Sharded, data_parallel, is_keyed_by_name, keyed_by_name, keyed_by_position
from codelm.train.validation import process_share


def trained_optimizer():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=16))
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, embed_lr=0.1), torch.device("cpu"))  # three groups
    ids = torch.randint(0, 64, (2, 17))
    model.loss(ids[:, :-1], ids[:, 1:]).backward()
    optimizer.step()
    return model, optimizer


def test_torchs_by_name_state_converts_to_the_optimizers_own_and_back():
    """The by-name form is what FSDP's state-dict helpers write (torch's own function makes it here, on an
    unsharded model); converting it must give back exactly what optimizer.state_dict() holds."""
    model, optimizer = trained_optimizer()
    own = optimizer.state_dict()
    named = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    assert is_keyed_by_name(named) and not is_keyed_by_name(own)
    for state, reference in ((keyed_by_position(named, model, optimizer), own),
                             (keyed_by_name(own, model, optimizer), named)):
        assert state["param_groups"] == reference["param_groups"]
        assert state["state"].keys() == reference["state"].keys()
        for key, moments in reference["state"].items():
            for name, value in moments.items():
                assert torch.equal(state["state"][key][name], value), (key, name)


def test_a_by_name_state_loads_into_a_fresh_unsharded_optimizer():
    model, optimizer = trained_optimizer()
    named = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    fresh = build_optimizer(model, OptimConfig(lr=1e-3, embed_lr=0.1), torch.device("cpu"))
    fresh.load_state_dict(keyed_by_position(named, model, fresh))
    for group, reference in zip(fresh.param_groups, optimizer.param_groups):
        assert {k: v for k, v in group.items() if k != "params"} == {
            k: v for k, v in reference.items() if k != "params"
        }
    for p in model.parameters():
        for name, value in optimizer.state[p].items():
            assert torch.equal(fresh.state[p][name], value), name


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", range(8))
def test_each_batch_is_measured_once_and_every_process_runs_as_many_forwards(n, world):
    shares = [list(process_share(iter(range(n)), rank, world)) for rank in range(world)]
    counted = sorted(batch for share in shares for batch, counts in share if counts)
    assert counted == list(range(n))
    assert len({len(share) for share in shares}) == 1  # FSDP's gathers need every process in each forward
    for share in shares:
        assert all(counts for _, counts in share[:-1])  # only a last, repeated batch may go uncounted


@pytest.mark.parametrize("refused", ["LoRA (lora.r > 0)", "this recipe (only pretrain and sft)"])
def test_sharding_names_what_it_does_not_support(refused):
    """Under a (one-process) process group, as torchrun makes: each refusal is one line naming the setting."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(UserError, match=re.escape(f"does not support {refused}")):
            data_parallel("fsdp", 1, {"LoRA (lora.r > 0)": False, refused: True})
        assert isinstance(data_parallel("fsdp", 1, {refused: False}), Sharded)
    finally:
        dist.destroy_process_group()
