"""`codelm curate`: assemble the curation stages as datatrove pipelines and run them.

    1. read sources -> quality filters -> PII redaction -> decontamination
       -> write documents + MinHash signatures            (one task per shard)
    2. LSH buckets -> candidate pairs                      (one task per band)
    3. exact groups + verified near-duplicate clusters     (one task)
    4. drop duplicates -> write curated Parquet shards     (one task per shard)
    5. (repo layout) group files into dependency-ordered repository documents
    6. stats.json + DATA_CARD.md, then the output directory appears atomically

With `dedup.level = "repo"` the repository grouping runs before the
signatures instead, so whole repositories are near-deduplicated. Stages run in
sequence on the local executor, as one Ray job each, or as chained Slurm jobs
(`[executor] kind`). Work happens in OUT.tmp/; a rerun with the same config
reuses the tasks already finished there, and OUT is replaced only at the end.
"""

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from zlib import crc32

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupFilter
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter

from codelm.config import check, fill, knob, to_dict
from codelm.data.card import write_card
from codelm.data.decontam import DecontamConfig, Decontaminate
from codelm.data.dedup import (
    CodeMinhashSignature,
    DedupClusters,
    DedupConfig,
    minhash_config,
)
from codelm.data.filters import CodeQualityFilter, FilterConfig
from codelm.data.pii import PIIConfig, RedactPII
from codelm.data.repo_order import RepoDocuments
from codelm.data.sources import (
    CodeTreeReader,
    KeepSchema,
    StackFields,
    stack_reader,
    stdlib_root,
)
from codelm.errors import UserError


@dataclass
class SourceConfig:
    name: str = knob("stdlib", "the source's name (its output folder and its mix entry)")
    kind: Literal["stdlib", "dir", "jsonl", "parquet"] = knob("stdlib", "stdlib, dir (a directory or git work "
                                                                        "tree), jsonl or parquet (Stack-shaped rows)")
    path: str = knob("", "the directory or file to read (not for stdlib)")
    repo: str = knob("", "dir only: the repository name (default: the directory's name)")
    weight: float = knob(1.0, "share of the training mix (normalised over sources)")
    max_epochs: float = knob(1.0, "at most this many passes over the source in the mix")
    fields: StackFields = field(default_factory=StackFields)

    def check(self):
        if self.kind != "stdlib" and not Path(self.path).exists():
            raise UserError(f"source '{self.name}': path not found: {self.path!r}")
        if self.weight <= 0 or self.max_epochs <= 0:
            raise UserError(f"source '{self.name}': weight and max_epochs must be positive")


@dataclass
class ExecutorConfig:
    kind: Literal["local", "slurm", "ray"] = knob("local", "where the stages run: here, as Slurm jobs, or on Ray")
    tasks: int = knob(0, "shards of the per-document stages; 0: one per CPU core")
    workers: int = knob(0, "tasks run at once (local/ray); 0: one per CPU core")
    slurm_partition: str = knob("", "slurm: the partition to submit to (required for slurm)")
    slurm_time: str = knob("04:00:00", "slurm: each job's time limit")
    slurm_cpus_per_task: int = knob(1, "slurm: CPUs per task")
    slurm_mem_per_cpu_gb: int = knob(2, "slurm: memory per CPU in GB")
    venv_path: str = knob("", "slurm: activated in each job (default: this interpreter's venv)")


@dataclass
class MixConfig:
    seed: int = knob(0, "seeds which documents the mix draws")
    tokens: int = knob(0, "training tokens to draw; 0: as many as the sources' epoch caps allow")


