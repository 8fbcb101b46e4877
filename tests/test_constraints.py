"""Constrained decoding: masks against an independent oracle, forks and rollbacks, and every decoding path
(greedy, sampling with n > 1, beam, speculative) producing only what the grammar allows."""

import json
import re
from dataclasses import replace

import jsonschema
import pytest
import torch
from conftest import run_codelm

from codelm.checkpoint import save_model
from codelm.config import ModelConfig, SamplingParams
from codelm.errors import UserError
from codelm.inference.constraints import Grammar, allowed_rows, mask_logits
from codelm.inference.engine import Engine
from codelm.inference.speculative import DraftModel, PromptLookup, speculative_generate
from codelm.model.llama import Transformer
from codelm.tokenizer import train_tokenizer

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "tags", "size", "kind"],
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
                         "size": {"type": "integer", "minimum": 0, "maximum": 999},
                         "kind": {"enum": ["file", "dir"]},
                         "owner": {"type": "object", "properties": {"id": {"type": "integer", "maximum": 99}},
                                   "required": ["id"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def small_tok():
    """A byte-level BPE of a few hundred tokens, merges over text full of a, b and digits."""
    text = ["abab ab aab 12 123 {\"k\": 1} [1, 2] " * 20, "def f(x):\n    return x + 1\n" * 20]
    return train_tokenizer(text, vocab_size=300, min_frequency=2)


@pytest.fixture(scope="module")
def engine(small_tok):
    torch.manual_seed(0)
    rows = small_tok.vocab_size + 7  # the model has padding rows the tokenizer never uses
    model = Transformer(ModelConfig(vocab_size=rows, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=1024))
    return Engine(model.double(), small_tok)  # fp64: greedy ties cannot flip between decoding paths


def test_masks_equal_the_tokens_that_extend_a_prefix_of_the_language(small_tok, engine):
    """Oracle: a token is allowed after "ab" under (ab)+c iff "ab" + its text is a prefix of a word of the language."""
    grammar = engine.constraint("regex", "(ab)+c")
    matcher = grammar.matcher()
    for t in small_tok.encode("ab"):
        matcher.accept(t)
    allowed = set(allowed_rows([matcher], grammar.rows)[0].nonzero().flatten().tolist())
    prefix = re.compile(r"(ab)*(a|ab|abc)?")
    expected = {t for t in range(small_tok.vocab_size)  # special tokens decode to "": never a longer prefix
                if len(text := "ab" + small_tok.decode([t])) > 2 and prefix.fullmatch(text)}
    assert allowed == expected and expected  # padding rows and special tokens never allowed here
    done = grammar.matcher()
    for t in small_tok.encode("ababc"):
        done.accept(t)
    assert done.done and set(allowed_rows([done], grammar.rows)[0].nonzero().flatten().tolist()) <= small_tok.stop_ids


def test_fork_and_rollback_give_what_a_fresh_matcher_gives(small_tok, engine):
    grammar = engine.constraint("json_schema", SCHEMA)
    text = small_tok.encode('{"name": "ab", "tags": ["x"], "size": 12, "kind": "file"}')
    walker = grammar.matcher()
    for t in text[:5]:
        walker.accept(t)
    fork = walker.fork()
    for t in text[5:9]:
        walker.accept(t)
    walker.rollback(4)
    fresh = grammar.matcher()
    for t in text[:5]:
        fresh.accept(t)
    masks = allowed_rows([walker, fork, fresh], grammar.rows)
    assert torch.equal(masks[0], masks[2]) and torch.equal(masks[1], masks[2])
    assert fork.valid_prefix(text[5:]) == len(text) - 5 and fork.valid_prefix(small_tok.encode("]]")) == 0


def test_unconstrained_rows_are_left_alone():
    logits = torch.randn(2, 10)
    assert mask_logits(logits, [None, None]) is logits


@pytest.mark.parametrize("kind, spec, message", [
    ("json_schema", {"type": "objekt"}, "json_schema: Invalid type"),
    ("json_schema", {"allOf": [{"type": "string"}, {"type": "integer"}]}, "Unsatisfiable schema"),
    ("json_schema", {"type": "object", "dependentSchemas": {"a": {}}}, "Unimplemented keys"),
    ("lark", "start: foo", 'unknown name: "foo"'),
    ("regex", "a(b", "invalid regex"),
    ("choice", [], "non-empty list"),
    ("xml", "<a/>", "unknown constraint 'xml'"),
])
def test_bad_grammars_are_one_line_errors(engine, kind, spec, message):
    with pytest.raises(UserError, match=re.escape(message)):
        engine.constraint(kind, spec)


def test_every_sample_of_a_schema_validates_and_logprobs_cover_forced_tokens(engine):
    grammar = engine.constraint("json_schema", SCHEMA)
    params = SamplingParams(strategy="sample", n=4, max_new_tokens=400, seed=3, top_p=0.9)
    outputs = engine.generate(["x = ", "data"], params, grammar=grammar)
    for completion in [c for row in outputs for c in row]:
        assert completion.finish_reason == "stop", completion.text
        jsonschema.validate(json.loads(completion.text), SCHEMA)
        assert len(completion.logprobs) == len(completion.token_ids)
        assert all(lp <= 0 for lp in completion.logprobs)
    assert len({c.text for row in outputs for c in row}) > 1  # the samples differ: each has its own matcher


def reference_greedy(engine, prompt: str, grammar: Grammar, limit: int) -> list[int]:
    """Constrained greedy the slow way: the whole sequence through the model each step, mask (closing near the
    limit), argmax."""
    ids, out, matcher = engine.encode(prompt), [], grammar.matcher()
    while len(out) < limit and not matcher.done:
        logits = engine.model(torch.tensor([ids + out]))[:, -1].float()
        token = int(mask_logits(logits, [matcher], [limit - len(out)]).argmax())
        if token in engine.tok.stop_ids:
            break
        matcher.accept(token)
        out.append(token)
    return out


@pytest.mark.parametrize("kind, spec", [("json_schema", SCHEMA), ("regex", r"[0-9]{2,4}-(ab|ba){1,3}!"),
                                        ("choice", ["alpha", "beta", "gamma"]), ("json_object", None),
                                        ("lark", 'start: "def " NAME "(" NAME "):"\nNAME: /[a-z]{1,8}/')])
def test_greedy_fast_forward_beam_and_speculative_give_the_constrained_greedy_output(engine, kind, spec):
    grammar = engine.constraint(kind, spec)
    expected = reference_greedy(engine, "x = ", grammar, 80)
    [[greedy]] = engine.generate(["x = "], SamplingParams(max_new_tokens=80), grammar=grammar)
    assert greedy.token_ids[: len(expected)] == expected
    [best] = engine.generate(["x = "], SamplingParams(strategy="beam", num_beams=1, max_new_tokens=80),
                             grammar=grammar)[0]
    assert best.token_ids[: len(expected)] == expected
    for drafter in (PromptLookup(), DraftModel(engine)):
        spec_out, _ = speculative_generate(engine, engine.encode("x = "), SamplingParams(max_new_tokens=80), drafter,
                                           grammar=grammar)
        assert spec_out.token_ids == greedy.token_ids and spec_out.text == greedy.text
    if kind != "json_object":  # a closed grammar ends the completion by itself
        assert greedy.finish_reason == "stop" and grammar.matcher().valid_prefix(greedy.token_ids) == len(expected)


def test_a_sequence_near_its_limit_closes_an_unbounded_field(engine):
    """An integer without a maximum lets a model write digits until max_new_tokens; near the end the mask keeps
    only the tokens that close something, so every sample is whole (random weights: noise, but valid)."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}},
              "required": ["n", "s"], "additionalProperties": False}
    grammar = engine.constraint("json_schema", schema)
    params = SamplingParams(max_new_tokens=40, strategy="sample", temperature=1.0, n=6, seed=4)
    [samples] = engine.generate(["x = "], params, grammar=grammar)
    for c in samples:
        jsonschema.validate(json.loads(c.text), schema)
    [free] = engine.generate(["x = "], replace(params, max_new_tokens=400), grammar=grammar)
    assert [c.text for c in free] != [c.text for c in samples]  # with room, nothing was closed early


def test_batched_rows_under_different_constraints_do_not_interfere(engine):
    regex, choice = engine.constraint("regex", r"[0-9]+!"), engine.constraint("choice", ["yes", "no"])
    [[a]] = engine.generate(["q: "], SamplingParams(max_new_tokens=30), grammar=regex)
    [[b]] = engine.generate(["q: "], SamplingParams(max_new_tokens=30), grammar=choice)
    assert re.fullmatch(r"[0-9]+!", a.text) and b.text in ("yes", "no")
    [[c], [d]] = engine.generate(["q: ", "other "], SamplingParams(max_new_tokens=30), grammar=choice)
    assert c.text == b.text and d.text in ("yes", "no")


@pytest.mark.slow
def test_generate_cli_constraints(tmp_path, engine, small_tok):
    ckpt = save_model(tmp_path / "ckpt", engine.model.float(), small_tok)
    engine.model.double()
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    out = run_codelm("generate", "--checkpoint", ckpt, "--prompt", "x = ", "--json-schema", schema,
                     "--max-new-tokens", "120", "--dtype", "fp32").stdout
    jsonschema.validate(json.loads(out[len("x = "):]), SCHEMA)
    out = run_codelm("generate", "--checkpoint", ckpt, "--prompt", "pick ", "--choice", "left", "--choice", "right",
                     "--strategy", "sample", "--n", "3", "--dtype", "fp32").stdout
    assert out.count("--- completion") == 3 and all(line in ("pick left", "pick right") for line in
                                                     out.splitlines() if line.startswith("pick"))
    bad = run_codelm("generate", "--checkpoint", ckpt, "--prompt", "x", "--regex", "a(b", check=False)
    assert bad.returncode == 2 and "regex: at 1(8): invalid regex" in bad.stderr.strip().splitlines()[-1]
    both = run_codelm("generate", "--checkpoint", ckpt, "--prompt", "x", "--regex", "a", "--json-object", check=False)
    assert both.returncode == 2 and "at most one constraint" in both.stderr
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"key": {"enum": ["a", "b"]}}, "required": ["key"]}}}]))
    calls = run_codelm("generate", "--checkpoint", ckpt, "--chat", "--prompt", "find a", "--tools", tools,
                       "--tool-choice", "lookup", "--max-new-tokens", "200", "--dtype", "fp32").stdout.splitlines()
    assert calls and all(json.loads(json.loads(line)["arguments"])["key"] in ("a", "b") for line in calls)
    reply = run_codelm("generate", "--checkpoint", ckpt, "--chat", "--prompt", "hi", "--regex", "(ab|ba){1,4}!",
                       "--max-new-tokens", "200", "--dtype", "fp32").stdout
    assert re.fullmatch(r"(ab|ba){1,4}!\n", reply)
