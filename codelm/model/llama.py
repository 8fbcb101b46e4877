"""A Llama-3-style decoder-only transformer, readable in one sitting.

RMSNorm, rotary position embeddings, SwiGLU MLP, grouped-query attention,
optional QK-norm and tied embeddings. Module and parameter names follow
Hugging Face's `LlamaForCausalLM` (`model.layers.0.self_attn.q_proj.weight`,
...), and RoPE uses HF's rotate-half layout, so a state dict is an HF Llama
checkpoint as is (with QK-norm, a Qwen3 one: codelm.checkpoint says which).

Three entry points, one per use:
- `forward(input_ids, doc_ids)`: logits of packed rows (evaluation). `doc_ids`
  (B, T) gives each position's document within its row; attention is then
  causal *and* confined to the document, so one document never sees another.
- `loss(input_ids, targets, doc_ids)`: the mean next-token loss of packed rows
  (training), the LM head fused into the cross-entropy (fused_ce.py).
- `decode_step(input_ids, cache)`: generation. `cache` (codelm.inference.cache:
  KVCache, or SlotView for a compiled step; codelm.serve.blocks.BatchView for the
  server's packed steps) holds the keys and values of earlier tokens; each layer's
  attention is `cache.attend`, which stores the new ones and attends to all it
  holds, and the step then advances the cache past them.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from codelm.config import ModelConfig
from codelm.model.fused_ce import linear_cross_entropy

SMALL_BATCH_TOKENS = 64  # up to this many tokens, fused_linear runs its layers one by one


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (max_seq_len, head_dim), halves duplicated as in HF."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    """x: (B, H, T, D); cos/sin: (B, 1, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def attention_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T): query i may see key j iff j <= i and both are in the same document."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (same_doc & causal)[:, None]


