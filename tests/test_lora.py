"""LoRA: PEFT's init, scaling and merge semantics, a frozen base, and adapters that peft itself loads."""

import copy
import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import run_codelm

from codelm.checkpoint import load_model, load_weights, save_checkpoint, save_model
from codelm.checkpoint.adapter import load_adapter, read_adapter, save_adapter
from codelm.config import Config, LoraConfig, ModelConfig, load_config, to_toml
from codelm.errors import UserError
from codelm.interop.hf import export_hf
from codelm.model.llama import Transformer
from codelm.model.lora import (
    LoraLinear,
    LoraSpec,
    adapters_disabled,
    apply_lora,
    lora_layers,
    lora_parameters,
    merge_and_unload,
    merge_lora,
    unmerge_lora,
)
from codelm.tokenizer import train_tokenizer

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SPEC = LoraSpec(r=4, alpha=8, targets=ALL)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([Path(json.__file__).read_text(), Path(json.decoder.__file__).read_text()], vocab_size=512)


def tiny(vocab_size: int = 512, seed: int = 0, **kwargs) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                   max_seq_len=128, **kwargs)).eval()


def adapted(model: Transformer, spec: LoraSpec = SPEC, seed: int = 1) -> Transformer:
    """The model with adapters whose B is random, so they change the outputs."""
    apply_lora(model, spec)
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.weight.normal_(0.0, 0.05)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(ids).float()


def ids_of(n: int = 40, vocab_size: int = 512, seed: int = 0):
    return torch.randint(0, vocab_size, (2, n), generator=torch.Generator().manual_seed(seed))


def test_fresh_adapter_is_the_base_exactly_and_A_is_kaiming_uniform():
    model = tiny()
    ids = ids_of()  # <= 64 tokens: q/k/v run one by one in both models, so the sums are the same
    before = logits(model, ids)
    names = apply_lora(model, SPEC)
    assert len(names) == 2 * len(ALL) and torch.equal(logits(model, ids), before)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LoraLinear) and isinstance(q, torch.nn.Linear)
    bound = 1 / math.sqrt(q.in_features)  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert q.lora_A.weight.abs().max() <= bound and q.lora_A.weight.abs().max() > 0.5 * bound
    assert not q.lora_B.weight.any() and q.lora_A.weight.shape == (4, 64) and q.lora_B.weight.shape == (64, 4)
    keys = model.state_dict().keys()
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.lora_A.weight",
            "model.layers.0.mlp.down_proj.lora_B.weight"} <= keys


