"""Data parallelism for the training loop, kept out of the model: replicated (one process, or DDP under torchrun:
every process holds the whole model and optimizer) or sharded (FSDP, torch's `fully_shard`: each process holds
1/world of every weight, gradient and optimizer moment, and gathers one block's weights just before using them).

Both average gradients over processes, so the loop's arithmetic is the same for either. What differs is where
whole weights exist: a sharded run gathers them for a checkpoint (every process takes part, the first writes).
"""

import contextlib

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor

from codelm.errors import UserError


class Replicated:
    """One process, or DDP: gradients all-reduced on each step's last micro batch."""

    def __init__(self, world: int):
        self.world = world

    def wrap(self, step_loss: nn.Module, device: torch.device) -> nn.Module:
        if self.world == 1:
            return step_loss
        device_ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(step_loss, device_ids=device_ids)

    def gradient_sync(self, module: nn.Module, sync: bool):
        """Context for one micro batch's backward: without sync, gradients only accumulate locally."""
        if sync or not isinstance(module, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return module.no_sync()

    def grad_norm(self, params: list[torch.Tensor]) -> torch.Tensor:
        """The global gradient norm (every process holds every whole gradient after the all-reduce)."""
        return nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])

    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict]:
        """(whole weights, or None where the model's own state_dict is whole; the optimizer's state) for a
        checkpoint. Called on every process; only the first process's result is written."""
        return None, optimizer.state_dict()

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict):
        """A checkpoint's optimizer state, whichever mode wrote it."""
        optimizer.load_state_dict(keyed_by_position(state, model, optimizer) if is_keyed_by_name(state) else state)


class Sharded(Replicated):
    """FSDP2: each transformer block is one unit of gathering and sharding, the Transformer (embeddings, final
    norm, LM head) the root. `forward` (validation's logits) and `loss` (training's objective) gather the root's
    weights; the model must not be used through other methods while sharded."""

    def wrap(self, step_loss: nn.Module, device: torch.device) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        # Every process holds the same whole weights (one seed, or one checkpoint): FSDP slices its own copy and
        # broadcasts nothing, where DDP would broadcast the first process's.
        mesh = init_device_mesh(device.type, (self.world,))
        self.root = step_loss.model
        for block in self.root.model.layers:
            fully_shard(block, mesh=mesh)
        # The root frees its gathered weights after each forward, as the blocks do (FSDP's default keeps a root's
        # until the backward, and validation's forwards have none): checkpoints and the optimizer see the shards.
        fully_shard(self.root, mesh=mesh, reshard_after_forward=True)
        register_fsdp_forward_method(self.root, "loss")
        return step_loss

    def gradient_sync(self, module: nn.Module, sync: bool):
        self.root.set_requires_gradient_sync(sync)  # reduce-scatter only on the last micro batch, as DDP's no_sync
        return contextlib.nullcontext()

    def grad_norm(self, params: list[torch.Tensor]) -> torch.Tensor:
        norm = super().grad_norm(params)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm  # each process holds a partial sum

    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict]:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        whole = StateDictOptions(full_state_dict=True, cpu_offload=True)  # the first process gets it, the others {}
        return get_model_state_dict(model, options=whole), get_optimizer_state_dict(model, optimizer, options=whole)

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if not is_keyed_by_name(state):
            state = keyed_by_name(state, model, optimizer)
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state,  # each process keeps its shard
                                 options=StateDictOptions(full_state_dict=True))


def is_keyed_by_name(optimizer_state: dict) -> bool:
    """Whether an optimizer state is keyed by parameter name (a sharded run's) or by position (torch's own)."""
    return any(isinstance(key, str) for group in optimizer_state["param_groups"] for key in group["params"])


def _names_by_position(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _rekeyed(state: dict, key: dict) -> dict:
    """The optimizer state with every parameter key k replaced by key[k]."""
    try:
        return {"state": {key[k]: moments for k, moments in state["state"].items()},
                "param_groups": [{**g, "params": [key[k] for k in g["params"]]} for g in state["param_groups"]]}
    except KeyError as missing:
        raise UserError(f"the checkpoint's optimizer state names parameter {missing} that this model's optimizer "
                        "does not train: resume with the settings that wrote it") from None


def keyed_by_position(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """A sharded run's optimizer state (whole, keyed by name) for an unsharded optimizer over the same model."""
    return _rekeyed(state, {name: i for i, name in enumerate(_names_by_position(model, optimizer))})


def keyed_by_name(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """An unsharded run's optimizer state, keyed by name as the sharded optimizer's loader expects."""
    return _rekeyed(state, dict(enumerate(_names_by_position(model, optimizer))))


def data_parallel(mode: str, world: int, refusals: dict[str, bool]) -> Replicated:
    """The strategy for train.parallel. refusals: what sharding does not support, by the name to print."""
    if mode == "ddp":
        return Replicated(world)
    if not dist.is_initialized():
        raise UserError("train.parallel=\"fsdp\" shards the model over the processes of a torchrun launch: "
                        "run under torchrun (a single process has nothing to shard over)")
    for name, refused in refusals.items():
        if refused:
            raise UserError(f"train.parallel=\"fsdp\" does not support {name}: use train.parallel=\"ddp\"")
    return Sharded(world)
