"""SFT: assistant-only masks through the model's own chat template, rows packed without cropping, clear errors
for bad data, and a fine-tuning run that resumes exactly."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import run_codelm, sft_config
from test_training import losses

from codelm.chat import encode_chat, encode_conversation
from codelm.checkpoint import latest_checkpoint, load_model
from codelm.data.loader import IGNORE
from codelm.data.sft import (
    Example,
    PackedExamples,
    encode_examples,
    pack,
    read_conversations,
    split_held_out,
)
from codelm.errors import UserError
from codelm.inference.engine import Engine
from codelm.model.lora import lora_spec
from codelm.train.sft import sft

CHAT = [{"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Add one to x."},
        {"role": "assistant", "content": "def f(x):\n    return x + 1"},
        {"role": "user", "content": "Now two."},
        {"role": "assistant", "content": "def f(x):\n    return x + 2"}]


CHATML_WITH_SYSTEM = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nBe brief.<|im_end|>\n{% endif %}"
                      "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def learned_text(tok, messages, template):
    ids, learn = encode_conversation(tok, messages, template)
    return tok.decode([i for i, on in zip(ids, learn) if on]), ids


def test_chatml_masks_only_the_assistant_replies_and_their_end_of_turn(code_tok):
    text, ids = learned_text(code_tok, CHAT, None)
    assert text == "def f(x):\n    return x + 1<|im_end|>def f(x):\n    return x + 2<|im_end|>"
    prompt = encode_chat(code_tok, CHAT[:2], None)
    assert ids[: len(prompt)] == prompt  # training renders a chat exactly as the engine prompts with it


def test_smollm2_template_masks_the_same_way(smollm2_tokenizer_fields):
    from codelm.interop.gguf import tokenizer_from_metadata
    from codelm.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_from_metadata(smollm2_tokenizer_fields), required=())
    template = smollm2_tokenizer_fields["tokenizer.chat_template"]
    text, ids = learned_text(tok, CHAT[1:], template)  # no system message: the template adds its own
    assert text == "def f(x):\n    return x + 1<|im_end|>def f(x):\n    return x + 2<|im_end|>"
    assert "You are a helpful AI assistant" in tok.decode(ids)


def test_a_template_with_no_end_of_turn_token_is_refused(code_tok):
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(UserError, match="ends an assistant turn without a special token"):
        encode_conversation(code_tok, CHAT, plain)


def test_examples_with_nothing_or_everything_to_learn_are_errors_naming_them(code_tok):
    with pytest.raises(UserError, match="a.jsonl:7: the chat template left no assistant token"):
        encode_examples([("a.jsonl:7", [{"role": "user", "content": "hi"}])], code_tok, None)
    only_replies = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    with pytest.raises(UserError, match="a.jsonl:2: every token is marked as the assistant's"):
        encode_examples([("a.jsonl:2", [{"role": "assistant", "content": "x = 1"}])], code_tok, only_replies)


@pytest.mark.parametrize("line, message", [
    ("{not json", "data.jsonl:3 is not valid JSON"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}', "data.jsonl:3: message 0 has role 'robot'"),
    ('{"messages": [{"role": "user"}]}', "data.jsonl:3: message 0 (user) has no text 'content'"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}',
     "data.jsonl:3: message 1 is an empty assistant turn"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "data.jsonl:3: no assistant message"),
    ('{"question": "hi", "answer": "yes"}', "data.jsonl:3: expected 'messages', 'prompt'/'completion'"),
])
def test_bad_rows_are_named_by_file_and_line(tmp_path, line, message):
    good = json.dumps({"prompt": "p", "completion": "c"})
    path = tmp_path / "data.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("str", "")):
        read_conversations(path)


def test_the_three_row_shapes_become_the_same_conversation(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                          {"role": "assistant", "content": "A"}]},
            {"prompt": "Q", "completion": "A", "system": "S"},
            {"instruction": "Q", "response": "A", "system": "S"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    conversations = [messages for _, messages in read_conversations(path)]
    assert conversations[0] == conversations[1] == conversations[2]


def test_best_fit_packing_fills_the_fullest_row_that_has_room():
    # 6 opens a row (4 left), 5 another (5 left); 4 fits both and takes the fuller; 3 and 2 fill the second
    assert pack([6, 5, 4, 3, 2, 20], capacity=10) == [[0, 2], [1, 3, 4]]  # 20 does not fit: left out
    assert pack([3, 3, 3, 1], capacity=10) == [[0, 1, 2, 3]]


def test_packed_rows_hold_whole_examples_and_never_crop_one():
    rng = np.random.default_rng(0)
    examples = []
    for i in range(40):
        n = int(rng.integers(4, 30)) if i != 7 else 50  # example 7 is longer than a row
        learn = np.ones(n, dtype=bool)
        learn[0] = False  # a prompt token first, as a chat template always renders
        examples.append(Example(np.full(n, 100 + i, dtype=np.int64), learn, f"x:{i}"))
    stream = PackedExamples(examples, seq_len=32, batch_rows=4, pad_id=0, shuffle=False, passes=1)
    assert stream.dropped == 1
    counts = np.zeros(len(examples), dtype=int)
    for batch in stream:
        for inputs, targets, docs in zip(batch.inputs, batch.targets, batch.doc_ids):
            assert (targets[:-1][docs[1:] != docs[:-1]] == IGNORE).all()  # never predict the next example
            for d in docs.unique():  # one example per document id, its tokens contiguous
                where = (docs == d).nonzero().flatten()
                assert where.diff().eq(1).all() and len(set(inputs[where].tolist())) == 1
            row = inputs.tolist() + ([int(targets[-1])] if targets[-1] != IGNORE else [])  # the row's last token
            for token in row:
                if token:
                    counts[token - 100] += 1
    assert counts.tolist() == [len(e.ids) if i != 7 else 0 for i, e in enumerate(examples)]


def test_held_out_split_is_stable_and_follows_the_tokens():
    examples = [Example(np.array([i, i + 1]), np.array([False, True]), f"x:{i}") for i in range(400)]
    train, held = split_held_out(examples, 0.1)
    assert 20 < len(held) < 60 and len(train) + len(held) == 400
    again_train, again_held = split_held_out(list(reversed(examples)), 0.1)
    assert {e.where for e in again_held} == {e.where for e in held}


def test_sft_learns_the_replies_and_resumes_exactly(tiny_chat_model, tmp_path):
    ckpt, data = tiny_chat_model
    straight = tmp_path / "straight"
    result = sft(sft_config(ckpt, data, straight, max_steps=8, ckpt_every=4, keep_checkpoints=3))
    expected = losses(straight)
    assert sorted(expected) == list(range(1, 9)) and expected[8] < expected[1]
    assert result["loss"] < expected[1]  # the held-out replies too

    resumed = tmp_path / "resumed"  # as if the run had stopped right after its step-4 checkpoint
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000008")
    (resumed / "checkpoints" / "latest").write_text("step_000004")
    sft(sft_config(ckpt, data, resumed, max_steps=8, ckpt_every=4, keep_checkpoints=3), resume=True)
    assert losses(resumed) == expected


def test_sft_cli_errors_are_one_line(tiny_chat_model, tmp_path):
    ckpt, data = tiny_chat_model
    proc = run_codelm("sft", "--data", data, "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "give --init-from" in proc.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    proc = run_codelm("sft", "--init-from", ckpt, "--data", broken, "--out", tmp_path / "y", check=False)
    assert proc.returncode == 2 and f"{broken}:2: expected 'messages'" in proc.stderr
    assert not (tmp_path / "y").exists()  # nothing written


def test_lora_sft_saves_only_adapters_that_load_onto_the_base(tiny_chat_model, tmp_path):
    ckpt, data = tiny_chat_model
    run = tmp_path / "lora"
    cfg = sft_config(ckpt, data, run, max_steps=6)
    cfg.lora.r, cfg.lora.alpha, cfg.lora.targets = 4, 8.0, "q_proj,v_proj,down_proj"
    cfg.optim.lr, cfg.optim.warmup_steps = 3e-2, 1  # adapters start at zero: they need a higher rate
    sft(cfg)
    steps = losses(run)
    assert steps[6] < steps[1]
    saved = latest_checkpoint(run / "checkpoints")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in saved.iterdir()}
    assert not (saved / "model.safetensors").exists()
    tuned, _, _ = load_model(run)
    base, _, _ = load_model(ckpt)
    ids = torch.arange(1, 20)[None]
    with torch.no_grad():
        assert not torch.allclose(tuned(ids), base(ids))  # the adapters changed the model
    assert torch.equal(tuned.model.embed_tokens.weight, base.model.embed_tokens.weight)  # the base did not
    engine = Engine.from_checkpoint(run, dtype="fp32")  # inference merges the adapters into the base
    assert lora_spec(engine.model) is None
    with torch.no_grad():
        assert (engine.model(ids) - tuned(ids)).abs().max() < 1e-5


def test_full_sft_keeps_an_imported_models_chat_template_and_stop_tokens(tiny_chat_model, tmp_path, code_tok):
    ckpt, data = tiny_chat_model
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(config | {"eos_token_id": 7, "codelm_prefix_ids": []}))
    template = CHATML_WITH_SYSTEM
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    run = tmp_path / "full"
    sft(sft_config(ckpt, data, run, max_steps=2))
    _, tok, saved = load_model(run)
    assert tok.chat_template == template and 7 in tok.stop_ids and tok.prefix_ids == []


@pytest.mark.slow
def test_sft_cli_trains_then_asks_humaneval_as_chats(tiny_chat_model, tmp_path):
    ckpt, data = tiny_chat_model
    out = tmp_path / "run"
    proc = run_codelm("sft", "--init-from", ckpt, "--data", data, "--out", out,  # rows: the model's 128 tokens
                      "--set", "train.max_steps=2", "--set", "train.micro_batch=2", "--set", "train.batch_tokens=256",
                      "--humaneval", "3")
    assert "sft: 60 examples" in proc.stdout and "defines" not in proc.stderr
    assert "data.seq_len = 128: the checkpoint's context (128 tokens)" in proc.stdout
    written = (out / "config.toml").read_text()  # the sections sft read, replayable with --config
    assert "seq_len = 128" in written and "[sft]" in written and "[model]" not in written and "[rl]" not in written
    too_long = run_codelm("sft", "--init-from", ckpt, "--data", data, "--out", tmp_path / "long",
                          "--set", "data.seq_len=512", check=False)
    assert too_long.returncode == 2 and "data.seq_len=512 is longer than the model's context (128" in too_long.stderr
    results = json.loads((out / "eval" / "results.json").read_text())["tasks"]["humaneval"]
    assert results["problems"] == 3 and results["prompting"] == "chat" and results["defines_entry_point"] is not None
