"""The generation engine: processors, KV cache, batching, beam search, stop strings, speculative decoding."""

import math

import pytest
import torch
from tokenizers import AddedToken, decoders, models
from tokenizers import Tokenizer as HFTokenizer

from codelm.config import ModelConfig, SamplingParams
from codelm.data.fim import fim_prompt
from codelm.errors import UserError
from codelm.inference.engine import Engine
from codelm.inference.sampling import min_p, temperature, top_k, top_p
from codelm.inference.speculative import (
    DraftModel,
    PromptLookup,
    speculative_generate,
    verify,
)
from codelm.inference.stops import StopTracker
from codelm.model.llama import Transformer
from codelm.tokenizer import Tokenizer

CHARS = ["<|endoftext|>", "a", "b", "\n", "d", "e", "f", "x"]  # id 0 ends generation


def char_tokenizer() -> Tokenizer:
    """One character per token, decoded by concatenation."""
    hf = HFTokenizer(models.BPE({c: i for i, c in enumerate(CHARS)}, []))
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens([AddedToken(CHARS[0], special=True)])
    return Tokenizer(hf, required=())


def markov_model(log_probs: torch.Tensor) -> Transformer:
    """A real Transformer whose next-token log-probs depend only on the current token: row i of `log_probs`.

    Attention and MLP outputs are zeroed, the embedding is one-hot, so the final norm
    gives sqrt(V) * e_i and the LM head reads out column i."""
    V = log_probs.shape[0]
    model = Transformer(ModelConfig(vocab_size=V, dim=V, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=64))
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(V))
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(log_probs.T / math.sqrt(V))
    return model.eval()


def random_model(vocab: int, seed: int, dim: int = 64, layers: int = 2, context: int = 128) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=vocab, dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2,
                                   max_seq_len=context)).eval()


@pytest.fixture(scope="module")
def engine(code_tok):
    return Engine(random_model(code_tok.vocab_size, seed=0), code_tok)


PROBS = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())


def test_truncation_processors_keep_exactly_the_right_sets():
    logits = PROBS.log()
    assert kept(top_k(2)(logits)) == {0, 1}
    assert kept(top_p(0.45)(logits)) == {0}  # the top token always stays
    assert kept(top_p(0.65)(logits)) == {0, 1}
    assert kept(top_p(0.75)(logits)) == {0, 1, 2}
    assert kept(min_p(0.35)(logits)) == {0, 1}  # p >= 0.175
    assert kept(min_p(0.25)(logits)) == {0, 1, 2}  # p >= 0.125
    hot = temperature(0.5)(logits).softmax(-1)
    assert torch.allclose(hot, PROBS**2 / (PROBS**2).sum())


def test_repetition_penalty_lowers_seen_tokens():
    engine = Engine(markov_model(torch.tensor([[0.0, 2.0, 1.9, 0, 0, 0, 0, 0]] * 8).log_softmax(-1)), char_tokenizer())
    plain = engine.generate([[1]], SamplingParams(max_new_tokens=4))[0][0]
    penalized = engine.generate([[1]], SamplingParams(max_new_tokens=4, repetition_penalty=1.5))[0][0]
    assert plain.token_ids == [1, 1, 1, 1]
    assert penalized.token_ids[0] == 2  # "a" is in the prompt, so "b" wins


def test_kv_cache_generation_equals_full_recomputation(engine):
    prompt = engine.encode("def add(a, b):\n    return")
    [[c]] = engine.generate([prompt], SamplingParams(max_new_tokens=24))
    ids = list(prompt)
    with torch.no_grad():
        for token, logprob in zip(c.token_ids, c.logprobs):
            logits = engine.model(torch.tensor([ids]))[0, -1].log_softmax(-1)
            assert int(logits.argmax()) == token
            assert logprob == pytest.approx(float(logits[token]), abs=1e-4)
            ids.append(token)
    assert len(c.token_ids) == 24 and c.finish_reason == "length"


def test_generation_follows_in_place_weight_updates(code_tok):
    """Fused AdamW updates weights without bumping their version: nothing may be cached on it."""
    engine = Engine(random_model(code_tok.vocab_size, seed=3), code_tok)
    prompt = engine.encode("x = 1")
    before = engine.generate([prompt], SamplingParams(max_new_tokens=6))[0][0].logprobs
    optimizer = torch.optim.AdamW(engine.model.parameters(), lr=0.05, fused=True)
    engine.model(torch.tensor([prompt + [5, 6, 7] * 30])).float().square().mean().backward()
    optimizer.step()
    fresh = Transformer(engine.model.config).eval()  # a model that cannot have cached anything
    fresh.load_state_dict(engine.model.state_dict())
    with torch.no_grad():
        expected = fresh(torch.tensor([prompt])).float()[0, -1].log_softmax(-1)
    after = engine.generate([prompt], SamplingParams(max_new_tokens=6))[0][0]
    assert after.logprobs[0] == pytest.approx(float(expected[after.token_ids[0]]), abs=1e-4)
    assert after.logprobs != before


