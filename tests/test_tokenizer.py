"""The tokenizer: lossless on every stdlib file, special tokens as single ids, code-friendly splitting."""

from pathlib import Path

import pytest

from codelm.data.corpus import Corpus
from codelm.tokenizer import EOT, SPECIAL_TOKENS, Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def stdlib_docs():
    docs = list(Corpus(None).documents())
    assert len(docs) > 1000
    return docs


@pytest.fixture(scope="module")
def tok(stdlib_docs):
    return train_tokenizer((d.text for d in stdlib_docs[::8]), vocab_size=4096)


@pytest.mark.slow
def test_round_trip_on_every_stdlib_file(tok, stdlib_docs):
    texts = [d.text for d in stdlib_docs]
    failures = [d.key for d, ids in zip(stdlib_docs, tok.encode_batch(texts)) if tok.decode(ids) != d.text]
    assert failures == []


def test_special_tokens_are_single_ids(tok):
    ids = [tok.special[t] for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    for name, idx in zip(SPECIAL_TOKENS, ids):
        assert tok.hf.id_to_token(idx) == name
        assert tok.decode([idx]) == name


def test_text_that_looks_like_a_special_token_stays_text(tok):
    text = 'SEP = "<|endoftext|>"  # <fim_middle>'
    ids = tok.encode(text)
    assert tok.eot_id not in ids and tok.special["<fim_middle>"] not in ids
    assert tok.decode(ids) == text


def test_digits_are_split_and_indentation_is_compact(tok):
    digits = [tok.decode([i]) for i in tok.encode("x = 1234567")]
    assert [d for d in digits if d.strip().isdigit()] == list("1234567")
    line = tok.encode("\n        return value")
    assert len(line) <= 4  # newline, one whitespace run, " return", " value"


def test_save_and_load(tok, tmp_path: Path):
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert again.encode("def f(x):\n    return x\n") == tok.encode("def f(x):\n    return x\n")
    assert again.eot_id == tok.special[EOT] == 0
    assert not list(tmp_path.glob("*.tmp"))


def test_token_bytes_counts_text_bytes_and_zero_for_specials(tok):
    lengths = tok.token_bytes()
    text = "déjà vu = 'ü'  # ünïcode\n"
    assert sum(lengths[i] for i in tok.encode(text)) == len(text.encode())
    assert all(lengths[tok.special[t]] == 0 for t in SPECIAL_TOKENS)
