"""report.md for a run, built only from the files the stages wrote into the run directory.

Reads config.toml, metrics.jsonl, the tokenized corpus's stats.json,
samples.json and eval/results.json (`codelm eval`), and writes report.md with a
loss-curve PNG beside it. `codelm eval` also writes its section on its own, as
eval/report.md with a pass@k-against-k plot.
"""

import json
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from codelm.config import CODE_TASKS  # noqa: E402
from codelm.data.card import load_stats, stats_table  # noqa: E402
from codelm.data.corpus import TokenizedStats  # noqa: E402
from codelm.eval.bpb import Compression  # noqa: E402
from codelm.eval.contamination import excerpt_line  # noqa: E402
from codelm.eval.results import EvalResults  # noqa: E402
from codelm.eval.uncertainty import UncertaintyReport  # noqa: E402
from codelm.io import atomic_write_json, atomic_write_text  # noqa: E402
from codelm.precision import PrecisionChoice  # noqa: E402
from codelm.train.metrics import TrainPoint, ValPoint, read_metrics  # noqa: E402

BENCHMARKS = {"humaneval": "HumanEval", "mbpp": "MBPP", "humaneval+": "HumanEval+", "mbpp+": "MBPP+"}
ANSWERS = {"greedy": "greedy", "majority": "largest behaviour cluster (majority vote)",
           "sampled": "a random sample (pass@1 of the samples)",
           "codet": "dual agreement with the model's own tests (CodeT)"}
SCORE_NAMES = {"semantic_entropy": "semantic entropy (discrete)",
               "weighted_semantic_entropy": "semantic entropy (likelihood-weighted)",
               "naive_entropy": "naive entropy (samples' mean token NLL)",
               "neg_mean_logprob": "greedy answer's mean token NLL", "clusters": "number of behaviour clusters",
               "greedy_disagreement": "share of samples behaving unlike the greedy answer"}


@dataclass
class RunSummary:
    """summary.json: what only the speedrun knows about its run (the sizing plan, baselines on the same text)."""
    step: int
    bpb: float  # final, whole validation split
    loss: float
    params: int
    unigram_loss: float  # the loss of a model that ignores context
    compression: Compression
    plan: str  # the sizing decision, as text
    wall_minutes: float

    def save(self, path: Path):
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "RunSummary":
        d = json.loads(Path(path).read_text())
        return cls(**{**d, "compression": Compression(**d["compression"])})


