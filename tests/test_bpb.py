"""Bits per byte: checked against a hand count with a model whose every prediction costs exactly ln(V)."""

import math

import numpy as np
import pytest
import torch

from codelm.config import ModelConfig
from codelm.data.shards import TokenShards
from codelm.eval.bpb import unigram_entropy
from codelm.model.llama import Transformer
from codelm.tokenizer import Tokenizer
from codelm.train.validation import held_out_loader, held_out_loss, token_bytes_tensor


def test_uniform_model_gives_ln_v_per_token_and_matching_bits_per_byte(tokens_dir):
    tok = Tokenizer.load(tokens_dir / "tokenizer.json")
    val = TokenShards(tokens_dir / "val")
    docs = [val[i] for i in range(min(5, len(val)))]
    assert len(docs) >= 2
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                    max_seq_len=64))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # uniform logits
    result = held_out_loss(model, held_out_loader(docs, tok, 64, 4), token_bytes_tensor(tok),
                           torch.autocast("cpu", enabled=False), "cpu")

    # every token after the very first is predicted once: the documents plus the <|endoftext|> between them
    n_targets = sum(len(d) + 1 for d in docs) - 1
    n_text_bytes = sum(len(tok.decode(d).encode()) for d in docs)
    assert result.tokens == n_targets and result.bytes == n_text_bytes
    assert result.loss == pytest.approx(math.log(tok.vocab_size), rel=1e-6)
    n_text_targets = sum(len(d) for d in docs)  # the <|endoftext|> targets carry no bytes and are left out
    expected_bpb = n_text_targets * math.log(tok.vocab_size) / (math.log(2) * n_text_bytes)
    assert result.bpb == pytest.approx(expected_bpb, rel=1e-6)


def test_unigram_entropy_of_a_known_distribution():
    docs = [np.array([1, 1, 2, 3])]  # with the one <|endoftext|>: counts 1:2, 2:1, 3:1, 0:1
    p = np.array([2, 1, 1, 1]) / 5
    assert unigram_entropy(docs, vocab_size=5, eot_id=0) == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-6)