def test_batched_greedy_equals_one_at_a_time(engine):
    prompts = ["import os", "class Parser:\n    def __init__(self, text):", "x = [1, 2"]
    params = SamplingParams(max_new_tokens=16)
    batched = engine.generate(prompts, params)
    for prompt, [c] in zip(prompts, batched):
        assert engine.generate([prompt], params)[0][0].token_ids == c.token_ids


def test_samples_depend_on_seed_not_on_batch(engine):
    params = SamplingParams(strategy="sample", temperature=1.2, n=3, max_new_tokens=12, seed=7)
    alone = engine.generate(["def f():"], params)[0]
    together = engine.generate(["import sys", "def f():"], params)[1]
    assert [c.token_ids for c in alone] == [c.token_ids for c in together]
    assert len({tuple(c.token_ids) for c in alone}) > 1  # the n samples differ
    other_seed = engine.generate(["def f():"], SamplingParams(**{**params.__dict__, "seed": 8}))[0]
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in alone]


def test_beam_search_finds_the_best_sequence_greedy_misses():
    # from "a": "b" (0.6) then anything (at most 0.4); or "d" (0.4) then end-of-text (1.0)
    p = torch.full((8, 8), 1e-6)
    p[1] = torch.tensor([0, 0, 0.6, 0, 0.4, 0, 0, 0]) + 1e-6
    p[2] = torch.tensor([0, 0, 0, 0, 0, 0.4, 0.3, 0.3]) + 1e-6
    p[4] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]) + 1e-6
    p[5] = p[6] = p[7] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]) + 1e-6
    engine = Engine(markov_model((p / p.sum(-1, keepdim=True)).log()), char_tokenizer())
    greedy = engine.generate([[1]], SamplingParams(max_new_tokens=5))[0][0]
    assert greedy.text == "be"  # 0.6 * 0.4 = 0.24
    beams = engine.generate([[1]], SamplingParams(strategy="beam", num_beams=2, n=2, max_new_tokens=5,
                                                   length_penalty=0.0))[0]
    assert beams[0].text == "d" and beams[0].finish_reason == "stop"  # 0.4 * 1.0
    assert beams[0].score == pytest.approx(math.log(0.4), abs=1e-3)
    assert beams[1].text == "be" and beams[0].score > beams[1].score


def test_stop_strings_match_across_token_boundaries():
    tok = char_tokenizer()
    tracker = StopTracker(tok, ["\nde"])
    shown = "".join(tracker.push(tok.encode(c)[0]) for c in "ab\nd")
    assert shown == "ab" and not tracker.stopped  # "\nd" may start the stop string: held back
    assert tracker.push(tok.encode("e")[0]) == "" and tracker.stopped and tracker.text == "ab"
    tracker = StopTracker(tok, ["\nde"])
    shown = "".join(tracker.push(tok.encode(c)[0]) for c in "ab\ndx")
    assert shown + tracker.flush() == "ab\ndx" and not tracker.stopped  # a false start is released


def test_engine_stops_on_stop_string_and_end_of_text():
    p = torch.full((8, 8), 1e-6)
    for a, b in [(1, 2), (2, 3), (3, 4), (4, 5), (5, 0)]:  # a -> b -> \n -> d -> e -> <|endoftext|>
        p[a, b] = 1.0
    engine = Engine(markov_model(p.log()), char_tokenizer())
    pieces = []
    [[c]] = engine.generate([[1]], SamplingParams(max_new_tokens=10, stop=["\nd"]),
                            on_text=lambda i, j, text: pieces.append(text))
    assert (c.text, c.finish_reason, "".join(pieces)) == ("b", "stop", "b")
    [[c]] = engine.generate([[1]], SamplingParams(max_new_tokens=10))
    assert (c.text, c.finish_reason, c.token_ids[-1]) == ("b\nde", "stop", 0)


def test_speculative_greedy_output_equals_target_greedy(engine, code_tok):
    prompt = engine.encode("def area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):")
    params = SamplingParams(max_new_tokens=40)
    [[reference]] = engine.generate([prompt], params)
    drafter = Engine(random_model(code_tok.vocab_size, seed=1, dim=32, layers=1), code_tok)
    for draft, k in [(DraftModel(drafter), 4), (DraftModel(engine), 3), (PromptLookup(), 5)]:
        out, stats = speculative_generate(engine, prompt, params, draft, k=k)
        assert out.token_ids == reference.token_ids
        assert stats.tokens == 40 and stats.target_forwards <= 40
    _, stats = speculative_generate(engine, prompt, params, DraftModel(engine), k=3)
    assert stats.acceptance_rate == 1.0 and stats.tokens_per_forward == pytest.approx(4.0, abs=0.3)


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    stat = float(((counts - expected) ** 2 / expected).sum())
    dof = len(counts) - 1
    # Wilson-Hilferty approximation of the chi-square upper tail
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_speculative_acceptance_rule_preserves_the_target_distribution():
    p = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    q = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3])  # a poor drafter
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(20000):
        x = int(torch.multinomial(q, 1, generator=gen))
        first = verify([x], q[None], torch.stack([p, p]), gen)[0]
        counts[first] += 1
    assert chi_square_p_value(counts, p) > 1e-3
    assert abs(counts[4] / 20000 - 0.05) < 0.01  # far from q's 0.3


