"""`codelm synth magpie`: Magpie (Xu et al. 2024) - an aligned teacher, given only its chat template's text up to
where a user's words begin, writes a user's request; asked that request as a chat, it answers. One row each.

The pre-query prefix is the conversation rendered with the teacher's chat template (`teacher.pre_query`: with
cfg.system as a system message, or the one the template adds itself), e.g. "<|im_start|>user\\n" for ChatML;
the request ends at the template's end of the user's turn ("<|im_end|>"). Requests are sampled
(cfg.instruction_temperature, Magpie's 1.0), the copies of the prefix in a batch drawing distinct seeds from
(cfg.seed, the batch); answers are greedy by default (Magpie's).

Dropped, and counted under the reason: instruction_too_long (no end of turn within max_instruction_tokens),
empty_instruction, instruction_too_short (under min_instruction_words words), exact_duplicate (the same
request, case and spacing aside), near_duplicate (the curation's MinHash over the request), contaminated
(the request or the answer overlaps HumanEval, the curation's index), unfinished_response (max_new_tokens
or the context ran out), empty_response, code_does_not_parse (a python block of the answer does not
compile), no_code (with code_only: the answer has no python block).

Requests that are not about code are kept unless code_only: they teach the chat format, and a code model's
teacher invents mostly code requests anyway (the stats say how many rows carry code). Nothing runs: the
answers have no tests ("tests": []); "entry_point" is the first function the answer's code defines.
"""

import ast
import random
import time

from tqdm import tqdm

from codelm.synth.common import Novelty, TeacherStats, parse_code, python_blocks
from codelm.synth.config import MagpieConfig
from codelm.synth.teacher import Journal, make_teacher, pre_query, sampling

GENERATOR = "codelm.synth.magpie/1"  # in every row's provenance; bump when the rows change


def magpie(cfg: MagpieConfig) -> TeacherStats:
    """cfg.n invented requests -> filters -> answers -> filters -> cfg.out (JSONL rows) and its .stats.json,
    written only if some row survives."""
    started = time.perf_counter()
    stats = TeacherStats()
    teacher = make_teacher(cfg.teacher)
    stats.teacher = teacher.id
    prefix, end_of_turn = pre_query(teacher.template, cfg.system)
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    answer_params = sampling(cfg.temperature, 1.0, cfg.max_new_tokens, cfg.seed)
    novelty, rows, size = Novelty(), [], cfg.teacher.batch_size
    journal = Journal(cfg.out, cfg)
    for begin in tqdm(range(0, cfg.n, size), desc="synth magpie", unit=" batches"):
        draws = range(begin, min(begin + size, cfg.n))
        seed = random.Random(f"{cfg.seed}:{begin}").getrandbits(31)  # the batch's copies are its samples 0..k-1
        invented = journal.generate(teacher, f"{begin}:request", [prefix] * len(draws), sampling(
            cfg.instruction_temperature, cfg.instruction_top_p, cfg.max_instruction_tokens, seed, (end_of_turn,)))
        asked = []
        for draw, text in zip(draws, invented):
            reason = instruction_reason(text, cfg, novelty)
            if reason:
                stats.dropped[reason] += 1
            else:
                asked.append((draw, [*system, {"role": "user", "content": text.strip()}]))
        answers = journal.generate(teacher, f"{begin}:answer", [messages for _, messages in asked], answer_params)
        stats.requests += len(draws) + len(asked)
        for (draw, messages), answer in zip(asked, answers):
            reason = answer_reason(answer, cfg, novelty)
            if reason:
                stats.dropped[reason] += 1
                continue
            rows.append({"messages": [*messages, {"role": "assistant", "content": answer.strip()}],
                         "entry_point": first_function(answer), "tests": [],
                         "provenance": {"teacher": teacher.id, "pre_query": prefix, "seed": cfg.seed, "draw": draw,
                                        "generator": GENERATOR}})
    journal.close(done=True)  # finished: a rerun asks again
    stats.write("magpie", rows, cfg, GENERATOR, started)
    return stats


def instruction_reason(text: str | None, cfg: MagpieConfig, novelty: Novelty) -> str | None:
    if text is None:
        return "instruction_too_long"
    text = text.strip()
    if not text:
        return "empty_instruction"
    if len(text.split()) < cfg.min_instruction_words:
        return "instruction_too_short"
    return novelty.reason(" ".join(text.lower().split()), text, text)


def answer_reason(answer: str | None, cfg: MagpieConfig, novelty: Novelty) -> str | None:
    if answer is None:
        return "unfinished_response"
    if not answer.strip():
        return "empty_response"
    blocks = python_blocks(answer)
    if any(parse_code(block) is None for block in blocks):
        return "code_does_not_parse"
    if cfg.code_only and not blocks:
        return "no_code"
    return "contaminated" if novelty.contaminated(answer) else None


def first_function(answer: str) -> str:
    """The first function defined at the top of the answer's python blocks (all of which parse), or ""."""
    return next((node.name for block in python_blocks(answer) for node in ast.parse(block).body
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))), "")
