"""Parameter counts and FLOPs per token against hand-computed values; the published laws' optimum; `scaling plan`."""

import math

import pytest
from scipy.optimize import minimize_scalar

from codelm.cli import main
from codelm.config import ModelConfig
from codelm.model.llama import Transformer
from codelm.scaling.flops import counts
from codelm.scaling.laws import PUBLISHED, load_law

# vocabulary 10, width 8, 2 layers, 2 query heads of 4 and 1 key/value head, ffn 16, context 4
TINY = ModelConfig(vocab_size=10, dim=8, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=16, max_seq_len=4)


def cli_error(capsys, *args) -> str:
    """The one line a user error prints, after exit status 2."""
    with pytest.raises(SystemExit) as exit:
        main(list(args))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(lines) == 1, lines
    return lines[0]


def test_counts_by_hand():
    # per layer: q 8x8 = 64, k and v 8x4 = 32 each, o 8x8 = 64 -> 192; gate, up, down 8x16 = 128 each -> 384;
    # two norms of 8. Layers 2 x (192 + 384 + 16) = 1184, final norm 8: 1192. Embedding and head 10 x 8 = 80 each.
    n = counts(TINY, seq_len=4)
    assert (n.non_embedding, n.total, n.matmul) == (1192, 1192 + 80 + 80, 2 * (192 + 384) + 80)
    # per token and layer, forward: scores q.k over 4 positions 2 x 4 x 8 = 64, values 64; x 2 layers; x 3 training
    assert n.attention_flops == 3 * 2 * (64 + 64) == 768
    assert n.flops_per_token == 6 * 1232 + 768 == 8160


def test_tied_embeddings_and_qk_norm_by_hand():
    n = counts(ModelConfig(**{**TINY.__dict__, "tie_embeddings": True, "qk_norm": True}), seq_len=4)
    # QK-norm adds two norms of the head size (4) per layer; the tied matrix is counted once but still multiplies
    assert (n.non_embedding, n.total, n.matmul) == (1192 + 2 * 8, 1192 + 16 + 80, 1232)


@pytest.mark.parametrize("variant", [{}, {"tie_embeddings": True, "qk_norm": True}, {"n_kv_heads": 2}])
def test_counts_agree_with_the_model(variant):
    cfg = ModelConfig(**{**TINY.__dict__, **variant})
    n, model = counts(cfg, seq_len=4), Transformer(cfg)
    assert n.total == model.num_params()
    # the trainer's MFU count (Transformer.flops_per_token) takes 6 FLOPs for every weight but the embedding:
    # the same as ours plus the norms' weights, which multiply elementwise
    norms = sum(p.numel() for name, p in model.named_parameters() if name.endswith("norm.weight"))
    assert model.flops_per_token(4) == n.flops_per_token + 6 * norms


@pytest.mark.parametrize("name", sorted(PUBLISHED))
@pytest.mark.parametrize("flops", [1e18, 5.76e23])
def test_closed_form_optimum_minimises_the_law_along_the_isoflop(name, flops):
    law = PUBLISHED[name]
    n, d = law.optimal(flops)
    assert 6 * n * d == pytest.approx(flops)
    numeric = minimize_scalar(lambda x: law.loss(math.exp(x), flops / 6 / math.exp(x)), bracket=(10, 30),
                              options={"xtol": 1e-10})
    assert n == pytest.approx(math.exp(numeric.x), rel=1e-4)


def test_besiroglu_refit_gives_about_20_tokens_per_parameter():
    n, d = PUBLISHED["besiroglu"].optimal(5.76e23)  # Chinchilla's budget
    assert 15 < d / n < 25


def test_plan_prints_every_convention_and_the_optimum(capsys):
    main(["scaling", "plan", "--flops", "1e15", "--law", "besiroglu"])
    out = capsys.readouterr().out
    for convention in ("| total |", "| non_embedding |", "| matmul |"):
        assert convention in out
    n, d = PUBLISHED["besiroglu"].optimal(1e15)
    assert f"N* = {n:.4g} parameters, D* = {d:.4g} tokens" in out


def test_plan_reads_a_fit_file_and_names_a_bad_one(tmp_path, capsys):
    law = tmp_path / "law.json"
    law.write_text('{"E": 1.0, "A": 100.0, "B": 100.0, "alpha": 0.5, "beta": 0.5, "name": "mine"}')
    assert load_law(str(law)).optimal(6e12) == pytest.approx((1e6, 1e6))
    law.write_text('{"E": 1.0}')
    assert f"--law {law}: not a law file" in cli_error(capsys, "scaling", "plan", "--flops", "1e15", "--law", str(law))
    assert "neither chinchilla nor besiroglu" in cli_error(capsys, "scaling", "plan", "--flops", "1e15", "--law", "x")
