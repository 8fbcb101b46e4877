"""Token shards: dtype choice, multi-shard round trip, refusing incomplete output."""

import numpy as np
import pytest

from codelm.data.shards import ShardWriter, TokenShards, token_dtype
from codelm.errors import UserError


def test_dtype_follows_vocab_size():
    assert token_dtype(8192) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


@pytest.mark.parametrize("vocab", [8192, 100_000])
def test_documents_round_trip_across_shards(tmp_path, vocab):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, vocab, size=rng.integers(1, 300)) for _ in range(50)]
    writer = ShardWriter(tmp_path, vocab, shard_tokens=1000)
    for d in docs:
        writer.add(d.tolist())
    meta = writer.close()
    assert len(meta["shards"]) > 3
    shards = TokenShards(tmp_path)
    assert len(shards) == 50 and shards.n_tokens == sum(map(len, docs))
    assert shards[0].dtype == token_dtype(vocab)
    for i, d in enumerate(docs):
        assert np.array_equal(shards[i], d)


def test_incomplete_or_truncated_shards_are_refused(tmp_path):
    writer = ShardWriter(tmp_path, 100)
    writer.add([1, 2, 3])
    with pytest.raises(UserError, match="meta.json missing"):
        TokenShards(tmp_path)  # not closed yet
    writer.close()
    TokenShards(tmp_path)
    bin_path = tmp_path / "shard_00000.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    with pytest.raises(UserError, match="truncated"):
        TokenShards(tmp_path)
