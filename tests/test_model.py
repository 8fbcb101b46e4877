"""The transformer: document masking, causality, and agreement with a naive reference implementation."""

import math
from dataclasses import replace

import pytest
import torch

from codelm.config import ModelConfig
from codelm.inference.cache import KVCache
from codelm.model.llama import Transformer, positions_from_doc_ids

CFG = ModelConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, rope_theta=500.0)


def make_model(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    model = Transformer(cfg).double().eval()
    with torch.no_grad():  # norms away from 1 so the test sees their weights
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def reference_forward(model: Transformer, ids: list[int]) -> torch.Tensor:
    """One document, written out plainly: per-head loops, RoPE by rotating (i, i + D/2) pairs, GQA by index."""
    c = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    D, half = c.head_dim, c.head_dim // 2

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.norm_eps) * w

    def rope(x, pos):
        out = x.clone()
        for i in range(half):
            angle = pos * c.rope_theta ** (-2 * i / D)
            a, b = x[..., i], x[..., i + half]
            out[..., i] = a * math.cos(angle) - b * math.sin(angle)
            out[..., i + half] = a * math.sin(angle) + b * math.cos(angle)
        return out

    x = sd["model.embed_tokens.weight"][ids]
    T = len(ids)
    for layer in range(c.n_layers):
        p = f"model.layers.{layer}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(T, c.n_heads, D)
        k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(T, c.n_kv_heads, D)
        if c.qk_norm:  # each head's query and key normalized on its own, before RoPE
            q, k = rms(q, sd[p + "self_attn.q_norm.weight"]), rms(k, sd[p + "self_attn.k_norm.weight"])
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(T, c.n_kv_heads, D)
        heads = []
        for hd in range(c.n_heads):
            kv = hd // (c.n_heads // c.n_kv_heads)
            qh = torch.stack([rope(q[t, hd], t) for t in range(T)])
            kh = torch.stack([rope(k[t, kv], t) for t in range(T)])
            scores = qh @ kh.T / math.sqrt(D)
            scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
            heads.append(torch.softmax(scores, -1) @ v[:, kv])
        x = x + torch.cat(heads, -1) @ sd[p + "self_attn.o_proj.weight"].T
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        gate = h @ sd[p + "mlp.gate_proj.weight"].T
        x = (
            x
            + (torch.nn.functional.silu(gate) * (h @ sd[p + "mlp.up_proj.weight"].T)) @ sd[p + "mlp.down_proj.weight"].T
        )
    return rms(x, sd["model.norm.weight"]) @ sd["lm_head.weight"].T


def test_matches_naive_reference_with_rope_and_gqa():
    model = make_model()
    ids = torch.randint(0, CFG.vocab_size, (20,)).tolist()
    expected = reference_forward(model, ids)
    actual = model(torch.tensor([ids]))[0]
    assert torch.allclose(actual, expected, atol=1e-9), (actual - expected).abs().max()


def test_packed_document_equals_document_alone():
    """Masking plus per-document positions: doc B in a packed row sees exactly what it sees alone."""
    model = make_model()
    a = torch.randint(0, CFG.vocab_size, (13,))
    b = torch.randint(0, CFG.vocab_size, (9,))
    packed = torch.cat([a, b])[None]
    doc_ids = torch.tensor([[0] * 13 + [1] * 9])
    logits = model(packed, doc_ids)
    alone = model(b[None])
    assert torch.allclose(logits[0, 13:], alone[0], atol=1e-10)


def test_changing_document_a_leaves_document_b_unchanged():
    model = make_model()
    row = torch.randint(0, CFG.vocab_size, (1, 30))
    doc_ids = torch.tensor([[0] * 12 + [1] * 18])
    before = model(row, doc_ids)
    changed = row.clone()
    changed[0, :12] = (changed[0, :12] + 1) % CFG.vocab_size
    after = model(changed, doc_ids)
    assert torch.equal(before[0, 12:], after[0, 12:])
    assert not torch.allclose(before[0, :12], after[0, :12])  # the change did reach document A


def test_attention_is_causal():
    model = make_model()
    row = torch.randint(0, CFG.vocab_size, (1, 24))
    before = model(row)
    changed = row.clone()
    changed[0, 15] = (changed[0, 15] + 1) % CFG.vocab_size
    after = model(changed)
    assert torch.equal(before[0, :15], after[0, :15])
    assert not torch.allclose(before[0, 15:], after[0, 15:])


def test_positions_restart_per_document():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2]])
    assert positions_from_doc_ids(doc_ids).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]