@dataclass
class CurateConfig:
    sources: list[SourceConfig] = knob(
        help="the sources to read ([[sources]] tables; --data replaces them)", factory=lambda: [SourceConfig()]
    )
    layout: Literal["file", "repo"] = knob(
        "file", "file: one document per file; repo: dependency-ordered repository documents"
    )
    filters: FilterConfig = field(default_factory=FilterConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def check(self):
        names = [s.name for s in self.sources]
        if not self.sources or len(set(names)) != len(names):
            raise UserError(f"sources need distinct names, got {names}")
        if self.dedup.level == "repo" and self.layout != "repo":
            raise UserError("dedup.level = 'repo' needs layout = 'repo'")
        if self.executor.kind == "slurm" and not self.executor.slurm_partition:
            raise UserError("executor.slurm_partition is required for the slurm executor")


def load_curate_config(path: str | None = None, data_paths: list[str] = (), overrides: list[str] = ()) -> CurateConfig:
    """A config file, or the stdlib default; `--data` paths replace the configured sources."""
    return with_data(fill(CurateConfig(), path, overrides), data_paths)


def with_data(cfg: CurateConfig, data_paths: list[str]) -> CurateConfig:
    """`--data` paths replace the configured sources, each read as its kind (by extension)."""
    if data_paths:
        cfg.sources = [SourceConfig(name=Path(p).name or "data", kind=_kind_of(p), path=p) for p in data_paths]
        check(cfg)
    return cfg


def _kind_of(path: str) -> str:
    name = Path(path).name
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "dir"


def source_readers(cfg: CurateConfig) -> list[PipelineStep]:
    readers = []
    for s in cfg.sources:
        if s.kind == "stdlib":
            readers.append(
                CodeTreeReader(
                    str(stdlib_root()),
                    repo="python-stdlib",
                    source=s.name,
                    only_python=True,
                    max_bytes=cfg.filters.max_bytes,
                )
            )
        elif s.kind == "dir":
            readers.append(CodeTreeReader(s.path, repo=s.repo, source=s.name, max_bytes=cfg.filters.max_bytes))
        else:
            readers.append(stack_reader(s.path, s.kind, s.fields, s.name))
    return readers


class RankReader(KeepSchema, ParquetReader):
    """Reads what task `rank` of an earlier stage wrote: `pattern` formatted with the rank.

    datatrove readers deal files out round-robin, which misaligns ranks when an
    earlier task wrote nothing; the dedup filter needs task r to see exactly
    the documents that task r signed.
    """

    name = "📒 rank shard"

    def __init__(self, folder: str, pattern: str):
        super().__init__(folder, file_progress=False)
        self.pattern = pattern

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        files = self.data_folder.list_files(glob_pattern=self.pattern.format(rank=rank))
        yield from self.read_files_shard(sorted(files))


class AssignRepoBucket(PipelineStep):
    """Tags each document with the task that will collect its repository (a shuffle by repository)."""

    name = "🪣 repo bucket"

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            doc.metadata["repo_bucket"] = f"{crc32(doc.metadata['repo'].encode()) % world_size:05d}"
            yield doc


def _writer(folder: Path, filename: str) -> ParquetWriter:
    return ParquetWriter(str(folder), output_filename=filename, compression="zstd")


def build_stages(cfg: CurateConfig, work: Path, final: Path) -> list[tuple[str, list, int]]:
    """(title, pipeline, tasks) for each stage, in order."""
    tasks = cfg.executor.tasks or os.cpu_count() or 1
    mh = minhash_config(cfg.dedup)
    sigs, dups, removes = work / "sigs", work / "dups", work / "remove"
    front = [*source_readers(cfg), CodeQualityFilter(cfg.filters)]
    if cfg.pii.enabled:
        front.append(RedactPII(cfg.pii))
    if cfg.decontam.humaneval or cfg.decontam.extra:
        front.append(Decontaminate(cfg.decontam, str(work / "decontam")))
    final_name = "${source}/${rank}.parquet"
    dedup_on = cfg.dedup.exact or cfg.dedup.near
    sign = [_writer(work / "signed", "${rank}.parquet"), CodeMinhashSignature(str(sigs), mh)]
    stages = []
    if cfg.layout == "repo" and cfg.dedup.level == "repo":
        stages.append(
            (
                "read, filter, redact, decontaminate",
                [*front, AssignRepoBucket(), _writer(work / "byrepo", "${repo_bucket}/${rank}.parquet")],
                tasks,
            )
        )
        stages.append(
            (
                "repository documents, signatures",
                [RankReader(str(work / "byrepo"), "{rank:05d}/*.parquet"), RepoDocuments(), *sign],
                tasks,
            )
        )
    else:
        stages.append(("read, filter, redact, decontaminate, sign", [*front, *sign], tasks))
    if dedup_on:
        stages.append(
            (
                "near-duplicate candidates (LSH buckets)",
                [MinhashDedupBuckets(str(sigs), str(dups), config=mh)],
                mh.num_buckets,
            )
        )
        stages.append(
            ("exact + near duplicate clusters", [DedupClusters(str(sigs), str(dups), str(removes), cfg.dedup)], 1)
        )
    keep = [RankReader(str(work / "signed"), "{rank:05d}.parquet")]
    if dedup_on:
        keep.append(MinhashDedupFilter(str(removes)))
    if cfg.layout == "repo" and cfg.dedup.level == "file":
        stages.append(
            (
                "drop duplicates",
                [*keep, AssignRepoBucket(), _writer(work / "byrepo", "${repo_bucket}/${rank}.parquet")],
                tasks,
            )
        )
        stages.append(
            (
                "repository documents",
                [
                    RankReader(str(work / "byrepo"), "{rank:05d}/*.parquet"),
                    RepoDocuments(),
                    _writer(final / "data", final_name),
                ],
                tasks,
            )
        )
    else:
        stages.append(("drop duplicates, write shards", [*keep, _writer(final / "data", final_name)], tasks))
    return stages


class FinishCuration(PipelineStep):
    """The last stage: stats.json and DATA_CARD.md from the logs, then OUT.tmp/final replaces OUT by renames."""

    name = "📝 data card"

    def __init__(self, cfg: CurateConfig, out: str, titles: list[str]):
        super().__init__()
        self.cfg, self.out, self.titles = cfg, out, titles

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        out = Path(self.out)
        tmp = out.with_name(out.name + ".tmp")
        final = tmp / "final"
        write_card(final, tmp / "work", self.titles, to_dict(self.cfg))
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        final.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return iter(())


def _executor(cfg: ExecutorConfig, pipeline: list, tasks: int, logs: Path, depends, title: str):
    workers = min(tasks, cfg.workers or os.cpu_count() or 1)
    if cfg.kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logs))
    if cfg.kind == "ray":
        import ray
        from datatrove.executor.ray import RayPipelineExecutor

        if not ray.is_initialized():  # joins the cluster `ray start` made (or RAY_ADDRESS); else starts a local one
            ray.init(include_dashboard=False, runtime_env={"worker_process_setup_hook": forked_children_die_on_sigterm})
        return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logs), depends=depends)
    from datatrove.executor import SlurmPipelineExecutor

    venv = cfg.venv_path or os.environ.get("VIRTUAL_ENV", "")
    return SlurmPipelineExecutor(
        pipeline,
        tasks=tasks,
        time=cfg.slurm_time,
        partition=cfg.slurm_partition,
        cpus_per_task=cfg.slurm_cpus_per_task,
        mem_per_cpu_gb=cfg.slurm_mem_per_cpu_gb,
        job_name=f"codelm-curate-{title.split()[0]}",
        logging_dir=str(logs),
        venv_path=f"{venv}/bin/activate" if venv else None,
        depends=depends,
    )


