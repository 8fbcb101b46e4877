"""Pretraining: next-token prediction on packed documents, a fraction of them in FIM order; from scratch, or
continued from train.init_from.

Everything generic (precision, accumulation, schedule, checkpoints, DDP) is in
loop.py; this module only says which batches to draw and which loss to take.
"""

from pathlib import Path

import torch

from codelm import checkpoint as ckpt
from codelm.config import Config
from codelm.data.loader import PackedLoader
from codelm.data.shards import TokenShards
from codelm.errors import UserError
from codelm.model.llama import Transformer
from codelm.tokenizer import Tokenizer
from codelm.train.loop import accumulation_steps, adopt_model_config, setup_distributed, train
from codelm.train.objectives import NextToken
from codelm.train.validation import HeldOut, held_out_loader, held_out_loss, token_bytes_tensor


def pretrain(cfg: Config, resume: bool = False) -> dict:
    env = setup_distributed(cfg.train.device)
    tokens_dir = Path(cfg.data.tokens)
    tokenizer_path = tokens_dir / "tokenizer.json"
    tok = Tokenizer.load(tokenizer_path)
    train_docs = TokenShards(tokens_dir / "train")
    val_docs = TokenShards(tokens_dir / "val")
    torch.manual_seed(cfg.train.seed)  # the initial weights are part of what the seed fixes
    if cfg.train.init_from:
        model, init_tok, _ = ckpt.load_model(cfg.train.init_from)
        if init_tok.hf.to_str() != tok.hf.to_str():
            raise UserError(f"train.init_from={cfg.train.init_from} has another tokenizer than {tokenizer_path}: "
                            "its token ids would mean other things; tokenize the data with the checkpoint's tokenizer")
        adopt_model_config(cfg, model.config)
        model.train()
    else:
        model = Transformer(cfg.model)
    if cfg.model.vocab_size < tok.vocab_size:
        raise UserError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
    loader = PackedLoader(
        train_docs,
        cfg.data.seq_len,
        cfg.train.micro_batch,
        tok.eot_id,
        seed=cfg.train.seed,
        tokenizer=tok,
        fim_rate=cfg.data.fim_rate,
        fim_spm_rate=cfg.data.fim_spm_rate,
        rank=env.rank,
        world=env.world,
        streams=accumulation_steps(cfg, env.world)
        * cfg.train.micro_batch
        * env.world,  # every row of a step from its own stream
    )
    token_bytes = token_bytes_tensor(tok)

    def validate(model: Transformer, max_tokens: int | None, autocast) -> HeldOut:
        """The whole validation split, or (max_tokens) every k-th document: a subset spread over it, the same each
        time."""
        docs = val_docs
        if max_tokens:
            stride = max(1, val_docs.n_tokens // max_tokens)
            docs = [val_docs[i] for i in range(0, len(val_docs), stride)]
        batches = held_out_loader(docs, tok, cfg.data.seq_len, cfg.train.micro_batch)
        return held_out_loss(model, batches, token_bytes, autocast, env.device, env.rank, env.world)

    return train(cfg, env, model, loader, NextToken(), validate, tokenizer_path, resume, shardable=True)