def plot_losses(train: list[TrainPoint], val: list[ValPoint], path: Path, baseline: float | None = None):
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r.step for r in train], [r.loss for r in train], lw=0.8, alpha=0.6, label="train loss")
    periodic = [r for r in val if not r.final]
    if periodic:
        ax.plot([r.step for r in periodic], [r.loss for r in periodic], "o-", label="validation loss (subset)")
    for r in val:
        if r.final:
            ax.plot([r.step], [r.loss], "D", color="black", label="final, whole validation split")
    if baseline:
        ax.axhline(baseline, color="gray", ls="--", lw=0.8, label=f"unigram baseline ({baseline:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_ylim(top=min(max(r.loss for r in train), (baseline or 10) + 2))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_rollouts(run_dir: Path) -> Path | None:
    """rewards.png of a `codelm rl` run: each rollout's mean reward with its spread, and the share of groups with
    no spread (no learning signal), from rollouts.jsonl; the held-out pass rates of rl.json as two marks."""
    path = run_dir / "rollouts.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    steps = [r["step"] for r in records]
    mean = [r["reward_mean"] for r in records]
    std = [r["reward_std"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, mean, "-", lw=1, label="mean reward (pass rate of the rollout)")
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.15)
    ax.plot(steps, [r["zero_spread_groups"] for r in records], ":", lw=1, label="groups with zero spread")
    held = json.loads((run_dir / "rl.json").read_text()) if (run_dir / "rl.json").is_file() else {}
    for when, x, marker in (("before", 0, "o"), ("after", steps[-1] if steps else 0, "D")):
        if when in held:
            ax.plot([x], [held[when]["pass_rate"]], marker, color="black", label=f"held-out greedy pass@1 {when}")
    ax.set_xlabel("step")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = run_dir / "rewards.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def _table(rows: list[tuple]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def write_report(run_dir: str | Path, title: str = "codelm run") -> Path:
    run_dir = Path(run_dir)
    cfg = tomllib.loads((run_dir / "config.toml").read_text())
    train, val = read_metrics(run_dir / "metrics.jsonl")
    tokens_dir = Path(cfg["data"]["tokens"])
    data_stats = TokenizedStats.load(tokens_dir) if (tokens_dir / "stats.json").is_file() else None
    summary_path = run_dir / "summary.json"
    summary = RunSummary.load(summary_path) if summary_path.is_file() else None
    samples_path = run_dir / "samples.json"
    samples = json.loads(samples_path.read_text()) if samples_path.is_file() else []
    precision_path = run_dir / "precision.json"
    precision = PrecisionChoice.load(precision_path) if precision_path.is_file() else None
    plot_losses(train, val, run_dir / "loss.png", summary.unigram_loss if summary else None)

    m, o, t, d = cfg["model"], cfg["optim"], cfg["train"], cfg["data"]
    final = next((r for r in reversed(val) if r.final), val[-1] if val else None)
    timed = [r for r in train if r.tok_s is not None]
    sections = [f"# {title}", ""]
    compression = asdict(summary.compression) if summary else {}
    sections += ["## Result", "", _table([
        ("validation bits per byte", f"**{final.bpb:.4f}**" if final else "-"),
        *[(f"{name} on the same validation text", f"{compression[key]:.4f} bits per byte")
          for key, name in (("gzip", "gzip -9"), ("xz", "xz -9e")) if key in compression],
        ("validation loss (nats/token)", f"{final.loss:.4f}" if final else "-"),
        ("unigram baseline loss", f"{summary.unigram_loss:.4f}" if summary else "-"),
        ("validation tokens / bytes", f"{final.tokens:,} / {final.bytes:,}" if final else "-"),
        ("steps", f"{train[-1].step if train else 0:,}"),
        ("training tokens", f"{train[-1].tokens if train else 0:,}"),
        ("training time", f"{timed[-1].elapsed / 60:.1f} min" if timed else "-"),
        ("throughput", f"{sum(r.tok_s for r in timed) / len(timed):,.0f} tokens/s" if timed else "-"),
        (f"MFU (of the measured {precision.precision if precision else ''} matmul peak)",
         f"{100 * sum(r.mfu for r in timed) / len(timed):.1f}%" if timed else "-"),
    ]), "", "![loss curve](loss.png)", ""]
    if summary:
        sections += ["## Machine and model size", "", summary.plan, ""]
    sections += ["## Settings", "", _table([
        ("model", f"{m['n_layers']} layers, dim {m['dim']}, {m['n_heads']} heads ({m['n_kv_heads']} kv), "
                  f"vocab {m['vocab_size']}, context {d['seq_len']}, tied embeddings {m['tie_embeddings']}"),
        ("parameters", f"{summary.params / 1e6:.2f}M" if summary else "-"),
        ("optimizer", (f"Muon lr {o['muon_lr']:g} (hidden matrices) + AdamW lr {o['lr']:g}" if o.get("name") == "muon"
                       else f"AdamW lr {o['lr']:g}") + f", {o['schedule']} schedule, warmup {o['warmup_steps']}, "
                      f"weight decay {o['weight_decay']:g}, clip {o['grad_clip']:g}"),
        ("batch", f"{t['batch_tokens'] or t['micro_batch'] * d['seq_len']:,} tokens, micro batch {t['micro_batch']}"),
        ("precision", _precision_text(t["precision"], precision)),
        ("FIM", f"rate {d['fim_rate']:g}, SPM share {d['fim_spm_rate']:g}"),
        ("seed", t["seed"]),
    ]), ""]
    if data_stats:
        train_split, val_split = data_stats.splits["train"], data_stats.splits["val"]
        mix = ", ".join(f"{name} {m.share:.1%} of tokens ({m.epochs:g} epochs)" for name, m in data_stats.mix.items())
        sections += ["## Data", "", _table([
            ("sources", ", ".join(data_stats.sources)),
            ("mix", mix),
            ("train", f"{train_split.docs:,} files, {train_split.bytes:,} bytes, {train_split.tokens:,} tokens"),
            ("validation", f"{val_split.docs:,} files, {val_split.bytes:,} bytes, {val_split.tokens:,} tokens "
                           f"(split by path hash, {data_stats.val_fraction:g})"),
        ]), ""]
        curated = data_stats.sources[0] if len(data_stats.sources) == 1 else ""
        if (Path(curated) / "stats.json").is_file():
            sections += [f"### Curation ({curated}/DATA_CARD.md)", "", stats_table(load_stats(curated)), ""]
    eval_results = run_dir / "eval" / "results.json"
    if eval_results.is_file():
        sections += eval_section(EvalResults.load(eval_results), "eval/")
    sections += chat_section(run_dir)
    if samples:
        sections += ["## Samples (greedy)", ""]
        for s in samples:
            sections += [f"**{s['kind']}**", "", "```python", s["text"], "```", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(sections))
    return path


def chat_section(run_dir: Path) -> list[str]:
    """The speedrun's SFT stage: HumanEval asked as a chat of the pretrained model and of its fine-tune."""
    found = {name: run_dir / "chat" / key / "results.json" for name, key in
             (("pretrained", "pretrained"), ("after SFT", "sft"))}
    if not all(path.is_file() for path in found.values()):
        return []
    scores = {name: EvalResults.load(path).tasks["humaneval"] for name, path in found.items()}
    _, sft_val = read_metrics(run_dir / "sft" / "metrics.jsonl")
    final = next((r for r in sft_val if r.final), None)
    pretrained, tuned = scores.values()
    lines = ["## Chat behaviour before and after SFT", "",
             "Instructions mined from the curated corpus (`data/instructions.jsonl`, `codelm synth mine`), one "
             "pass of `codelm sft` on those that fit the context (`sft/`), then HumanEval's 164 problems asked "
             "in the chat template, greedy (`chat/`).", "",
             "| | pretrained | after SFT |", "|---|---:|---:|",
             f"| HumanEval pass@1, asked as a chat | {100 * pretrained.pass_at_k['1']:.1f}% | "
             f"{100 * tuned.pass_at_k['1']:.1f}% |",
             f"| replies whose code defines the function asked for | {100 * pretrained.defines_entry_point:.0f}% | "
             f"{100 * tuned.defines_entry_point:.0f}% |", ""]
    if final:
        lines += [f"SFT held-out loss on the assistant's tokens: {final.loss:.4f} nats/token.", ""]
    return lines


def _precision_text(requested: str, choice: PrecisionChoice | None) -> str:
    """What ran and why (the probe's timings), as the training log said it, plus the peak MFU is measured against."""
    if choice is None:
        return requested
    peak = f"; matmul peak {choice.peak_flops / 1e9:.0f} GFLOP/s" if choice.peak_flops else ""
    return choice.describe().removeprefix("precision ") + peak


def plot_pass_at_k(curve: dict[str, float], path: Path, label: str):
    """pass@k for every k from 1 to n: how much drawing more samples buys."""
    ks = [int(k) for k in curve]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot(ks, [100 * v for v in curve.values()], "o-", label=label)
    if len(ks) > 4:
        ax.set_xscale("log")
    ax.set_xticks(ks if len(ks) <= 10 else [k for k in ks if k in (1, 2, 5, 10, 20, 50, 100, 200)], minor=False)
    ax.set_xticklabels([str(t) for t in ax.get_xticks().astype(int)])
    ax.set_xlabel("k (samples drawn)")
    ax.set_ylabel("pass@k (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def eval_section(results: EvalResults, image_dir: str = "") -> list[str]:
    """The evaluation section: one table of headline numbers, then per-task detail."""
    tasks, s = results.tasks, results.settings
    decoding = "greedy" if s.temperature == 0 else f"temperature {s.temperature:g}, top-p {s.top_p:g}"
    rows = []
    code = {name: tasks[name] for name in CODE_TASKS if name in tasks}
    for name, h in code.items():
        shots = f", {h.few_shot}-shot" if h.few_shot else ""
        for k, v in h.pass_at_k.items():
            rows.append((f"{BENCHMARKS[name]} pass@{k}", f"**{100 * v:.1f}%** ({h.problems} problems, n={h.n}, "
                                                         f"{h.prompting} prompting{shots}, {decoding})"))
        rows.append((f"{BENCHMARKS[name]} outcomes", ", ".join(f"{k} {v}" for k, v in sorted(h.statuses.items()))))
    for name in ("humaneval-infill-single", "humaneval-infill-multi"):
        if name in tasks:
            t = tasks[name]
            rows.append((f"{name} pass@1 / exact match", f"**{100 * t.pass_at_1:.1f}%** / {100 * t.exact_match:.1f}% "
                                                        f"({t.tasks} of {t.of} tasks)"))
    bpb = tasks.get("bpb")
    if bpb:
        o = bpb.overall
        rows.append(("bits per byte", f"**{o.bpb:.4f}** ({o.documents} files, {o.bytes:,} bytes)"))
    c = tasks.get("contamination")
    if c:
        rows.append(("contamination", f"{c.flagged} of {len(c.items)} benchmark items flagged (longest copy "
                                      f">= {c.threshold:.0%} of the item) in {c.documents} documents"))
    lines = ["## Evaluation", "", f"Checkpoint `{results.checkpoint}`; sandbox isolation: "
             f"{results.sandbox_isolation or '-'}; {results.seconds:.0f} s.", "", _table(rows), ""]
    for name, h in code.items():
        if h.n > 1:
            lines += [f"![{BENCHMARKS[name]} pass@k against k]({image_dir}{image_name('pass_at_k', name)})", ""]
        if h.uncertainty:
            lines += uncertainty_section(BENCHMARKS[name], h.uncertainty, image_dir + image_name("rejection", name))
    if bpb and len(bpb.languages) > 1:
        lines += ["| language | files | bytes | bits per byte |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {r.documents} | {r.bytes:,} | {r.bpb:.4f} |" for name, r in bpb.languages.items()] + [""]
    if c:
        lines += ["Largest overlaps with the training corpus:", "",
                  "| item | longest copy (tokens) | share of item | n-grams found | where | excerpt |",
                  "|---|---:|---:|---:|---|---|"]
        lines += [f"| {i.item}{' **flagged**' if i.flagged else ''} | {i.longest} | {i.longest_fraction:.0%} "
                  f"| {i.ngram_fraction:.0%} | {i.document} | `{excerpt_line(i.excerpt)}` |"
                  for i in c.items[:10]] + [""]
    return lines


def uncertainty_section(label: str, u: UncertaintyReport, image: str) -> list[str]:
    """`--uncertainty`: pass@1 of each way to pick an answer, and how well each score predicts failure."""
    lines = [f"### {label}: uncertainty and selection by behaviour", ""]
    if not u.problems:
        return lines + [
            f"No problem could be scored ({u.left_out} left out: no shared input could be built, or the "
            "prompt did not fit).",
            "",
        ]
    lines += [
        f"{u.problems} problems scored ({u.left_out} left out: no shared input could be built, or the prompt "
        f"did not fit), {u.n} samples each plus the greedy answer, every program run on {u.inputs:.1f} shared "
        f"inputs on average, {u.clusters:.1f} behaviour clusters per problem on average. Brackets: 95% "
        f"bootstrap intervals over problems ({u.bootstrap} resamples)."
        + (
            f" The model wrote {u.model_tests:.1f} usable tests per problem on average (CodeT's dual agreement)."
            if "codet" in u.pass_at_1
            else ""
        ),
        "",
        "| answer | pass@1 |",
        "|---|---:|",
    ]
    lines += [f"| {ANSWERS[name]} | {estimate.text(percent=True)} |" for name, estimate in u.pass_at_1.items()]
    lines += [
        "",
        "| uncertainty score | AUROC: greedy answer fails | AUROC: majority answer fails | AURAC (greedy) |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {SCORE_NAMES[score]} | {u.auroc['greedy'][score].text()} | {u.auroc['majority'][score].text()} | "
        f"{u.aurac[score].text()} |"
        for score in u.auroc["greedy"]
    ]
    lines += [
        f"| oracle (failures refused first) | | | {u.aurac['oracle'].text()} |",
        "",
        f"![accuracy of the greedy answers kept against the share refused]({image})",
        "",
    ]
    return lines


def plot_rejection(curves: dict[str, list[float]], path: Path, label: str):
    """Accuracy-rejection curves: the greedy answers' accuracy on the problems kept, most uncertain refused first."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for score, curve in curves.items():
        shares = [100 * k / len(curve) for k in range(len(curve))]
        style = {"ls": "--", "color": "gray"} if score == "oracle" else {}
        ax.plot(shares, [100 * a for a in curve], label=SCORE_NAMES.get(score, "oracle"), **style)
    if curves:
        ax.axhline(100 * next(iter(curves.values()))[0], color="black", lw=0.8, ls=":", label="random refusal")
    ax.set_xlabel("problems refused, most uncertain first (%)")
    ax.set_ylabel("greedy pass@1 on the rest (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def image_name(kind: str, task: str) -> str:
    """pass_at_k.png for HumanEval (its name before other benchmarks came), KIND_TASK.png for the others."""
    return f"{kind}.png" if task == "humaneval" and kind == "pass_at_k" else f"{kind}_{task.replace('+', '_plus')}.png"


def write_eval_report(out: Path, results: EvalResults) -> Path:
    """OUT/report.md (with its pass@k and accuracy-rejection plots) for the results of one `codelm eval`."""
    for name in CODE_TASKS:
        h = results.tasks.get(name)
        if h and h.n > 1:  # with one sample per problem there is only pass@1
            plot_pass_at_k(h.curve, out / image_name("pass_at_k", name), f"{BENCHMARKS[name]}, n={h.n}")
        if h and h.uncertainty and h.uncertainty.problems:
            plot_rejection(h.uncertainty.curves, out / image_name("rejection", name), f"{BENCHMARKS[name]}, n={h.n}")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(["# codelm eval", "", *eval_section(results)]))
    return path


def is_run_dir(path: Path) -> bool:
    """A training run's directory: what write_report reads is there."""
    return (path / "metrics.jsonl").is_file() and (path / "config.toml").is_file()


def report_title(run_dir: Path) -> str:
    """The run report's existing title, kept when the report is rewritten with new sections."""
    report = run_dir / "report.md"
    first = report.read_text().split("\n", 1)[0] if report.is_file() else ""
    return first[2:] if first.startswith("# ") else "codelm run"