def fused_linear(x: torch.Tensor, module: nn.Module, names: tuple[str, ...]) -> torch.Tensor:
    """Several bias-free Linear layers applied to x, outputs concatenated on the last dim.

    For many tokens (training, prefill) the weights are concatenated into one wide
    GEMM, which runs much closer to peak on CPU. For a few tokens (decoding) the
    concatenation would copy every weight at each step, so the layers run one by one,
    as do layers that are not plain Linear ones (int8 quantized: codelm.inference.quant).
    Nothing is cached: a cached copy goes stale when an optimizer updates weights
    in place without bumping their version (fused AdamW does that)."""
    layers = [getattr(module, n) for n in names]
    if x.shape[:-1].numel() <= SMALL_BATCH_TOKENS or any(type(layer) is not nn.Linear for layer in layers):
        return torch.cat([layer(x) for layer in layers], dim=-1)
    return F.linear(x, torch.cat([layer.weight for layer in layers]))


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token within its document: restarts at 0 where doc_ids changes."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    is_start = torch.ones_like(doc_ids, dtype=torch.bool)
    is_start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = torch.where(is_start, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start_idx


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        if cfg.qk_norm:  # named as in HF Qwen3 / OLMo-2
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.qk_norm = cfg.qk_norm

    def forward(self, x, cos, sin, mask, cache=None, layer=0):
        B, T, _ = x.shape
        qkv = fused_linear(x, self, ("q_proj", "k_proj", "v_proj"))
        q, k, v = qkv.split([self.n_heads * self.head_dim] + [self.n_kv_heads * self.head_dim] * 2, dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # the cache stores k, v and attends to every position it holds
            y = cache.attend(layer, q, k, v, mask)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))
        if self.n_kv_heads != self.n_heads:
            repeat = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        gate, up = fused_linear(x, self, ("gate_proj", "up_proj")).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache=None, layer=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embedding, the layers and the final norm: the body of the network, without the LM head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class Transformer(nn.Module):
    """The causal LM: `forward` -> logits, `loss` -> mean next-token loss, `decode_step` with a KV cache."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)  # attribute names as HF's: state-dict keys model.layers.N..., lm_head
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Normal(0, init_std); residual-output projections scaled by 1/sqrt(2 * n_layers) (GPT-2), or zero with
        zero_init_out_proj, so that every block starts as the identity (modded-nanogpt, nanochat)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, std / math.sqrt(2 * self.config.n_layers))
                if self.config.zero_init_out_proj:
                    p.zero_()  # drawn all the same: every other weight is the one the seed gives without the flag
            else:
                p.normal_(0.0, std)

    def forward(self, input_ids, doc_ids=None, positions=None):
        """Logits (B, T, vocab). doc_ids=None means one document per row; positions default to each
        token's place in its document."""
        return self.lm_head(self._packed_hidden(input_ids, doc_ids, positions))

    def loss(self, input_ids, targets, doc_ids=None):
        """Mean next-token cross-entropy against targets (B, T), IGNORE excluded, with or without autograd.

        The LM head runs inside the loss in chunks (fused_ce.py): the (B, T, vocab) logits never exist whole."""
        hidden = self._packed_hidden(input_ids, doc_ids)
        return linear_cross_entropy(hidden.flatten(0, 1), self.lm_head.weight, targets.flatten())

    def decode_step(self, input_ids, cache, positions=None, valid=None, last_only=False, select=None):
        """Logits of T new tokens per row that follow the cached ones: (B, T, vocab), (B, vocab) of the last
        with last_only, or (len(select), vocab) of the tokens at `select`, indices into the flattened (B * T).

        The step writes the new keys and values at the cache's next T slots, then advances the cache past
        them (`cache.advance`, its one mutation of the cache's length). positions (B, T): RoPE positions
        (default: the slots, right for rows without padding); valid (B, T): real tokens (False: left padding)."""
        B, T = input_ids.shape
        if positions is None:
            positions = (cache.length + torch.arange(T, device=input_ids.device)).expand(B, T)
        if valid is None:
            valid = torch.ones_like(input_ids, dtype=torch.bool)
        hidden = self._hidden(input_ids, positions, cache.append_mask(valid), cache)
        cache.advance(T)
        if select is not None:
            return self.lm_head(hidden.flatten(0, 1)[select])
        return self.lm_head(hidden[:, -1] if last_only else hidden)

    def _packed_hidden(self, input_ids, doc_ids=None, positions=None):
        """Final-norm hidden states of packed rows, attention confined to each document."""
        B, T = input_ids.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds model.max_seq_len={self.config.max_seq_len}")
        if doc_ids is None:
            mask = None  # plain causal
            if positions is None:
                positions = torch.arange(T, device=input_ids.device).expand(B, T)
        else:
            mask = attention_mask(doc_ids)
            if positions is None:
                positions = positions_from_doc_ids(doc_ids)
        return self._hidden(input_ids, positions, mask)

    def _hidden(self, input_ids, positions, mask, cache=None):
        """Final-norm hidden states (B, T, dim). mask: boolean (B, 1, T, keys), None for plain causal attention."""
        x = self.model.embed_tokens(input_ids)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        cos = self.rope_cos[positions][:, None].to(dtype)
        sin = self.rope_sin[positions][:, None].to(dtype)
        if mask is not None:  # additive, built once: SDPA would convert a boolean mask in every layer
            mask = torch.zeros(mask.shape, dtype=dtype, device=x.device).masked_fill_(~mask, float("-inf"))
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, cache, i)
        return self.model.norm(x)

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # a tied matrix is counted once
        if exclude_embedding and not self.config.tie_embeddings:
            n -= self.model.embed_tokens.weight.numel()
        return n

    def matmul_weights(self) -> int:
        """Weights a forward pass multiplies by: every parameter but the embedding lookup's (a tied matrix is the
        LM head). A subclass that skips a matrix (the reward model's LM head) leaves it out here."""
        return self.num_params(exclude_embedding=True)

    def flops_per_token(self, seq_len: int | None = None, frozen_weights: bool = False) -> float:
        """Training FLOPs per token: 6 per weight used in a matmul, plus attention scores and values.

        The embedding lookup is free (unless tied, when the matrix is also the LM head);
        attention counts 12 * layers * dim * T, the PaLM convention with the full T. With the
        weights frozen (LoRA) backward computes no weight gradients: 4 per weight, not 6.
        """
        T = seq_len or self.config.max_seq_len
        c = self.config
        per_weight = 4 if frozen_weights else 6
        return per_weight * self.matmul_weights() + 12 * c.n_layers * c.dim * T
