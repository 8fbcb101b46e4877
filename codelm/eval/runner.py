"""`codelm eval`: run the evaluation tasks on a checkpoint and write what they found.

Tasks:
- humaneval, and mbpp, humaneval+, mbpp+ from their published files
  (codelm.tasks.mbpp, codelm.tasks.evalplus): n completions per problem (base
  or chat prompting, zero-shot chain of thought with --cot, optional k-shot),
  executed in the sandbox, scored with the unbiased pass@k; with --uncertainty
  also the greedy answer, every program run on shared inputs and clustered by
  behaviour, semantic entropy and selection by agreement (codelm.eval.uncertainty);
- humaneval-infill-single / humaneval-infill-multi: the model fills each masked
  span through its FIM prompt; pass@1 by execution and exact match;
- bpb: bits per byte on --data, overall and per language;
- contamination: overlap of every HumanEval item (and every item of the benchmark
  files given) with --corpus (no model needed).

Outputs, in OUT (default: CHECKPOINT/eval, or RUN/eval for a run directory):
results.json (every number: codelm.eval.results), samples.jsonl (one row
per completion: prompt, completion, status, error excerpt, behaviour cluster)
and with --uncertainty uncertainty.jsonl (one row per problem). The CLI then
writes report.md with pass_at_k.png, and a run's own report.md gains the
evaluation section.

Generation is batched with prompts sorted by length. A prompt that leaves no
room in the model's context is not generated: the sample counts as failed,
with status "skipped".
"""

import json
import random
import re
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from codelm.chat import encode_chat
from codelm.config import BENCHMARK_FILES, CODE_TASKS, MODEL_TASKS, EvalConfig, SamplingParams, load_config
from codelm.data.corpus import TokenizedStats
from codelm.data.fim import fim_prompt
from codelm.errors import UserError
from codelm.eval import hallucination, infilling, repair
from codelm.eval.bpb import BpbScore, evaluate_languages
from codelm.eval.contamination import ContaminationReport, contamination_report, humaneval_texts
from codelm.eval.passk import mean_pass_at_k
from codelm.eval.repair import RepairReport
from codelm.eval.results import EvalResults, HumanEvalScore, InfillingScore
from codelm.eval.uncertainty import UncertaintyReport, problem_uncertainty, summarize
from codelm.inference.engine import Engine
from codelm.inference.syntax import program_syntax
from codelm.io import atomic_write_bytes
from codelm.sandbox.supervisor import Limits, Result, environment, run_many
from codelm.tasks import behaviour, evalplus, humaneval, mbpp, model_tests
from codelm.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

DEFAULT_MAX_NEW_TOKENS = {**{task: 512 for task in CODE_TASKS}, "humaneval-infill-single": 64,
                          "humaneval-infill-multi": 256}


def generate_batched(engine, prompts: list[list[int]], params: SamplingParams, batch_size: int,
                     desc: str, constraint=None) -> list[list]:
    """params.n completions per prompt (token ids), batched by length, under `constraint` when one is given;
    None for a prompt that leaves no room.

    The engine runs each prompt until its stop, max_new_tokens or the end of the context."""
    context = engine.model.config.max_seq_len
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list | None] = [None] * len(prompts)
    fits = [i for i in order if len(prompts[i]) < context]
    with tqdm(total=len(fits), desc=desc, unit=" prompts") as bar:
        for start in range(0, len(fits), batch_size):
            batch = fits[start:start + batch_size]
            for i, completions in zip(batch, engine.generate([prompts[i] for i in batch], params,
                                                                   grammar=constraint)):
                results[i] = completions
            bar.update(len(batch))
    return results


def error_excerpt(result) -> str:
    """What a failing sample's row says: the verdict's detail, then the end of its stderr."""
    tail = result.stderr.strip().splitlines()[-3:]
    return "\n".join([result.detail, *tail]).strip()[:600]


def task_sampling(cfg: EvalConfig, task: str, stop: list[str]) -> SamplingParams:
    return SamplingParams.from_temperature(cfg.temperature, top_p=cfg.top_p, n=cfg.n, seed=cfg.seed, stop=stop,
                                           max_new_tokens=cfg.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[task])


