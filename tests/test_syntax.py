"""The Python-syntax constraint: where the checker sends a sequence back, that the engine's rewound cache
gives what a fresh forward gives, and that constrained samples parse where unconstrained ones do not."""

import json

import httpx2 as httpx
import pytest
import torch
from conftest import run_codelm
from serve_live import LiveServer, tiny_checkpoint

from codelm.checkpoint import load_model
from codelm.config import EvalConfig, SamplingParams
from codelm.errors import UserError
from codelm.inference.engine import Engine
from codelm.inference.syntax import RETRIES, PythonSyntax, syntax_error
from codelm.tasks import procedural

PROMPT = "def f(x):\n"


def feed(checker, tok, text: str):
    """Push `text`'s tokens one at a time; (tokens, the first Backtrack or None)."""
    tokens = []
    for t in tok.encode(text):
        tokens.append(t)
        back = checker.after(tokens, 1, None)
        if back is not None:
            return tokens, back
    return tokens, None


def held(tok, tokens: list[int], keep: int) -> str:
    """The text of token `keep` of a completion."""
    return tok.decode(tokens[:keep + 1])[len(tok.decode(tokens[:keep])):]


def test_the_checker_blames_the_token_the_compiler_names(code_tok):
    syntax = PythonSyntax(code_tok, PythonSyntax.line_ends(code_tok))
    tokens, back = feed(syntax.checker(PROMPT), code_tok, "    y = (x,\n        2)\n    return y +\n    z\n")
    assert back is not None and code_tok.decode(tokens).endswith("return y +\n")
    assert "\n" in held(code_tok, tokens, back.keep) and back.ban == tokens[back.keep]  # the line ended too early
    checker = syntax.checker(PROMPT)
    text = "    if x:\n    return 1\n"
    tokens, back = feed(checker, code_tok, text)
    indent = text.index("return") - 1  # the line's last indentation character is to blame
    assert back is not None and len(code_tok.decode(tokens[:back.keep])) <= indent
    assert len(code_tok.decode(tokens[:back.keep + 1])) > indent
    assert checker.banned(back.keep) == {back.ban} and checker.banned(back.keep + 1) == set()
    checker = syntax.checker(PROMPT)
    tokens, back = feed(checker, code_tok, "    return x)\n")
    assert back is not None and ")" in held(code_tok, tokens, back.keep) and back.keep >= checker.good
    good = syntax.checker(PROMPT)
    tokens, back = feed(good, code_tok, "    if x:\n        return (1,\n                2)\n    return 0\n")
    assert back is None and good.after(tokens, 0, code_tok.decode(tokens)) is None


def test_the_end_must_compile_and_a_prompt_that_is_not_python_is_refused(code_tok):
    syntax = PythonSyntax(code_tok, PythonSyntax.line_ends(code_tok))
    checker = syntax.checker(PROMPT)
    tokens, back = feed(checker, code_tok, "    if x:\n")
    assert back is None
    tokens.append(code_tok.eot_id)
    back = checker.after(tokens, 1, code_tok.decode(tokens[:-1]))
    assert back == type(back)(len(tokens) - 1, code_tok.eot_id)  # ending inside a block is what was wrong
    with pytest.raises(UserError, match="not the start of a Python program"):
        syntax.checker("Here is the code:\nx = 1\n")
    reply = PythonSyntax(code_tok, syntax.line_ends, continues_prompt=False)
    assert not reply.continues_prompt and reply.checker("").prefix == ""


def test_a_sequence_gives_up_after_its_retries(code_tok):
    syntax = PythonSyntax(code_tok, PythonSyntax.line_ends(code_tok), retries=2)
    checker = syntax.checker(PROMPT)
    for _ in range(2):
        assert feed(checker, code_tok, "    return )\n")[1] is not None
    assert checker.gave_up and checker.banned(0) == set() and feed(checker, code_tok, "    return )\n")[1] is None


def samples(engine, grammar, n=8):
    tasks = procedural.generate(6, seed=5, difficulty=1)
    params = SamplingParams(max_new_tokens=48, strategy="sample", temperature=1.6, n=n, seed=3)
    return tasks, engine.generate([t["prompt"] for t in tasks], params, grammar=grammar)


