"""`codelm eval`: tasks on a checkpoint (codelm.eval.runner); the settings it ran with go to OUT/config.toml."""

from codelm.cli.options import Settings, add_command, resolve, sections_root, write_config
from codelm.config import EvalConfig

SETTINGS = Settings(sections_root("eval", eval=EvalConfig), ("eval",), every_field=True,
                    flags={"--threshold": "eval.contamination_threshold"})


def eval_(sub, name, text):
    add_command(sub, name, text, (
        "Run evaluation tasks and write OUT/results.json, OUT/samples.jsonl (every completion with its prompt, "
        "status and error), OUT/report.md and OUT/config.toml (`--config OUT/config.toml` reruns it); a training "
        "run's report.md gains the evaluation section. Generated code runs only in the sandbox. Tasks: humaneval "
        "(pass@k, unbiased estimator), humaneval-infill-single and humaneval-infill-multi (fill-in-the-middle on "
        "HumanEval's solutions), mbpp, humaneval+ and mbpp+ (from their published files), bpb (bits per byte on "
        "--data, per language), contamination (the benchmarks' overlap with --corpus)."), run, SETTINGS)


def run(args):
    from codelm.eval.runner import Evaluation
    from codelm.report import is_run_dir, report_title, write_eval_report, write_report

    root = resolve(args)
    evaluation = Evaluation(root.eval)
    results = evaluation.run()
    write_eval_report(evaluation.out, results)
    write_config(root, SETTINGS, evaluation.out / "config.toml")
    run_dir = evaluation.out.parent
    if evaluation.out.name == "eval" and is_run_dir(run_dir):  # the run report reads RUN/eval/results.json
        write_report(run_dir, title=report_title(run_dir))
    print(f"results -> {evaluation.out}/results.json, samples.jsonl, report.md, config.toml")
