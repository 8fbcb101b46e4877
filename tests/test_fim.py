"""Fill-in-the-middle: every transformed sequence gives back its document; PSM/SPM shares follow the config."""

import numpy as np

from codelm.data.fim import fim_prompt, fim_transform, fim_untransform
from codelm.data.loader import PackedLoader
from codelm.data.shards import TokenShards
from codelm.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, Tokenizer


def test_every_transformed_document_reconstructs(tokens_dir):
    tok = Tokenizer.load(tokens_dir / "tokenizer.json")
    docs = TokenShards(tokens_dir / "train")
    spm = 0
    for i in range(len(docs)):
        original = tok.decode(docs[i])
        for seed in range(3):
            rng = np.random.default_rng([seed, i])
            ids = fim_transform(docs[i], tok, rng, spm_rate=0.5)
            spm += ids[1] == tok.special[FIM_SUFFIX]
            assert fim_untransform(ids, tok) == original
    share = spm / (3 * len(docs))
    assert 0.35 < share < 0.65


def test_fim_split_points_cover_edges_and_unicode(tokens_dir):
    tok = Tokenizer.load(tokens_dir / "tokenizer.json")
    text = "ünï = 'çødé'\n"
    ids = tok.encode(text)
    for seed in range(200):
        for spm_rate in (0.0, 1.0):
            out = fim_transform(ids, tok, np.random.default_rng(seed), spm_rate)
            assert fim_untransform(out, tok) == text


def test_loader_stream_with_fim_reconstructs_every_document(tokens_dir):
    """With fim_rate=1 every document segment of the packed stream is a FIM sequence of a real document."""
    tok = Tokenizer.load(tokens_dir / "tokenizer.json")
    docs = TokenShards(tokens_dir / "val")
    originals = {tok.decode(docs[i]) for i in range(len(docs))}
    loader = PackedLoader(docs, 64, 4, tok.eot_id, seed=3, tokenizer=tok, fim_rate=1.0, passes=1, streams=1)
    stream = [int(t) for b in loader for row in b.inputs for t in row[:64]]
    segments = [s for s in np.split(np.array(stream), np.flatnonzero(np.array(stream) == tok.eot_id)) if len(s) > 1]
    complete = segments[:-1]  # the last may be cut by padding
    assert len(complete) == len(docs) - 1
    for seg in complete:
        assert seg[1] == tok.special[FIM_PREFIX] and tok.special[FIM_MIDDLE] in seg
        assert fim_untransform(seg[1:], tok) in originals


def test_fim_prompt_is_psm(tokens_dir):
    tok = Tokenizer.load(tokens_dir / "tokenizer.json")
    ids = fim_prompt("def f(", "):\n", tok)
    assert ids[:2] == [tok.eot_id, tok.special[FIM_PREFIX]] and ids[-1] == tok.special[FIM_MIDDLE]
    assert fim_untransform(ids[1:], tok) == "def f(" + "):\n"
