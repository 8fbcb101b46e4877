"""`codelm scaling plan`: what a FLOPs budget buys a config, and the split a scaling law calls compute-optimal."""

from codelm.config import Config
from codelm.scaling.flops import CONVENTIONS, FLOPS_FORMULA, counts
from codelm.scaling.laws import Law


def plan_text(cfg: Config, flops: float, law: Law) -> str:
    m, seq_len = cfg.model, cfg.data.seq_len
    n = counts(m, seq_len)
    exact = n.flops_per_token
    lines = [f"model: {m.n_layers} layers x {m.dim}, {m.n_heads} heads ({m.n_kv_heads} key/value), ffn {m.hidden_dim}, "
             f"vocabulary {m.vocab_size}, context {seq_len}, tied embeddings {m.tie_embeddings}", "",
             "| parameters counted as | N | 6N FLOPs/token | exact / 6N |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {n.params(name):,} | {6 * n.params(name):,} | {exact / (6 * n.params(name)):.3f} |"
              for name in CONVENTIONS]
    d = flops / exact
    lines += ["", f"exact training FLOPs per token: {exact:,} = 6 x {n.matmul:,} matmul parameters + "
              f"{n.attention_flops:,} attention ({100 * n.attention_flops / exact:.1f}%)",
              f"({FLOPS_FORMULA})", "",
              f"budget {flops:.3g} FLOPs: this model trains on {d:.4g} tokens, {d / n.total:.3g} per parameter "
              f"(total); at 6 N_total D it would be {flops / (6 * n.total):.4g} tokens"]
    n_opt, d_opt = law.optimal(flops)
    lines += ["", f"compute-optimal under {law.describe()}, with C = 6ND:",
              f"N* = {n_opt:.4g} parameters, D* = {d_opt:.4g} tokens, {d_opt / n_opt:.3g} tokens per parameter, "
              f"predicted loss {law.loss(n_opt, d_opt):.4g} (nats per token on the law's own corpus and tokenizer)"]
    return "\n".join(lines)