def test_scale_is_alpha_over_r_or_over_sqrt_r_with_rslora():
    assert LoraSpec(r=16, alpha=32, targets=ALL).scale == 2.0
    assert LoraSpec(r=16, alpha=32, targets=ALL, rslora=True).scale == 8.0
    for rslora, scale in [(False, 2.0), (True, 8.0)]:
        model = adapted(tiny(), LoraSpec(r=16, alpha=32, targets=("o_proj",), rslora=rslora))
        layer = model.model.layers[0].self_attn.o_proj
        x = torch.randn(3, 64)
        with torch.no_grad():
            expected = x @ layer.weight.T + scale * (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
            assert torch.allclose(layer(x), expected, atol=1e-6)


def test_only_adapters_train_and_a_step_leaves_the_base_unchanged():
    model = tiny()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraSpec(r=4, alpha=8, targets=("q_proj", "v_proj"), dropout=0.1))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"model.layers.{i}.self_attn.{m}.lora_{x}.weight"
                         for i in range(2) for m in ("q_proj", "v_proj") for x in "AB"}
    assert {id(p) for p in lora_parameters(model)} == {id(p) for p in model.parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    model.train()
    ids = ids_of(100)
    for _ in range(2):
        optimizer.zero_grad()
        model.loss(ids[:, :-1], ids[:, 1:]).backward()
        optimizer.step()
    for name, tensor in base.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert model.model.layers[1].self_attn.v_proj.lora_B.weight.any()


def test_merge_unmerge_round_trip_fp32():
    model = adapted(tiny())
    ids = ids_of(100)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    unmerged = logits(model, ids)
    merge_lora(model)
    assert all(m.merged for _, m in lora_layers(model))
    assert (logits(model, ids) - unmerged).abs().max() < 1e-5  # measured 2.4e-7 (logits up to ~0.7)
    unmerge_lora(model)
    assert (logits(model, ids) - unmerged).abs().max() < 1e-5
    for name, tensor in model.state_dict().items():
        assert (tensor - weights[name]).abs().max() < 1e-6, name  # measured 7.5e-9
    plain = merge_and_unload(model)
    assert not lora_layers(plain) and all(type(m) is not LoraLinear for m in plain.modules())
    assert set(plain.state_dict()) == set(tiny().state_dict())
    assert (logits(plain, ids) - unmerged).abs().max() < 1e-5


def test_adapters_disabled_gives_the_base_and_then_the_adapted_model_again():
    base = tiny()
    ids = ids_of()
    expected = logits(base, ids)
    model = adapted(copy.deepcopy(base))
    adapted_logits = logits(model, ids)
    assert (adapted_logits - expected).abs().max() > 1e-3
    with adapters_disabled(model):
        assert torch.equal(logits(model, ids), expected)  # DPO's and RL's reference, without a copy of the base
    assert torch.equal(logits(model, ids), adapted_logits)
    merge_lora(model)
    with pytest.raises(ValueError, match="needs unmerged adapters"):
        with adapters_disabled(model):
            pass


def test_merge_in_bf16_adds_no_error_beyond_bf16_itself():
    """The delta is computed in fp32 and rounded once into the bf16 weight, so merged bf16 logits are as close to
    the fp32 ones as unmerged bf16 logits are (measured: 0.049-0.056 vs 0.052-0.063, logits up to ~3.6)."""
    model = adapted(tiny(init_std=0.1))  # larger weights: logits of a few units, where bf16 rounding shows
    ids = ids_of(100)
    reference = logits(model, ids)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    unmerged = logits(bf16, ids)
    merge_lora(bf16)
    merged = logits(bf16, ids)
    bf16_error = (unmerged - reference).abs().max()
    assert (merged - reference).abs().max() <= 1.5 * bf16_error
    assert (merged - unmerged).abs().max() < 0.15  # measured 0.0625
    unmerge_lora(bf16)
    assert (logits(bf16, ids) - unmerged).abs().max() < 0.15  # measured 0.055: two roundings of the weights


def test_non_finite_merge_is_refused_and_changes_nothing():
    model = adapted(tiny())
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.lora_B.weight[0, 0] = float("inf")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=r"non-finite weights in \['model.layers.1.mlp.up_proj'\]"):
        merge_lora(model)
    assert not any(m.merged for _, m in lora_layers(model))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    fp16 = adapted(tiny()).half()  # a delta finite in fp32 (4 * 300 * 300 * 2) beyond fp16's 65504 once cast
    with torch.no_grad():
        fp16.model.layers[0].self_attn.q_proj.lora_A.weight.fill_(300.0)
        fp16.model.layers[0].self_attn.q_proj.lora_B.weight.fill_(300.0)
    with pytest.raises(UserError, match=r"\['model.layers.0.self_attn.q_proj'\]"):
        merge_lora(fp16)


