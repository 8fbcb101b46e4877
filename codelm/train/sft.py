"""Supervised fine-tuning: a checkpoint learns to answer chats, on the assistant's tokens only.

The data (codelm.data.sft) is rendered with the checkpoint's own chat template (ChatML for codelm models)
and packed without cropping; the objective is pretraining's next-token loss, which skips every target the
batch marks IGNORE (the prompt, the other roles, padding). Everything else is the shared loop's.
"""

import math
from dataclasses import dataclass
from pathlib import Path

from codelm.config import Config
from codelm.data.sft import Example, PackedExamples, encode_examples, read_conversations, split_held_out
from codelm.errors import UserError
from codelm.model.llama import Transformer
from codelm.tokenizer import Tokenizer
from codelm.train.loop import DistEnv, accumulation_steps, setup_distributed, start_from, train
from codelm.train.objectives import NextToken
from codelm.train.validation import HeldOut, held_out_loss, token_bytes_tensor

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sft.toml"  # package data: installs have it


@dataclass
class ChatRun:
    """What a recipe that learns from chats starts with (SFT, distillation): the model, its tokenizer and
    checkpoint, the examples split in two, and the packed stream over the training ones."""

    model: Transformer
    tok: Tokenizer
    source: Path
    train_examples: list[Example]
    held_out: list[Example]
    stream: PackedExamples
    pad_id: int


def start_chat_run(cfg: Config, env: DistEnv, recipe: str) -> ChatRun:
    """Load train.init_from and sft.data, print what will be learned, and set max_steps from sft.epochs when
    no step or time budget is given."""
    t = cfg.train
    if not cfg.sft.data and t.init_from:
        raise UserError(f"{recipe} needs chat data: give --data FILE.jsonl (sft.data)")
    model, tok, source = start_from(cfg, recipe, run_dir=False)
    examples = encode_examples(read_conversations(cfg.sft.data), tok, tok.chat_template)
    train_examples, held_out = split_held_out(examples, cfg.sft.val_fraction)
    if not train_examples:
        raise UserError(f"sft.val_fraction={cfg.sft.val_fraction} holds out every example of {cfg.sft.data}")
    pad_id = tok.eot_id if tok.eot_id is not None else 0
    stream = PackedExamples(train_examples, cfg.data.seq_len, t.micro_batch, pad_id, seed=t.seed,
                            rank=env.rank, world=env.world)
    if not (t.max_steps or t.max_minutes):
        rows_per_step = accumulation_steps(cfg, env.world) * t.micro_batch * env.world
        t.max_steps = max(1, math.ceil(cfg.sft.epochs * stream.rows_per_epoch() / rows_per_step))
    if env.is_main:
        learned = sum(int(e.learn.sum()) for e in train_examples)
        template = "the checkpoint's own" if tok.chat_template else "ChatML"
        print(f"{recipe}: {len(examples)} examples from {cfg.sft.data}: {len(train_examples)} to train on "
              f"({learned:,} assistant tokens), {len(held_out)} held out; {stream.dropped} longer than "
              f"{cfg.data.seq_len + 1} tokens dropped | chat template: {template}", flush=True)
    return ChatRun(model, tok, source, train_examples, held_out, stream, pad_id)


def held_out_validation(cfg: Config, run: ChatRun, env: DistEnv):
    """Loss and bits per byte on the held-out examples' assistant tokens (all of them each time), or None."""
    token_bytes = token_bytes_tensor(run.tok)

    def validate(model: Transformer, max_tokens: int | None, autocast) -> HeldOut:
        batches = PackedExamples(run.held_out, cfg.data.seq_len, cfg.train.micro_batch, run.pad_id,
                                 shuffle=False, passes=1)
        return held_out_loss(model, batches, token_bytes, autocast, env.device, env.rank, env.world)

    return validate if run.held_out else None


def sft(cfg: Config, resume: bool = False) -> dict:
    env = setup_distributed(cfg.train.device)
    run = start_chat_run(cfg, env, "sft")
    return train(cfg, env, run.model, run.stream, NextToken(), held_out_validation(cfg, run, env),
                 run.source / "tokenizer.json", resume, shardable=True, recipe="sft")