def test_hf_tensor_names_and_tied_embeddings():
    names = set(Transformer(CFG).state_dict())
    for n in [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.post_attention_layernorm.weight",
    ]:
        assert n in names
    tied = Transformer(ModelConfig(vocab_size=97, dim=32, n_layers=1, n_heads=4, n_kv_heads=4, tie_embeddings=True))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert (
        tied.num_params()
        == Transformer(ModelConfig(vocab_size=97, dim=32, n_layers=1, n_heads=4, n_kv_heads=4)).num_params() - 97 * 32
    )


def test_qk_norm_is_a_per_head_rms_norm_before_rope():
    model = make_model(replace(CFG, qk_norm=True))  # norm weights away from 1, as make_model sets them
    assert "model.layers.1.self_attn.k_norm.weight" in model.state_dict()
    ids = torch.randint(0, CFG.vocab_size, (20,)).tolist()
    expected = reference_forward(model, ids)
    assert torch.allclose(model(torch.tensor([ids]))[0], expected, atol=1e-9)
    plain = make_model()  # the same weights without QK-norm give other logits: the norms did act
    plain.load_state_dict(model.state_dict(), strict=False)
    assert not torch.allclose(plain(torch.tensor([ids]))[0], expected, atol=1e-3)


def test_decode_step_through_the_cache_equals_forward():
    model = make_model()
    ids = torch.randint(0, CFG.vocab_size, (2, 12))
    cache = KVCache(CFG, batch=2, max_len=12, dtype=torch.float64)
    prefill = model.decode_step(ids[:, :9], cache)
    assert cache.length == 9  # the step advanced the cache past its tokens
    steps = [model.decode_step(ids[:, t : t + 1], cache, last_only=True) for t in range(9, 12)]
    assert cache.length == 12
    full = model(ids)
    assert torch.allclose(prefill, full[:, :9], atol=1e-10)
    assert torch.allclose(torch.stack(steps, 1), full[:, 9:], atol=1e-10)


def test_parameter_and_flops_accounting():
    cfg = ModelConfig(vocab_size=100, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=160, max_seq_len=32)
    model = Transformer(cfg)
    kv = 2 * 16
    per_layer = 64 * 64 + 2 * 64 * kv + 64 * 64 + 3 * 64 * 160 + 2 * 64
    expected = 2 * 100 * 64 + 3 * per_layer + 64
    assert model.num_params() == expected
    assert model.flops_per_token(32) == 6 * (expected - 100 * 64) + 12 * 3 * 64 * 32
    assert model.flops_per_token(32, frozen_weights=True) == 4 * (expected - 100 * 64) + 12 * 3 * 64 * 32  # LoRA


@pytest.mark.parametrize("bad", [dict(dim=30, n_heads=4), dict(n_heads=4, n_kv_heads=3)])
def test_inconsistent_shapes_are_rejected(bad):
    with pytest.raises(ValueError):
        ModelConfig(**{"vocab_size": 10, "dim": 32, **bad})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_loss_matches_logits_cross_entropy_in_value_and_gradients(precision):
    torch.manual_seed(1)
    model = Transformer(ModelConfig(vocab_size=300, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=64))
    ids = torch.randint(0, 300, (3, 40))
    targets = torch.randint(0, 300, (3, 40))
    targets[2, 30:] = -100
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with autocast:
        reference = torch.nn.functional.cross_entropy(
            model(ids).float().flatten(0, 1), targets.flatten(), ignore_index=-100
        )
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with autocast:
        fused = model.loss(ids, targets)
    fused.backward()
    tol = 1e-5 if precision == "fp32" else 2e-2
    assert fused.item() == pytest.approx(reference.item(), rel=tol)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[n], rtol=tol, atol=tol * expected[n].abs().max()), n
    with torch.no_grad(), autocast:  # evaluation takes the same path, without computing gradients
        assert model.loss(ids, targets).item() == pytest.approx(reference.item(), rel=tol)


def test_zero_init_out_proj_starts_every_block_as_the_identity():
    """The output projections start at zero and nothing else changes, so the model starts as head(norm(embed)); the
    zeroed weights still get gradients, so the blocks start learning at the first step."""
    torch.manual_seed(0)
    zeroed = Transformer(replace(CFG, zero_init_out_proj=True))
    torch.manual_seed(0)
    plain = Transformer(CFG)
    out_proj = ("o_proj.weight", "down_proj.weight")
    for (name, p), (_, q) in zip(zeroed.named_parameters(), plain.named_parameters(), strict=True):
        if name.endswith(out_proj):
            assert not p.any() and q.any(), name
        else:
            assert torch.equal(p, q), name
    ids = torch.randint(0, CFG.vocab_size, (2, 16))
    torch.testing.assert_close(zeroed(ids), zeroed.lm_head(zeroed.model.norm(zeroed.model.embed_tokens(ids))))
    zeroed.loss(ids[:, :-1], ids[:, 1:]).backward()
    for name, p in zeroed.named_parameters():
        if name.endswith(out_proj):
            assert p.grad.abs().sum() > 0, name