def test_speculative_sampling_has_the_targets_distribution():
    target_p = torch.tensor([[0.02, 0.5, 0.3, 0.1, 0.02, 0.02, 0.02, 0.02]] * 8)
    target_p[2] = torch.tensor([0.02, 0.1, 0.1, 0.6, 0.1, 0.04, 0.02, 0.02])
    draft_p = torch.full((8, 8), 1 / 8)
    tok = char_tokenizer()
    target, draft = Engine(markov_model(target_p.log()), tok), Engine(markov_model(draft_p.log()), tok)
    counts = torch.zeros(8, 8)
    for seed in range(1500):
        params = SamplingParams(strategy="sample", top_p=1.0, max_new_tokens=2, seed=seed)
        out, _ = speculative_generate(target, [1], params, DraftModel(draft), k=2)
        if len(out.token_ids) == 2:
            counts[out.token_ids[0], out.token_ids[1]] += 1
        else:  # the first token ended the text
            counts[0, 0] += 1
    exact = target_p[1][:, None] * target_p
    exact[0] = 0
    exact[0, 0] = target_p[1, 0]
    nonzero = exact.flatten() > 0
    assert chi_square_p_value(counts.flatten()[nonzero], exact.flatten()[nonzero] / exact.sum()) > 1e-3


def test_fill_in_the_middle_needs_fim_tokens(engine):
    middle = engine.complete_middle("def add(a, b):\n    return ", "\n", SamplingParams(max_new_tokens=8))
    assert len(middle) == 1 and len(middle[0].token_ids) <= 8
    with pytest.raises(UserError, match="fim_prefix"):
        Engine(markov_model(torch.zeros(8, 8)), char_tokenizer()).complete_middle("a", "b", SamplingParams())


def endless_engine(tok: Tokenizer, context: int) -> Engine:
    """A small random model that never ends a text: it can only stop at max_new_tokens or the context's end."""
    model = random_model(tok.vocab_size, seed=0, dim=32, layers=1, context=context)
    with torch.no_grad():  # logit 0 for the end-of-text token: below the best of the thousands of others
        model.lm_head.weight[list(tok.stop_ids)] = 0.0
    return Engine(model, tok)


def test_generation_runs_to_the_end_of_the_context(code_tok):
    """max_new_tokens beyond the context: each prompt fills it exactly, whatever its batch mates, and says so."""
    endless = endless_engine(code_tok, context=40)
    prompts = [[5] * 4, [5] * 30]
    for params in [SamplingParams(max_new_tokens=100), SamplingParams(strategy="sample", n=2, max_new_tokens=100),
                   SamplingParams(strategy="beam", num_beams=2, max_new_tokens=100)]:
        for prompt, completions in zip(prompts, endless.generate(prompts, params)):
            for c in completions:
                assert (c.finish_reason, len(prompt) + len(c.token_ids)) == ("length", 40), params.strategy
                assert c.cut == f"max_new_tokens 100 cut to {40 - len(prompt)}: the context holds 40 tokens"
    [[c]] = endless.generate([[5] * 39], SamplingParams(max_new_tokens=1))
    assert len(c.token_ids) == 1 and c.cut is None  # a request that fits is not cut
    [middle] = endless.complete_middle("def add(a, b):", "\n", SamplingParams(max_new_tokens=100))
    prompt = fim_prompt("def add(a, b):", "\n", code_tok)
    assert middle.finish_reason == "length" and len(prompt) + len(middle.token_ids) == 40
    assert middle.cut == f"max_new_tokens 100 cut to {40 - len(prompt)}: the context holds 40 tokens"
    out, _ = speculative_generate(endless, [5] * 30, SamplingParams(max_new_tokens=100), PromptLookup())
    assert len(out.token_ids) == 10 and out.cut == "max_new_tokens 100 cut to 10: the context holds 40 tokens"


def test_prompts_without_room_are_clear_errors(engine):
    with pytest.raises(UserError, match="the prompt is 128 tokens: the model's context of 128 has no room"):
        engine.generate([[5] * 128], SamplingParams(max_new_tokens=1))
    with pytest.raises(UserError, match="no room"):
        engine.complete_middle("x = 1\n" * 100, "", SamplingParams())
    with pytest.raises(UserError, match="empty prompt"):
        engine.generate([[5], []], SamplingParams())


def test_bad_requests_are_clear_errors(engine):
    with pytest.raises(UserError, match="top_p"):
        SamplingParams(strategy="sample", top_p=0)
    with pytest.raises(UserError, match="n must be"):
        SamplingParams(strategy="beam", num_beams=2, n=3)


def test_temperature_zero_means_greedy():
    assert SamplingParams.from_temperature(0, n=1) == SamplingParams()
    sampled = SamplingParams.from_temperature(0.8, n=5)
    assert (sampled.strategy, sampled.temperature, sampled.top_p, sampled.n) == ("sample", 0.8, 1.0, 5)
    with pytest.raises(UserError, match="greedy decoding gives one completion"):
        SamplingParams.from_temperature(0, n=5)