def forked_children_die_on_sigterm():
    """Runs in each Ray worker: processes it forks get the default SIGTERM action back.

    datatrove's Ray actor runs its tasks in a forked multiprocess Pool and ends the
    pool with SIGTERM. The fork inherits the Ray worker's Python SIGTERM handler, and
    with it the child sometimes outlives the signal (blocked on the pool's queue; a
    second SIGTERM ends it): the actor joins it forever and the stage hangs (about
    half the local runs here). A plain multiprocessing worker has the default action,
    so that is what the fork gets. Installed when codelm starts or joins Ray itself."""
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


@contextlib.contextmanager
def stderr_to(path: Path):
    """Send this process's and its workers' stderr (datatrove's banners and stats tables) to a log file.

    The file descriptor itself is redirected, so worker processes inherit it; if the
    stage fails, the log's last lines are shown with the error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
        yield
    except BaseException:
        sys.stderr.flush()
        os.dup2(saved, 2)
        tail = path.read_text(errors="replace").splitlines()[-20:]
        print(f"\n[curate] stage failed; last lines of {path}:\n" + "\n".join(tail), file=sys.stderr, flush=True)
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def curate(cfg: CurateConfig, out: str | Path) -> Path:
    """Run every stage (local/ray: to completion; slurm: submits the chained jobs and returns)."""
    out = Path(out).absolute()
    tmp = out.with_name(out.name + ".tmp")
    fingerprint = json.dumps(to_dict(cfg), sort_keys=True, default=str)
    marker = tmp / "config.json"
    if not (marker.is_file() and marker.read_text() == fingerprint):
        shutil.rmtree(tmp, ignore_errors=True)  # a different config: nothing in there can be reused
        tmp.mkdir(parents=True)
        marker.write_text(fingerprint)
    stages = build_stages(cfg, tmp / "work", tmp / "final")
    titles = [title for title, _, _ in stages]
    stages.append(("data card", [FinishCuration(cfg, str(out), titles)], 1))
    previous = None
    for i, (title, pipeline, tasks) in enumerate(stages):
        print(
            f"[curate] stage {i + 1}/{len(stages)}: {title} ({tasks} task{'s' * (tasks > 1)}) ...", end="", flush=True
        )
        logs = tmp / "work" / "logs" / f"{i + 1:02d}"
        executor = _executor(cfg.executor, pipeline, tasks, logs, previous, title)
        start = time.perf_counter()
        with stderr_to(logs / "console.log"):
            executor.run()
        print(f" {time.perf_counter() - start:.1f}s", flush=True)
        previous = executor
    if cfg.executor.kind == "slurm":
        print(
            f"[curate] submitted {len(stages)} chained Slurm jobs; {out} appears when the last one finishes "
            f"(logs and intermediate files stay in {tmp})"
        )
    else:
        shutil.rmtree(out / "logs", ignore_errors=True)
        (tmp / "work" / "logs").rename(out / "logs")  # datatrove's per-task logs and stats, one folder per stage
        shutil.rmtree(tmp)
    return out