@pytest.mark.slow
def test_constrained_samples_parse_and_the_rewound_cache_scores_like_a_fresh_forward(noisy_arithmetic_model):
    model, tok, _ = load_model(noisy_arithmetic_model)
    engine = Engine(model.double(), tok)  # fp64: the teacher-forced check below is exact up to fp32 logits
    tasks, free = samples(engine, None)
    broken = sum(syntax_error(t["prompt"] + c.text, complete=True) is not None
                 for t, cs in zip(tasks, free) for c in cs)
    assert broken >= 24  # hot sampling breaks this model's syntax often enough to see the constraint work
    tasks, constrained = samples(engine, engine.constraint("python", "prompt"))
    went_back = finished = gave_up = 0
    for task, completions in zip(tasks, constrained):
        for c in completions:
            program = task["prompt"] + c.text
            gave_up += c.backtracks == RETRIES
            if c.backtracks == RETRIES:  # it went on unchecked
                continue
            if c.finish_reason == "stop":  # a finished program compiles; one cut at the limit is a valid start
                assert syntax_error(program, complete=True) is None, c.text
            else:
                assert syntax_error(program[:program.rfind("\n") + 1], complete=False) is None, c.text
            finished += c.finish_reason == "stop"
            went_back += c.backtracks > 0
            ids = engine.encode(task["prompt"])
            with torch.no_grad():
                logprobs = engine.model(torch.tensor([ids + c.token_ids])).float().log_softmax(-1)[0]
            fresh = [float(logprobs[len(ids) - 1 + i, t]) for i, t in enumerate(c.token_ids)]
            assert c.logprobs == pytest.approx(fresh, abs=1e-4)  # no slot of a taken-back token is still seen
    assert went_back >= 20 and finished >= 24 and gave_up <= 8  # most of what went wrong was repaired


@pytest.mark.slow
def test_the_server_backtracks_as_the_engine_does(noisy_arithmetic_model):
    """Sampled with the same seeds, the server's constrained replies are the engine's offline ones: the scheduler
    rewinds a sequence's blocks as the engine rewinds its cache rows."""
    model, tok, _ = load_model(noisy_arithmetic_model)
    engine = Engine(model.double(), tok)
    tasks, offline = samples(engine, engine.constraint("python", "prompt"), n=4)
    live = LiveServer(engine, max_n=4)
    try:
        for task, completions in zip(tasks, offline):
            body = {"prompt": task["prompt"], "max_tokens": 48, "temperature": 1.6, "top_p": 1.0, "n": 4, "seed": 3,
                    "constrain": "python"}
            reply = httpx.post(f"{live.url}/v1/completions", json=body, timeout=60).json()
            assert [c["text"] for c in reply["choices"]] == [c.text for c in completions]
            assert reply["usage"]["completion_tokens"] == sum(len(c.token_ids) for c in completions)  # kept ones
        for bad, message in (({"prompt": "Here is code:\nx = (\n1\n"}, "not the start of a Python program"),
                             ({"prompt": PROMPT, "suffix": "    return 1\n"}, "with a suffix")):
            response = httpx.post(f"{live.url}/v1/completions", json={**bad, "constrain": "python"}, timeout=60)
            assert response.status_code == 400 and message in response.json()["error"]["message"]
        streamed = httpx.post(f"{live.url}/v1/completions", timeout=60, json={
            "prompt": tasks[0]["prompt"], "max_tokens": 48, "temperature": 1.6, "n": 1, "seed": 3,
            "constrain": "python", "stream": True}).text
        texts = [json.loads(line[6:])["choices"][0]["text"] for line in streamed.splitlines()
                 if line.startswith("data: {")]
        assert "".join(texts) == offline[0][0].text and sum(bool(t) for t in texts) == 1  # sent when it ends
    finally:
        live.close()


@pytest.mark.slow
def test_eval_reports_syntax_with_and_without_the_constraint(tmp_path, code_tok):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", code_tok, 1024)
    for constrain in ("none", "python"):
        out = tmp_path / constrain
        run_codelm("eval", "--checkpoint", checkpoint, "--limit", "3", "--max-new-tokens", "40", "--out", out,
                   "--constrain", constrain, "--dtype", "fp32")
        score = json.loads((out / "results.json").read_text())["tasks"]["humaneval"]
        rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and score["syntax_errors"] == sum(r["syntax"] == "error" for r in rows) / 3
        assert score["unfinished"] == sum(r["syntax"] == "unfinished" for r in rows) / 3
        if constrain == "python":  # a random model: what is not taken back for good is cut at the limit
            assert score["backtracks"] == sum(r["backtracks"] for r in rows) / 3
            assert all(r["syntax"] != "error" for r in rows if r["backtracks"] < RETRIES)
        else:
            assert score["backtracks"] is None and all(r["backtracks"] == 0 for r in rows)


def test_beams_drafts_and_chat_evaluation_refuse_the_python_constraint(code_tok):
    from codelm.config import ModelConfig
    from codelm.inference.speculative import PromptLookup, speculative_generate
    from codelm.model.llama import Transformer

    engine = Engine(Transformer(ModelConfig(vocab_size=code_tok.vocab_size, dim=16, n_layers=1, n_heads=2,
                                            n_kv_heads=1, max_seq_len=64)), code_tok)
    python = engine.constraint("python", "prompt")
    with pytest.raises(UserError, match="not beams"):
        engine.generate([PROMPT], SamplingParams(strategy="beam", num_beams=2), grammar=python)
    with pytest.raises(UserError, match="backtracks whole lines"):
        speculative_generate(engine, engine.encode(PROMPT), SamplingParams(), PromptLookup(), grammar=python)
    with pytest.raises(UserError, match="say whether"):
        engine.constraint("python", None)
    with pytest.raises(UserError, match="--chat reply mixes prose and code"):
        EvalConfig(checkpoint="x", chat=True, constrain="python").check()
