"""Semantic entropy for code and selection by behaviour agreement: what `codelm eval --uncertainty` measures.

Semantic entropy (Farquhar et al., Nature 2024) samples several answers,
groups those that mean the same, and takes the entropy over the groups: a
model unsure of the answer spreads its samples over many meanings, while one
that only rephrases a single answer does not. For code, meaning is behaviour:
programs with the same outcome on every shared input (codelm.tasks.behaviour:
the returned value, the exception type, or a timeout) are one cluster.

Per problem, from the n samples and the greedy answer:
- clusters: how many behaviours the samples show;
- semantic_entropy (discrete): -sum_c p_c ln p_c, p_c the share of samples in c;
- weighted_semantic_entropy: p_c the samples' normalized likelihood in c, a
  sample's likelihood being its mean token log-prob exponentiated (length-
  normalized, as Farquhar et al.'s code does; the engine's log-probs are the
  model's own, before temperature);
- naive_entropy: minus the samples' mean token log-prob, averaged: the
  length-normalized predictive entropy with no clustering (their baseline);
- neg_mean_logprob: minus the greedy answer's mean token log-prob;
- greedy_disagreement: the share of samples whose behaviour differs from the
  greedy answer's.
Selection (MBR-exec, AlphaCode's clustering, self-consistency over behaviour):
the majority answer is the first-drawn sample of the largest cluster, among
programs that returned a value on some input (a program that only crashes is
not an answer; if none returned anything, among all); ties go to the cluster
drawn first. Its pass@1 is reported beside the greedy answer's and the
samples' (pass@1 of a random sample). With the model's own tests (--codet),
CodeT's dual agreement (codelm.tasks.model_tests) picks one more answer.

Over problems (codelm.eval.rejection): AUROC of every score for predicting that
the greedy answer fails, and that the majority answer fails; AURAC and the
accuracy-rejection curve of the greedy answers; bootstrap 95% intervals.
Problems where no input could be built (no example in the prompt, no usable
annotation) are left out and counted, as are prompts that do not fit the
context: their programs could only be compared by whether they load.
"""

import math
from dataclasses import dataclass, field

from codelm.eval.rejection import Estimate, aurac, auroc, bootstrap, rejection_curve
from codelm.tasks.model_tests import dual_agreement

SCORES = ("semantic_entropy", "weighted_semantic_entropy", "naive_entropy", "neg_mean_logprob", "clusters",
          "greedy_disagreement")
CURVE_POINTS = 20  # the curve is kept at 0%, 5%, ... 95% refused


@dataclass
class ProblemUncertainty:
    """One problem's scores and answers: a row of OUT/uncertainty.jsonl."""
    id: str
    inputs: int
    clusters: int
    largest: int  # samples in the largest cluster
    semantic_entropy: float
    weighted_semantic_entropy: float
    naive_entropy: float
    neg_mean_logprob: float
    greedy_disagreement: float
    greedy_passed: bool
    majority_passed: bool
    majority_sample: int  # which sample the majority vote chose
    sample_pass_rate: float
    sample_clusters: list[int] = field(default_factory=list)  # cluster of each sample, numbered in draw order
    model_tests: int = 0  # --codet: the model's tests parsed for this problem
    codet_passed: bool | None = None  # --codet: does the answer dual agreement picks pass the hidden tests
    codet_sample: int | None = None  # which sample dual agreement chose (the majority's when no test passed)


def cluster_ids(vectors: list[tuple]) -> list[int]:
    """Each program's cluster, numbered in order of first appearance: equal outcome vectors, equal cluster."""
    seen: dict[tuple, int] = {}
    return [seen.setdefault(v, len(seen)) for v in vectors]


def entropy(mass: dict[int, float]) -> float:
    """Entropy in nats of the distribution proportional to the clusters' masses (0 for one cluster, exactly)."""
    total = sum(mass.values())
    return max(0.0, -sum(m / total * math.log(m / total) for m in mass.values() if m > 0))


def discrete_entropy(ids: list[int]) -> float:
    """Entropy over clusters with each sample counted once."""
    return entropy({c: ids.count(c) for c in set(ids)})


def weighted_entropy(ids: list[int], logliks: list[float]) -> float:
    """Entropy over clusters with each sample weighted by its likelihood."""
    top = max(logliks)
    mass: dict[int, float] = {}
    for c, x in zip(ids, logliks):
        mass[c] = mass.get(c, 0.0) + math.exp(x - top)
    return entropy(mass)


def mean_logprob(logprobs: list[float]) -> float:
    """A completion's length-normalized log-likelihood (0 for an empty one)."""
    return sum(logprobs) / len(logprobs) if logprobs else 0.0


def answered(vector: tuple) -> bool:
    """Did the program return a value on some input (rather than only crash, time out or fail to load)?"""
    return any(outcome.startswith("value:") for outcome in vector)


def majority(vectors: list[tuple]) -> int:
    """The sample the behaviour vote picks: the first of the largest cluster among programs that answered."""
    ids = cluster_ids(vectors)
    voters = [i for i, v in enumerate(vectors) if answered(v)] or list(range(len(vectors)))
    sizes = {c: sum(ids[i] == c for i in voters) for c in {ids[i] for i in voters}}
    best = max(sizes.values())
    return next(i for i in voters if sizes[ids[i]] == best)


