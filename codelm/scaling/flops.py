"""Parameter counts under each convention, and the exact training FLOPs per token of a config.

Kaplan et al. (2020) count non-embedding parameters, Chinchilla (Hoffmann et al.
2022) counts all of them; at small sizes the embedding and the LM head are most
of the model, and Pearce & Song (2024) show that this choice alone moves the
fitted exponent from Chinchilla's ~0.5 toward Kaplan's ~0.73. So every count is
kept and named, and C = 6ND is shown beside the FLOPs the model really spends.
"""

from dataclasses import dataclass

from codelm.config import ModelConfig
from codelm.train.sizing import non_embedding_params

CONVENTIONS = {
    "total": "every parameter, embedding and LM head included, a tied matrix once (Chinchilla)",
    "non_embedding": "without the token embedding and the LM head (Kaplan); layers and norms",
    "matmul": "the weights multiplied in matmuls: the layers' projections and the LM head, no norms, no embedding "
              "lookup; exact FLOPs = 6 x these + attention",
}
FLOPS_FORMULA = ("training FLOPs per token = 3 x forward (backward costs twice the forward) = 6 x matmul parameters "
                 "+ 12 x layers x seq_len x heads x head_dim (attention scores and values over the full context, "
                 "as the masked kernel computes them); a multiply-add is 2 FLOPs; not counted: the embedding "
                 "lookup and the elementwise work (norms, RoPE, softmax, activations: a few FLOPs per value "
                 "against the matmuls' ~2 x width)")


@dataclass(frozen=True)
class Counts:
    """A config's parameters under each convention and its training FLOPs per token at one context length."""

    total: int
    non_embedding: int
    matmul: int
    attention_flops: int  # training FLOPs per token spent on attention scores and values

    @property
    def flops_per_token(self) -> int:
        return 6 * self.matmul + self.attention_flops

    def params(self, convention: str) -> int:
        return getattr(self, convention)


def counts(c: ModelConfig, seq_len: int) -> Counts:
    projections = c.dim * c.head_dim * (2 * c.n_heads + 2 * c.n_kv_heads) + 3 * c.dim * c.hidden_dim
    embedding = c.vocab_size * c.dim
    return Counts(total=non_embedding_params(c) + embedding * (1 if c.tie_embeddings else 2),
                  non_embedding=non_embedding_params(c),
                  matmul=c.n_layers * projections + embedding,
                  attention_flops=12 * c.n_layers * seq_len * c.n_heads * c.head_dim)
