"""`codelm generate` and `codelm complete`: the KV-cache engine on one prompt, from the terminal."""

import json
import sys

from codelm.cli.options import Settings, add_command, read_input, resolve, sections_root
from codelm.config import CompleteConfig, EngineConfig, GenerateConfig, SamplingParams
from codelm.errors import UserError

GENERATE = Settings(sections_root("generate", generate=GenerateConfig, sampling=SamplingParams, engine=EngineConfig),
                    ("generate", "sampling", "engine"), every_field=True)
COMPLETE = Settings(sections_root("complete", complete=CompleteConfig, sampling=SamplingParams, engine=EngineConfig),
                    ("complete", "sampling", "engine"), every_field=True)


def generate(sub, name, text):
    add_command(sub, name, text, "Continue a prompt with the KV-cache engine. A single completion streams to the "
                "terminal; stop strings are matched on the decoded text. A constraint (a JSON schema, a regex, a "
                "Lark grammar or a list of choices) masks what the grammar forbids before sampling and ends "
                "the completion when the grammar is complete; --constrain python keeps the code parsing.",
                run_generate, GENERATE)


def complete(sub, name, text):
    add_command(sub, name, text, "Fill-in-the-middle completion: the PSM prompt <fim_prefix>A<fim_suffix>B"
                "<fim_middle>, generated until <|endoftext|>; prints prefix + middle + suffix.", run_complete, COMPLETE)


def note_if_cut(completion):
    """Generation ran into the end of the context: say so on stderr, leaving stdout the text alone."""
    if completion.cut:
        print(f"[note] {completion.cut}", file=sys.stderr)


def constraint_of(g: GenerateConfig) -> tuple[str, object] | None:
    """The (kind, spec) of the constraint the options name, reading its file; None without one."""
    if g.json_object:
        return "json_object", None
    if g.json_schema:
        try:
            return "json_schema", json.loads(read_input(g.json_schema))
        except json.JSONDecodeError as e:
            raise UserError(f"--json-schema {g.json_schema}: not JSON ({e})") from None
    if g.grammar:
        return "lark", read_input(g.grammar)
    if g.regex:
        return "regex", g.regex
    if g.constrain == "python":
        return "python", "reply" if g.chat else "prompt"
    return ("choice", g.choice) if g.choice else None


def run_generate(args):
    from codelm.inference.engine import Engine

    cfg = resolve(args)
    g, params = cfg.generate, cfg.sampling
    engine = Engine.from_checkpoint(g.checkpoint, **cfg.engine.options())
    prompt = read_input(g.prompt_file) if g.prompt_file else g.prompt
    constraint = constraint_of(g)
    grammar = engine.constraint(*constraint) if constraint else None
    if g.chat:
        return chat_reply(engine, g, params, prompt, grammar)
    if g.draft_checkpoint or g.prompt_lookup:
        from codelm.inference.speculative import DraftModel, PromptLookup, speculative_generate

        drafter = (PromptLookup() if g.prompt_lookup else
                   DraftModel(Engine.from_checkpoint(g.draft_checkpoint, **cfg.engine.options())))
        completion, stats = speculative_generate(engine, engine.encode(prompt), params, drafter, k=g.num_draft,
                                                 grammar=grammar)
        print(prompt + completion.text)
        note_if_cut(completion)
        print(f"[speculative] acceptance {stats.acceptance_rate:.2f}, {stats.tokens_per_forward:.2f} tokens per "
              f"target forward ({stats.tokens} tokens, {stats.target_forwards} forwards)", file=sys.stderr)
        return
    if params.n == 1 and params.strategy != "beam":  # stream to the terminal
        print(prompt, end="", flush=True)
        [[completion]] = engine.generate([prompt], params, on_text=lambda i, j, text: print(text, end="", flush=True),
                                         grammar=grammar)
        print()
        note_if_cut(completion)
        return
    completions = engine.generate([prompt], params, grammar=grammar)[0]
    print_completions(prompt, completions)


def print_completions(prompt: str, completions):
    for j, completion in enumerate(completions):
        score = f", score {completion.score:.3f}" if completion.score is not None else ""
        print(f"--- completion {j + 1} ({completion.finish_reason}{score})\n{prompt}{completion.text}")
    note_if_cut(completions[0])


def chat_reply(engine, g: GenerateConfig, params, prompt: str, grammar):
    """The prompt as a user turn; the reply, or with --tools the calls it made as JSON (one object per line).
    With tools their calls are the constraint (GenerateConfig.check refuses another one beside them)."""
    from dataclasses import replace

    from codelm.chat import encode_chat, parse_calls, tools_grammar, with_tools
    from codelm.synth.teacher import reply_end

    tools = json.loads(read_input(g.tools)) if g.tools else []
    functions = [t["function"] if "function" in t else t for t in tools]
    ids = encode_chat(engine.tok, with_tools([{"role": "user", "content": prompt}], tools), engine.tok.chat_template)
    if tools:
        named = [f for f in functions if f["name"] == g.tool_choice]
        if g.tool_choice not in ("auto", "none", "required") and not named:
            raise UserError(f"--tool-choice {g.tool_choice}: no tool of that name in {g.tools}")
        grammar = engine.constraint("lark", tools_grammar(named or functions, "required" if named else g.tool_choice,
                                                           parallel=True))
    end = reply_end(engine.tok.chat_template)
    params = replace(params, stop=[*params.stop, end] if end else params.stop)
    for j, completion in enumerate(engine.generate([ids], params, grammar=grammar)[0]):
        content, calls = parse_calls(completion.text) if tools and g.tool_choice != "none" else (completion.text, [])
        header = f"--- reply {j + 1} ({'tool_calls' if calls else completion.finish_reason})\n" if params.n > 1 else ""
        print(header + "\n".join([content, *(json.dumps(c["function"]) for c in calls)]).strip())
        note_if_cut(completion)


def run_complete(args):
    from codelm.inference.engine import Engine

    cfg = resolve(args)
    c = cfg.complete
    prefix, suffix = read_input(c.prefix_file), read_input(c.suffix_file)
    engine = Engine.from_checkpoint(c.checkpoint, **cfg.engine.options())
    [middle] = engine.complete_middle(prefix, suffix, cfg.sampling)
    print(prefix + middle.text + suffix, end="")
    note_if_cut(middle)