def problem_uncertainty(problem_id: str, inputs: int, greedy: tuple, samples: list[tuple],
                        greedy_logprobs: list[float], sample_logprobs: list[list[float]], greedy_passed: bool,
                        samples_passed: list[bool],
                        test_passes: list[tuple[bool, ...]] | None = None) -> ProblemUncertainty:
    """Scores and answers of one problem from its programs' outcome vectors, log-probs and test results;
    `test_passes` (--codet): which of the model's tests each sample passes."""
    ids = cluster_ids(samples)
    logliks = [mean_logprob(lp) for lp in sample_logprobs]
    chosen = majority(samples)
    codet = None
    if test_passes is not None:
        picked = dual_agreement(test_passes)
        codet = chosen if picked is None else picked
    return ProblemUncertainty(
        id=problem_id, inputs=inputs, clusters=len(set(ids)), largest=max(ids.count(c) for c in set(ids)),
        semantic_entropy=discrete_entropy(ids), weighted_semantic_entropy=weighted_entropy(ids, logliks),
        naive_entropy=-sum(logliks) / len(logliks), neg_mean_logprob=-mean_logprob(greedy_logprobs),
        greedy_disagreement=sum(v != greedy for v in samples) / len(samples), greedy_passed=greedy_passed,
        majority_passed=samples_passed[chosen], majority_sample=chosen,
        sample_pass_rate=sum(samples_passed) / len(samples_passed), sample_clusters=ids,
        model_tests=len(test_passes[0]) if test_passes else 0,
        codet_passed=None if codet is None else samples_passed[codet], codet_sample=codet)


@dataclass
class UncertaintyReport:
    """The summary over problems, in results.json beside the task's pass@k."""
    problems: int  # scored (with at least one shared input)
    left_out: int  # no shared input could be built, or the prompt did not fit the context
    n: int  # samples per problem
    inputs: float  # shared inputs per scored problem, mean
    clusters: float  # behaviours per scored problem, mean
    pass_at_1: dict[str, Estimate]  # greedy, majority (behaviour vote), sampled (a random sample), codet (--codet)
    auroc: dict[str, dict[str, Estimate]]  # target (greedy | majority) -> score -> AUROC for predicting its failure
    aurac: dict[str, Estimate]  # score -> AURAC of the greedy answers; "oracle" refuses the failures first
    curves: dict[str, list[float]]  # score -> greedy accuracy at 0%, 5%, ... 95% of problems refused
    bootstrap: int  # resamples behind every interval
    model_tests: float = 0.0  # --codet: usable tests the model wrote per scored problem, mean

    @classmethod
    def from_json(cls, d: dict) -> "UncertaintyReport":
        return cls(**{**d, "pass_at_1": {k: Estimate(**v) for k, v in d["pass_at_1"].items()},
                      "auroc": {t: {k: Estimate(**v) for k, v in s.items()} for t, s in d["auroc"].items()},
                      "aurac": {k: Estimate(**v) for k, v in d["aurac"].items()}})

    def summary(self) -> str:
        scores = ", ".join(f"{name} {self.auroc['greedy'][name].text()}" for name in
                           ("semantic_entropy", "naive_entropy", "neg_mean_logprob"))
        picks = ", ".join(f"{name} {estimate.text(percent=True)}" for name, estimate in self.pass_at_1.items())
        return f"uncertainty over {self.problems} problems: AUROC for greedy failure: {scores}; pass@1: {picks}"


def summarize(records: list[ProblemUncertainty], n: int, left_out: int, resamples: int,
              seed: int = 0) -> UncertaintyReport:
    """AUROC, AURAC and pass@1 of each selection over the problems, with bootstrap intervals."""
    def over(pick):
        return lambda idx: [pick(records[i]) for i in idx]

    def mean(values):
        return sum(values) / len(values) if values else None

    passed = {"greedy": lambda r: r.greedy_passed, "majority": lambda r: r.majority_passed}
    answers = [*passed.items(), ("sampled", lambda r: r.sample_pass_rate)]
    if records and records[0].codet_passed is not None:
        answers.append(("codet", lambda r: r.codet_passed))
    pass_at_1 = {name: bootstrap(lambda idx, p=p: mean(over(p)(idx)), len(records), resamples, seed)
                 for name, p in answers}
    roc = {target: {score: bootstrap(lambda idx, s=score, p=p: auroc(over(lambda r: getattr(r, s))(idx),
                                                                     [not x for x in over(p)(idx)]),
                                     len(records), resamples, seed)
                    for score in SCORES} for target, p in passed.items()}
    ranked = {score: (lambda r, s=score: getattr(r, s)) for score in SCORES} | {"oracle": lambda r: -r.greedy_passed}
    area = {score: bootstrap(lambda idx, f=f: aurac(over(f)(idx), over(passed["greedy"])(idx)), len(records),
                             resamples, seed) for score, f in ranked.items()}
    curves = {}
    for score, f in ranked.items():
        curve = rejection_curve([f(r) for r in records], [r.greedy_passed for r in records])
        curves[score] = [curve[int(k * len(curve) / CURVE_POINTS)] for k in range(CURVE_POINTS)] if curve else []
    return UncertaintyReport(problems=len(records), left_out=left_out, n=n,
                             inputs=mean([r.inputs for r in records]) or 0.0,
                             clusters=mean([r.clusters for r in records]) or 0.0, pass_at_1=pass_at_1, auroc=roc,
                             aurac=area, curves=curves, bootstrap=resamples,
                             model_tests=mean([r.model_tests for r in records]) or 0.0)
