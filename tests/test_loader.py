"""The packing loader: exact coverage, determinism, resume, document ids, rank slicing."""

import numpy as np
import pytest
import torch

from codelm.data.loader import IGNORE, PackedLoader

EOT = 0


def make_docs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 500, size=rng.integers(1, 90)) for _ in range(n)]



def test_one_pass_covers_every_token_once_in_seed_order():
    docs = make_docs()
    loader = PackedLoader(docs, seq_len=32, batch_rows=3, eot_id=EOT, seed=7, passes=1, streams=1)
    batches = list(loader)
    inputs = torch.cat([b.inputs for b in batches])
    targets = torch.cat([b.targets for b in batches])
    stream = [inputs[0, 0].item()] + targets[targets != IGNORE].tolist()
    order = np.random.default_rng([7, 0, 0]).permutation(len(docs))
    expected = [t for i in order for t in [EOT, *docs[i].tolist()]]
    assert stream == expected
    assert torch.equal(inputs[1:, 0], targets[:-1, -1])  # consecutive rows continue the stream


def test_doc_ids_follow_document_starts():
    docs = [np.array([5, 6, 7]), np.array([8, 9])]
    batch = PackedLoader(docs, seq_len=6, batch_rows=1, eot_id=EOT, shuffle=False, streams=1).next_batch()
    assert batch.inputs[0].tolist() == [0, 5, 6, 7, 0, 8]
    assert batch.targets[0].tolist() == [5, 6, 7, 0, 8, 9]
    assert batch.doc_ids[0].tolist() == [1, 1, 1, 1, 2, 2]


def test_same_seed_same_batches_other_seed_other_batches():
    docs = make_docs()
    la, lb, lc = (PackedLoader(docs, 32, 4, EOT, seed=s) for s in (1, 1, 2))
    for _ in range(25):  # crosses epoch boundaries
        x, y, z = la.next_batch(), lb.next_batch(), lc.next_batch()
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.doc_ids, y.doc_ids)
        assert not torch.equal(x.inputs, z.inputs)


@pytest.mark.parametrize("fim_rate", [0.0, 0.5])
def test_resume_continues_with_the_next_unseen_batch(fim_rate, tokens_dir):
    from codelm.data.shards import TokenShards
    from codelm.tokenizer import Tokenizer

    tok = Tokenizer.load(tokens_dir / "tokenizer.json")
    docs = TokenShards(tokens_dir / "val")
    kwargs = dict(seq_len=64, batch_rows=4, eot_id=tok.eot_id, seed=5, tokenizer=tok, fim_rate=fim_rate)
    reference = PackedLoader(docs, **kwargs)
    expected = [reference.next_batch() for _ in range(30)]
    first = PackedLoader(docs, **kwargs)
    for _ in range(11):
        first.next_batch()
    resumed = PackedLoader(docs, **kwargs)
    resumed.load_state_dict(first.state_dict())
    for want in expected[11:]:
        got = resumed.next_batch()
        assert torch.equal(got.inputs, want.inputs) and torch.equal(got.targets, want.targets)


def test_ranks_split_the_global_batch():
    docs = make_docs()
    whole = PackedLoader(docs, 16, 4, EOT, seed=3)
    ranks = [PackedLoader(docs, 16, 2, EOT, seed=3, rank=r, world=2) for r in range(2)]
    assert whole.n_streams == ranks[0].n_streams == 4
    for _ in range(5):
        full = whole.next_batch().inputs
        assert torch.equal(torch.cat([r.next_batch().inputs for r in ranks]), full)


def test_final_row_is_padded_and_ignored():
    docs = [np.arange(1, 11)]
    batches = list(PackedLoader(docs, 8, 1, EOT, shuffle=False, passes=1, streams=1))
    assert len(batches) == 2
    assert batches[1].targets[0].tolist() == [9, 10] + [IGNORE] * 6


def test_rows_of_a_batch_come_from_different_documents_and_each_stream_covers_its_share():
    docs = [np.full(200, i + 1) for i in range(12)]  # document i is all token i+1
    loader = PackedLoader(docs, 16, 4, EOT, seed=0, streams=4)
    first = loader.next_batch()
    row_docs = [set(r.tolist()) - {EOT} for r in first.inputs]
    assert len({min(d) for d in row_docs}) == 4  # four rows, four different documents
    seen = {s: set() for s in range(4)}
    for _ in range(300):  # far more than an epoch of every stream
        for s, row in enumerate(loader.next_batch().inputs):
            seen[s] |= set(row.tolist()) - {EOT}
    assert seen == {s: {i + 1 for i in range(s, 12, 4)} for s in range(4)}