@pytest.mark.parametrize("spec, message", [
    ({"targets": ("q_proj", "qproj")}, r"target\(s\) \['qproj'\] match no layer"),
    ({"targets": ("lm_head",)}, "cannot target lm_head"),
    ({"targets": ("mlp",)}, r"bias-free Linear layers; not one: \['model.layers.0.mlp'"),
    ({"targets": ("embed_tokens",)}, r"not one: \['model.embed_tokens'"),
    ({"r": 0}, "rank r must be >= 1"),
    ({"alpha": 0}, "alpha must be > 0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_bad_targets_and_specs_are_one_line_errors(spec, message):
    model = tiny()
    with pytest.raises(UserError, match=message):
        apply_lora(model, LoraSpec(**({"r": 4, "alpha": 8, "targets": ALL} | spec)))
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen by a refused spec


def test_targets_match_a_name_or_a_dotted_suffix_and_lora_is_not_applied_twice():
    model = tiny()
    names = apply_lora(model, LoraSpec(r=2, alpha=2, targets=("self_attn.q_proj", "down_proj")))
    assert names == [f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "mlp.down_proj")]
    with pytest.raises(UserError, match="already has LoRA adapters"):
        apply_lora(model, SPEC)


def test_lora_config_section_makes_the_spec_and_round_trips(tmp_path):
    cfg = Config()
    assert cfg.lora == LoraConfig() and cfg.lora.r == 0  # off unless asked for
    assert LoraSpec.from_config(LoraConfig(r=8)) == LoraSpec(8, 16.0, ALL)
    path = tmp_path / "c.toml"
    path.write_text(to_toml(load_config(None, ["lora.r=8", "lora.targets='q_proj, v_proj'", "lora.rslora=true"])))
    loaded = load_config(path)
    assert LoraSpec.from_config(loaded.lora) == LoraSpec(8, 16, ("q_proj", "v_proj"), rslora=True)


@pytest.fixture
def exported(tok, tmp_path):
    """A base checkpoint, its HF export, and the base with random adapters."""
    base = tiny(tok.vocab_size)
    ckpt = save_model(tmp_path / "base", base, tok)
    hf_dir = export_hf(ckpt, tmp_path / "hf")
    lora = adapted(copy.deepcopy(base), LoraSpec(r=4, alpha=8, targets=ALL, rslora=True))
    return ckpt, hf_dir, lora


def test_adapter_loads_with_peft_onto_the_hf_export_with_the_same_logits(exported, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (test extra)")
    peft = pytest.importorskip("peft", reason="peft is not installed (test extra)")
    ckpt, hf_dir, lora = exported
    save_adapter(tmp_path / "adapter", lora, ckpt)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8 and config["use_rslora"]
    assert config["target_modules"] == sorted(ALL) and config["base_model_name_or_path"] == str(ckpt)
    stored = safetensors.torch.load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in stored and len(stored) == 2 * 2 * 7
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids = ids_of(100, lora.config.vocab_size)
    with torch.no_grad():
        their_logits = theirs(ids).logits.float()
    assert (their_logits - logits(lora, ids)).abs().max() < 1e-4  # measured 2.7e-7; the adapter moves them by 0.72
    back = tiny(lora.config.vocab_size, seed=5)
    back.load_state_dict(lora.state_dict(), strict=False)  # the base weights; the adapters come from the files
    assert load_adapter(back, tmp_path / "adapter") == lora_layers(lora)[0][1].spec
    for name, tensor in lora.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_an_adapter_peft_saved_loads_into_codelm_with_the_same_logits(exported, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (test extra)")
    peft = pytest.importorskip("peft", reason="peft is not installed (test extra)")
    ckpt, hf_dir, _ = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=2, lora_alpha=6, target_modules=["v_proj", "up_proj"],
                                                     task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    theirs.save_pretrained(tmp_path / "theirs")
    assert read_adapter(tmp_path / "theirs").spec == LoraSpec(2, 6, ("v_proj", "up_proj"))
    ours, _, _ = load_model(ckpt)
    load_adapter(ours, tmp_path / "theirs")
    ids = ids_of(100, ours.config.vocab_size)
    with torch.no_grad():
        their_logits = theirs.eval()(ids).logits.float()
    assert (their_logits - logits(ours, ids)).abs().max() < 1e-4
    config = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    (tmp_path / "theirs" / "adapter_config.json").write_text(json.dumps(config | {"use_dora": True}))
    with pytest.raises(UserError, match=r"does not implement: \['use_dora'\]"):
        read_adapter(tmp_path / "theirs")


def test_lora_checkpoint_holds_the_adapter_resumes_and_loads(exported, tok, tmp_path):
    ckpt, _, lora = exported
    (tmp_path / "tok.json").write_text(tok.hf.to_str())
    optimizer_state = torch.optim.AdamW(lora_parameters(lora), lr=1e-3).state_dict()
    with pytest.raises(ValueError, match="needs base_model"):
        save_checkpoint(tmp_path / "run" / "checkpoints", 5, lora, tmp_path / "tok.json", {}, optimizer_state)
    step = save_checkpoint(tmp_path / "run" / "checkpoints", 5, lora, tmp_path / "tok.json", {"max_steps": 9},
                           optimizer_state, base_model=ckpt)
    assert sorted(p.name for p in step.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                       "optimizer.pt", "state.json", "tokenizer.json"]
    assert read_adapter(step).base_model == str(ckpt.resolve())
    ids = ids_of(100, lora.config.vocab_size)
    loaded, loaded_tok, path = load_model(tmp_path / "run")  # a run directory resolves to its latest checkpoint
    assert path == step and loaded_tok.hf.to_str() == tok.hf.to_str() and not loaded.training
    assert torch.equal(logits(loaded, ids), logits(lora, ids))
    resumed = tiny(lora.config.vocab_size, seed=7)  # resume: build the model, apply LoRA, then restore everything
    apply_lora(resumed, lora_layers(lora)[0][1].spec)
    load_weights(resumed, step)
    for name, tensor in lora.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    other = tiny(lora.config.vocab_size)
    apply_lora(other, SPEC)
    with pytest.raises(UserError, match="holds LoRA adapters"):
        load_weights(other, step)


def test_an_ordinary_checkpoint_is_written_as_before(tok, tmp_path):
    (tmp_path / "tok.json").write_text(tok.hf.to_str())
    model = tiny(tok.vocab_size)
    step = save_checkpoint(tmp_path / "ckpts", 1, model, tmp_path / "tok.json", {},
                           torch.optim.AdamW(model.parameters()).state_dict())
    assert sorted(p.name for p in step.iterdir()) == ["config.json", "model.safetensors", "optimizer.pt",
                                                       "state.json", "tokenizer.json"]
    assert set(safetensors.torch.load_file(step / "model.safetensors")) == set(model.state_dict())


def test_export_merged_or_as_base_plus_adapter(exported, tok, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (test extra)")
    peft = pytest.importorskip("peft", reason="peft is not installed (test extra)")
    ckpt, _, lora = exported
    (tmp_path / "tok.json").write_text(tok.hf.to_str())
    step = save_checkpoint(tmp_path / "ckpts", 3, lora, tmp_path / "tok.json", {}, base_model=ckpt)
    ids = ids_of(100, lora.config.vocab_size)
    expected = logits(lora, ids)
    merged = export_hf(step, tmp_path / "merged", merge_lora=True)
    assert not (merged / "adapter").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (hf(ids).logits.float() - expected).abs().max() < 1e-4
    split = export_hf(step, tmp_path / "split")
    assert json.loads((split / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        split.resolve())
    base_hf = transformers.AutoModelForCausalLM.from_pretrained(split, dtype=torch.float32)
    with torch.no_grad():
        assert (base_hf.eval()(ids).logits.float() - logits(tiny(lora.config.vocab_size), ids)).abs().max() < 1e-4
        their = peft.PeftModel.from_pretrained(base_hf, split / "adapter").eval()(ids).logits.float()
    assert (their - expected).abs().max() < 1e-4
    with pytest.raises(UserError, match="holds no LoRA adapter"):
        export_hf(ckpt, tmp_path / "nothing", merge_lora=True)


@pytest.mark.slow
def test_cli_export_merge_lora_and_generate_from_an_adapter(exported, tok, tmp_path):
    ckpt, _, lora = exported
    (tmp_path / "tok.json").write_text(tok.hf.to_str())
    step = save_checkpoint(tmp_path / "ckpts", 3, lora, tmp_path / "tok.json", {}, base_model=ckpt)
    run_codelm("export", "hf", "--checkpoint", step, "--out", tmp_path / "hf", "--merge-lora")
    assert (tmp_path / "hf" / "model.safetensors").is_file() and not (tmp_path / "hf" / "adapter").exists()
    out = run_codelm("generate", "--checkpoint", step, "--prompt", "def f(x):", "--max-new-tokens", "4").stdout
    assert "def f(x):" in out
    bad = run_codelm("export", "hf", "--checkpoint", ckpt, "--out", tmp_path / "x", "--merge-lora", check=False)
    assert bad.returncode == 2 and "holds no LoRA adapter" in bad.stderr


@pytest.mark.parametrize("command", ["sft", "distill", "rl", "dpo"])
def test_lora_flags_reach_every_recipes_config(command):
    from codelm.cli import build_parser
    from codelm.cli.options import resolve

    args = build_parser().parse_args([command, "--init-from", "ckpt", "--lora-r", "16", "--lora-alpha", "32",
                                      "--lora-targets", "q_proj,v_proj", "--rslora"])
    cfg = resolve(args)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.targets, cfg.lora.rslora) == (16, 32.0, "q_proj,v_proj", True)
    plain = resolve(build_parser().parse_args([command, "--init-from", "ckpt"]))
    assert plain.lora == LoraConfig()  # flags left out keep the config's values