class Evaluation:
    """The tasks of one `codelm eval`; `engine` (default: loaded from cfg.checkpoint) is what generates."""

    def __init__(self, cfg: EvalConfig, engine=None):
        cfg.check()
        self.cfg = cfg
        if "contamination" in cfg.tasks and not cfg.corpus:  # resolved before any work
            cfg.corpus = default_corpus(cfg.checkpoint)
        self.engine = engine
        if engine is None and any(t in MODEL_TASKS for t in cfg.tasks):
            self.engine = Engine.from_checkpoint(cfg.checkpoint, **cfg.engine.options())
        self.out = Path(cfg.out) if cfg.out else default_out(cfg.checkpoint)
        self.samples: list[dict] = []
        self.uncertainty_rows: list[dict] = []

    def run(self) -> EvalResults:
        if any(t.startswith("humaneval-infill") for t in self.cfg.tasks):  # fail before any work
            self.engine.tok.require(FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
        start = time.time()
        results = EvalResults(checkpoint=self.cfg.checkpoint, settings=self.cfg, tasks={},
                              precision=str(self.engine.dtype).removeprefix("torch.") if self.engine else None)
        for task in self.cfg.tasks:
            print(f"=== {task}", flush=True)
            task_start = time.time()
            runner = {**{name: self.code_task for name in CODE_TASKS}, "humaneval-infill-single": self.infilling,
                      "humaneval-infill-multi": self.infilling, "bpb": self.bpb,
                      "contamination": self.contamination}[task]
            score = runner(task)
            score.seconds = round(time.time() - task_start, 1)
            results.tasks[task] = score
            print(score.summary(), flush=True)
        results.sandbox_isolation = environment()[0] if self.samples else None
        results.seconds = round(time.time() - start, 1)
        self.write(results)
        return results

    def code_problems(self, task: str) -> tuple[list[dict], Limits]:
        """A code task's problems (HumanEval-shaped) and the sandbox limits their tests need."""
        if task == "humaneval":
            return humaneval.load_problems(), humaneval.LIMITS
        if task == "mbpp":
            return mbpp.load(self.cfg.mbpp), humaneval.LIMITS
        return evalplus.load(getattr(self.cfg, BENCHMARK_FILES[task])), evalplus.LIMITS


    def code_task(self, task: str) -> HumanEvalScore:
        cfg, engine = self.cfg, self.engine
        problems, limits = self.code_problems(task)
        chosen = problems[:cfg.limit] if cfg.limit else problems
        prompts = [self.encode_turn(self.code_turn(p, problems)) for p in chosen]
        params = self.sampling(task)
        started = time.time()
        constraint = engine.constraint("python", "prompt") if cfg.constrain == "python" else None
        outputs = generate_batched(engine, prompts, params, cfg.batch_size, f"{task}: generating", constraint)
        greedy = None
        if cfg.uncertainty:  # the answer whose failure the scores predict
            greedy = generate_batched(engine, prompts, replace(params, strategy="greedy", n=1), cfg.batch_size,
                                      f"{task}: greedy", constraint)
        generate_seconds = time.time() - started
        rows, jobs = self.code_rows(task, chosen, prompts, outputs, cfg.n)
        statuses = self.execute(rows, jobs, limits)
        counts = {}
        for row in rows:
            n, c = counts.get(row["id"], (0, 0))
            counts[row["id"]] = (n + 1, c + (row["status"] == "passed"))
        per_problem = list(counts.values())
        generated = sum(r["syntax"] is not None for r in rows)  # the shares leave out prompts that did not fit
        uncertainty = None
        if cfg.uncertainty:
            greedy_rows, greedy_jobs = self.code_rows(task, chosen, prompts, greedy, 1, "greedy")
            self.execute(greedy_rows, greedy_jobs, limits)
            uncertainty = self.uncertainty(task, chosen, rows, greedy_rows, outputs, greedy)
        repaired = self.self_repair(task, chosen, problems, prompts, rows, jobs, limits) if cfg.repair else None
        if repaired:  # the scores are the final answers'
            counts = {row["id"]: (1, int(row["status"] == "passed")) for row in rows}
            per_problem, statuses = list(counts.values()), dict(Counter(row["status"] for row in rows))
        hallucinations = hallucination.report(rows, greedy_rows if cfg.uncertainty else None)
        return HumanEvalScore(
            problems=len(chosen), n=cfg.n, prompting=("chat, zero-shot CoT" if cfg.cot else "chat") if cfg.chat
            else "base", few_shot=cfg.few_shot,
            pass_at_k={str(k): v for k, v in mean_pass_at_k(per_problem, cfg.k).items()},
            curve={str(k): v for k, v in mean_pass_at_k(per_problem, list(range(1, cfg.n + 1))).items()},
            statuses=statuses, generate_seconds=round(generate_seconds, 1),
            passed_problems=sorted((pid for pid, (_, c) in counts.items() if c), key=task_number),
            syntax_errors=sum(r["syntax"] == "error" for r in rows) / max(generated, 1),
            unfinished=sum(r["syntax"] == "unfinished" for r in rows) / max(generated, 1),
            backtracks=(sum(r["backtracks"] for r in rows) / max(generated, 1)) if constraint else None,
            defines_entry_point=(sum(humaneval.defines(r["completion"], p["entry_point"])
                                     for r, p in zip(rows, (p for p in chosen for _ in range(cfg.n))))
                                 / max(len(rows), 1)) if cfg.chat else None,
            uncertainty=uncertainty, hallucination=hallucinations, repair=repaired)

    def code_rows(self, task: str, chosen: list[dict], prompts: list[list[int]], outputs: list, n: int,
                  sample: str | None = None) -> tuple[list[dict], list]:
        """A samples.jsonl row and a sandbox job (None: not generated) for each of n completions per problem;
        `sample` labels them (the greedy answer) instead of numbering them."""
        rows, jobs = [], []
        for problem, prompt, completions in zip(chosen, prompts, outputs):
            for j in range(n):
                text = completions[j].text if completions else ""
                completion = humaneval.chat_completion(problem, text) if self.cfg.chat and completions else text
                finish = completions[j].finish_reason if completions else "skipped"
                rows.append({"task": task, "id": problem["task_id"], "sample": sample or j,
                             "prompt": self.engine.tok.decode(prompt), "reply": text if self.cfg.chat else None,
                             "completion": completion, "finish_reason": finish,
                             "syntax": program_syntax(humaneval.job(problem, completion)[0], cut=finish == "length")
                             if completions else None,
                             "backtracks": completions[j].backtracks if completions else 0})
                jobs.append(humaneval.job(problem, completion) if completions else None)
        return rows, jobs

    def uncertainty(self, task: str, chosen: list[dict], rows: list[dict], greedy_rows: list[dict], outputs: list,
                    greedy: list) -> UncertaintyReport:
        """Every problem's programs (greedy first, then the samples) run on its shared inputs, clustered by
        behaviour, scored; each sample's row gets its cluster, OUT/uncertainty.jsonl one record per problem."""
        cfg, n = self.cfg, self.cfg.n
        tests = self.written_tests(task, chosen) if cfg.codet else [[] for _ in chosen]
        used, jobs, left_out = [], [], 0
        for i, problem in enumerate(chosen):
            inputs = behaviour.shared_inputs(problem, cfg.behaviour_inputs, cfg.seed) if outputs[i] else []
            if not inputs:  # nothing to compare the programs on (or the prompt did not fit)
                left_out += 1
                continue
            used.append((i, len(inputs)))
            probed = inputs + [args for args, _ in tests[i]]  # the model's tests run as more inputs
            for row in [greedy_rows[i], *rows[i * n:(i + 1) * n]]:
                jobs.append((humaneval.job(problem, row["completion"])[0], problem["entry_point"], probed))
        vectors = behaviour.behaviours(jobs, cfg.workers)
        records = []
        for k, (i, inputs) in enumerate(used):
            greedy_vector, *sample_vectors = [v[:inputs] for v in vectors[k * (n + 1):(k + 1) * (n + 1)]]
            test_passes = [model_tests.passes(v[inputs:], tests[i])
                           for v in vectors[k * (n + 1) + 1:(k + 1) * (n + 1)]] if cfg.codet else None
            samples = rows[i * n:(i + 1) * n]
            record = problem_uncertainty(chosen[i]["task_id"], inputs, greedy_vector, sample_vectors,
                                         greedy[i][0].logprobs, [c.logprobs for c in outputs[i]],
                                         greedy_rows[i]["status"] == "passed",
                                         [r["status"] == "passed" for r in samples],
                                         test_passes)
            for row, cluster in zip(samples, record.sample_clusters):
                row["cluster"] = cluster
            records.append(record)
            line = {"task": task, **asdict(record)}
            if cfg.codet:
                line["tests"] = [model_tests.as_text(t, chosen[i]["entry_point"]) for t in tests[i]]
            self.uncertainty_rows.append(line)
        return summarize(records, n, left_out, cfg.bootstrap, cfg.seed)

    def written_tests(self, task: str, chosen: list[dict]) -> list[list[tuple[tuple, object]]]:
        """--codet: each problem's tests as the model writes them (one greedy reply), parsed."""
        engine, chat = self.engine, self.cfg.chat
        prompts = [encode_chat(engine.tok, model_tests.chat_messages(p), engine.tok.chat_template)
                   + engine.tok.encode(model_tests.reply_start(p)) if chat
                   else engine.encode(model_tests.base_prompt(p)) for p in chosen]
        params = SamplingParams(strategy="greedy", max_new_tokens=model_tests.MAX_NEW_TOKENS,
                                stop=["```"] if chat else humaneval.STOP_SEQUENCES)
        outputs = generate_batched(engine, prompts, params, self.cfg.batch_size, f"{task}: writing tests")
        return [model_tests.parse_tests(model_tests.completion_text(p, out[0].text), p["entry_point"])
                if out else [] for p, out in zip(chosen, outputs)]

    def infilling(self, task: str) -> InfillingScore:
        cfg, engine = self.cfg, self.engine
        problems = {p["task_id"]: p for p in humaneval.load_problems()}
        build = infilling.single_line_tasks if task.endswith("single") else infilling.multi_line_tasks
        tasks = build(list(problems.values()))
        total = len(tasks)
        if cfg.limit and cfg.limit < total:  # a fixed random sample, the same on every run
            tasks = [tasks[i] for i in sorted(random.Random(0).sample(range(total), cfg.limit))]
        prompts = [fim_prompt(t.prefix, t.suffix, engine.tok) for t in tasks]
        outputs = generate_batched(engine, prompts, task_sampling(cfg, task, []), cfg.batch_size,
                                   f"{task}: generating")
        rows, jobs = [], []
        for t, completions in zip(tasks, outputs):
            problem = problems[t.problem_id]
            for j in range(cfg.n):
                middle = completions[j].text if completions else ""
                rows.append({"task": task, "id": t.task_id, "sample": j, "prompt": t.prefix + "<MIDDLE>" + t.suffix,
                             "completion": middle, "reference": t.middle, "exact": same_code(middle, t.middle),
                             "finish_reason": completions[j].finish_reason if completions else "skipped"})
                jobs.append((t.prefix + middle + t.suffix, humaneval.tests(problem)) if completions else None)
        statuses = self.execute(rows, jobs)
        return InfillingScore(task=task, tasks=len(tasks), of=total, n=cfg.n,
                              pass_at_1=sum(r["status"] == "passed" for r in rows) / max(len(rows), 1),
                              exact_match=sum(r["exact"] for r in rows) / max(len(rows), 1), statuses=statuses)

    def bpb(self, task: str) -> BpbScore:
        return evaluate_languages(self.engine.model, self.engine.tok, self.cfg.data)

    def contamination(self, task: str) -> ContaminationReport:
        return contamination_report(self.cfg.corpus, self.benchmark_items(), threshold=self.cfg.contamination_threshold)

    def benchmark_items(self) -> list[tuple[str, str]]:
        """HumanEval's items, and those of every benchmark file given (MBPP, HumanEval+, MBPP+): prompt + solution."""
        items = humaneval_texts()
        for task, name in BENCHMARK_FILES.items():
            if getattr(self.cfg, name):
                problems, _ = self.code_problems(task)
                items += [(f"{task}:{p['task_id']}", p["prompt"] + p["canonical_solution"]) for p in problems]
        return items

    def execute(self, rows: list[dict], jobs: list, limits: Limits = humaneval.LIMITS) -> dict:
        """Check the jobs' programs for hallucinations, then run the jobs (None: not generated) in the sandbox;
        fills each row's flags, status, error and what kind of failure it was; status counts."""
        runnable = [i for i, job in enumerate(jobs) if job is not None]
        flags = self.hallucinations([jobs[i][0] for i in runnable], limits)
        results = run_many([jobs[i] for i in runnable], limits, self.cfg.workers, progress="executing")
        for i, result, found in zip(runnable, results, flags):
            rows[i]["hallucinations"] = found
            rows[i]["status"] = result.status
            rows[i]["failure"] = hallucination.runtime_kind(result.status, result.detail)
            rows[i]["error"] = "" if result.status == "passed" else error_excerpt(result)
        for row in rows:
            row.setdefault("hallucinations", [])
            row.setdefault("status", "skipped")
            row.setdefault("failure", None)
            row.setdefault("error", "prompt does not fit the model's context")
        self.samples += rows
        return dict(Counter(row["status"] for row in rows))

    def self_repair(self, task: str, chosen: list[dict], problems: list[dict], prompts: list[list[int]],
                    rows: list[dict], jobs: list, limits: Limits) -> RepairReport:
        """--repair R: R rounds in which each answer that fails its visible checks gets the feedback as a
        follow-up turn and answers again (a follow-up that does not fit the context keeps the answer); every
        round's answers scored on the hidden tests, rows ending with the last round's. Then the baseline."""
        cfg = self.cfg
        checks = self.checkable(chosen, limits)
        turns = [self.code_turn(p, problems) for p in chosen]  # the conversation (chat) or the text (base)
        results = self.visible(chosen, rows, checks, limits)
        hidden, visible = [passing(rows)], [passing(results)]
        for round_ in range(1, cfg.repair + 1):
            failing = [i for i, result in enumerate(results) if result is not None and result.status != "passed"]
            follow = [repair.follow_up(turns[i], rows[i]["reply"] or rows[i]["completion"],
                                       repair.feedback(results[i]), chosen[i]["prompt"]) for i in failing]
            outputs = generate_batched(self.engine, [self.encode_turn(t) for t in follow], self.sampling(task),
                                       cfg.batch_size, f"{task}: repair round {round_}")
            again, again_jobs = self.code_rows(task, [chosen[i] for i in failing],
                                               [self.encode_turn(t) for t in follow], outputs, 1)
            for i, turn, row, job, output in zip(failing, follow, again, again_jobs, outputs):
                if output is not None:
                    earlier = [*rows[i].get("rounds", []), {"completion": rows[i]["completion"],
                                                            "feedback": repair.feedback(results[i])}]
                    turns[i], rows[i], jobs[i] = turn, {**row, "rounds": earlier}, job
            self.samples = self.samples[:-len(rows)]  # scored again: samples.jsonl keeps the last round's rows
            self.execute(rows, jobs, limits)
            results = self.visible(chosen, rows, checks, limits)
            hidden.append(passing(rows))
            visible.append(passing(results))
        baseline = self.best_of(task, chosen, prompts, checks, limits)
        return RepairReport(
            rounds=cfg.repair, pass_at_1=[mean(h) for h in hidden], visible_pass=[mean(v) for v in visible],
            repaired=sum(not a and b for a, b in zip(hidden[0], hidden[-1])),
            broken=sum(a and not b for a, b in zip(hidden[0], hidden[-1])),
            without_checks=sum(not c for c in checks), baseline_samples=cfg.repair + 1,
            baseline_temperature=cfg.repair_baseline_temperature, baseline_pass_at_1=mean(baseline[0]),
            baseline_visible_pass=mean(baseline[1]))

    def checkable(self, chosen: list[dict], limits: Limits) -> list[list[repair.Check]]:
        """Each problem's visible checks. A problem whose reference solution fails them gets none (four of
        HumanEval's prompts state a wrong result or an unquoted string): repair must not chase a typo."""
        checks = [repair.visible_checks(p["prompt"], p["entry_point"]) for p in chosen]
        own = [i for i, p in enumerate(chosen) if checks[i] and p.get("canonical_solution")]
        results = run_many([(chosen[i]["prompt"] + chosen[i]["canonical_solution"], repair.check_code(checks[i]))
                            for i in own], limits, self.cfg.workers)
        for i, result in zip(own, results):
            checks[i] = checks[i] if result.status == "passed" else []
        return checks

    def visible(self, chosen: list[dict], rows: list[dict], checks: list[list[repair.Check]], limits: Limits
                ) -> list[Result | None]:
        """Each answer run on its problem's visible checks (None: no checks, or nothing generated)."""
        runnable = [i for i, row in enumerate(rows) if checks[i] and row["syntax"] is not None]
        results = run_many([(humaneval.job(chosen[i], rows[i]["completion"])[0], repair.check_code(checks[i]))
                            for i in runnable], limits, self.cfg.workers, progress="visible checks")
        found: list[Result | None] = [None] * len(rows)
        for i, result in zip(runnable, results):
            found[i] = result
        return found

    def best_of(self, task: str, chosen: list[dict], prompts: list[list[int]], checks: list[list[repair.Check]],
                limits: Limits) -> tuple[list[bool], list[bool]]:
        """The equal-budget baseline: R + 1 independent samples per problem, the first that passes the visible
        checks (else the first) as the answer; (hidden passed, visible passed) per problem."""
        cfg = self.cfg
        samples = cfg.repair + 1
        params = replace(self.sampling(task), strategy="sample", temperature=cfg.repair_baseline_temperature,
                         top_p=cfg.top_p, n=samples)
        outputs = generate_batched(self.engine, prompts, params, cfg.batch_size, f"{task}: best of {samples}")
        rows, jobs = self.code_rows(task, chosen, prompts, outputs, samples, "baseline")
        results = self.visible([p for p in chosen for _ in range(samples)], rows,
                               [c for c in checks for _ in range(samples)], limits)
        picks, visible = [], []
        for i in range(len(chosen)):
            own = range(i * samples, (i + 1) * samples)
            good = [j for j in own if results[j] is not None and results[j].status == "passed"]
            picks.append(good[0] if good else i * samples)
            visible.append(bool(good))
        runnable = [j for j in picks if jobs[j] is not None]
        hidden = dict(zip(runnable, run_many([jobs[j] for j in runnable], limits, cfg.workers,
                                             progress="baseline")))
        return [j in hidden and hidden[j].status == "passed" for j in picks], visible

    def code_turn(self, problem: dict, problems: list[dict]) -> list[dict] | str:
        """What a problem asks: the chat messages, or the base prompt's text."""
        cfg = self.cfg
        examples = humaneval.shots(problem, problems, cfg.few_shot)
        if cfg.chat:
            return humaneval.chat_messages(problem, examples, reasoning=cfg.cot)
        return humaneval.base_prompt(problem, examples)

    def encode_turn(self, turn: list[dict] | str) -> list[int]:
        if isinstance(turn, list):
            return encode_chat(self.engine.tok, turn, self.engine.tok.chat_template)
        return self.engine.encode(turn)

    def sampling(self, task: str) -> SamplingParams:
        return task_sampling(self.cfg, task, [] if self.cfg.chat else humaneval.STOP_SEQUENCES)

    def hallucinations(self, programs: list[str], limits: Limits) -> list[list[list[str]]]:
        """Each program's static flags: names never defined, then what its probe (run in the sandbox, one run
        per distinct probe) finds of its imports, module attributes and call arities."""
        probes = [hallucination.probe(p) for p in programs]
        codes = sorted({code for _, code in probes if code})
        printed = dict(zip(codes, run_many([(code, "") for code in codes], limits, self.cfg.workers,
                                           progress="probing imports")))
        return [found + (hallucination.probe_flags(printed[code].stdout) if code else []) for found, code in probes]

    def write(self, results: EvalResults):
        self.out.mkdir(parents=True, exist_ok=True)
        results.save(self.out / "results.json")
        atomic_write_bytes(self.out / "samples.jsonl", [(json.dumps(row) + "\n").encode() for row in self.samples])
        if self.uncertainty_rows:
            atomic_write_bytes(self.out / "uncertainty.jsonl",
                               [(json.dumps(row) + "\n").encode() for row in self.uncertainty_rows])


def passing(rows: list) -> list[bool]:
    """Which rows (samples.jsonl rows or sandbox results; None: not run) passed."""
    return [row is not None and (row["status"] if isinstance(row, dict) else row.status) == "passed" for row in rows]


def mean(flags: list[bool]) -> float:
    return sum(flags) / max(len(flags), 1)


def same_code(a: str, b: str) -> bool:
    """Exact match up to trailing whitespace on each line and blank lines around the span."""
    def norm(text):
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).strip("\n")

    return norm(a) == norm(b)


def task_number(task_id: str) -> int:
    return int(re.sub(r"\D", "", task_id) or 0)


def default_out(checkpoint: str | None) -> Path:
    if checkpoint is None:
        return Path("eval")
    return Path(checkpoint) / "eval"


def default_corpus(checkpoint: str | None) -> list[str]:
    """The corpus a training run's model learned from: its config names the token shards, whose stats name their
    sources."""
    config = Path(checkpoint) / "config.toml" if checkpoint else None
    if config and config.is_file():
        tokens = load_config(config).data.tokens
        if (Path(tokens) / "stats.json").is_file():
            return TokenizedStats.load(tokens).sources
    raise UserError("task contamination needs --corpus: a `codelm curate` output or files/directories of code")

