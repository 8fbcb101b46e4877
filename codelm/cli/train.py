"""Training commands: pretrain and the post-training recipes, one trainer underneath (codelm.train.loop).

Each reads the sections of Config that RECIPE_SECTIONS names, starting from its default TOML in
codelm/configs/; the shortcut flags below are the only flags, everything else is `--set section.key=value`.
"""

import importlib
from pathlib import Path

from codelm.cli.options import CONFIGS, Settings, add_command, resolve
from codelm.config import RECIPE_SECTIONS, Config

LORA = {"--lora-r": "lora.r", "--lora-alpha": "lora.alpha", "--lora-targets": "lora.targets",
        "--rslora": "lora.rslora"}
START = {"--init-from": "train.init_from", "--out": "train.out_dir"}
PAIRS = {"--pairs": "pairs.file", "--from-tasks": "pairs.from_tasks", "--chat": "pairs.chat"}
ALIASES = {  # each recipe's shortcut flags: the one table of them
    "pretrain": {**LORA},
    "sft": {**START, "--data": "sft.data", **LORA},
    "distill": {**START, "--data": "sft.data", "--teacher": "distill.teacher", **LORA},
    "rl": {**START, "--tasks": "rl.tasks", "--chat": "rl.chat", **LORA},
    "dpo": {**START, **PAIRS, "--reference": "dpo.reference", **LORA},
    "reward-model": {**START, **PAIRS},
}
DEFAULT_FILES = {"pretrain": None, "sft": "sft.toml", "distill": "sft.toml", "rl": "rl.toml", "dpo": "dpo.toml",
                 "reward-model": "reward_model.toml"}
DESCRIPTIONS = {
    "pretrain": "Pretrain with the config's settings (next-token prediction plus fill-in-the-middle), or continue "
                "pretraining train.init_from. Multi-process: torchrun --nproc_per_node N -m codelm pretrain ... "
                "(DDP; train.parallel=fsdp shards weights and optimizer state).",
    "sft": "Fine-tune a checkpoint (codelm or imported) on chat data, learning only the assistant's tokens. Data: "
           "JSONL with 'messages', 'prompt'/'completion' or 'instruction'/'response' per line, rendered with the "
           "checkpoint's chat template (ChatML for codelm models) and packed whole into rows of data.seq_len "
           "tokens (0: the checkpoint's context); longer examples are dropped and counted.",
    "distill": "Train a student checkpoint to match a teacher's next-token distributions on the assistant tokens of "
               "chat data (as sft reads it): forward KL (distill.beta=0), reverse KL (1) or the generalized JSD "
               "between them; distill.on_policy is the share of batches made of the student's own replies (GKD).",
    "rl": "Sample rl.samples programs for each of rl.prompts_per_step tasks, run them against the tasks' tests in "
          "the sandbox (passed: reward 1) and update with the policy-gradient core: GRPO by default; DAPO, Dr. GRPO, "
          "RLOO or REINFORCE by the rl.* keys below (docs/commands/rl.md gives the settings for each). Writes "
          "rollouts.jsonl, reward_audit.jsonl, rl.json (held-out greedy pass@1 before and after) and rewards.png.",
    "dpo": "Train on (prompt, chosen, rejected) pairs with the DPO or IPO loss against a reference whose log-probs "
           "are computed once. Pairs: a JSONL file, or --from-tasks: the policy samples programs per task and a "
           "passing one is paired with a failing one. Writes dpo.json (held-out reward accuracy).",
    "reward-model": "Add a scalar head to a checkpoint and train the whole model with the Bradley-Terry loss on "
                    "pairs (as dpo reads them). Writes reward_model.json; `codelm rl --set rl.reward_model=OUT` "
                    "then uses its score as the reward.",
}


def settings_for(recipe: str) -> Settings:
    default = DEFAULT_FILES[recipe]
    return Settings(Config, RECIPE_SECTIONS[recipe], flags=ALIASES[recipe],
                    default_file=CONFIGS / default if default else None)


def add_recipe(sub, name: str, text: str):
    parser = add_command(sub, name, text, DESCRIPTIONS[name], run, settings_for(name))
    parser.add_argument("--resume", action="store_true", help="continue from train.out_dir/checkpoints/latest")
    if name not in ("pretrain", "reward-model"):  # recipes whose result generates text
        parser.add_argument("--humaneval", type=int, nargs="?", const=0, metavar="LIMIT",
                            help="then ask HumanEval as chats of the result, greedy, into OUT/eval (LIMIT: the first "
                            "LIMIT problems; all 164 without it)")


def run(args):
    module = args.command.replace("-", "_")
    train = getattr(importlib.import_module(f"codelm.train.{module}"), module)
    cfg = resolve(args)
    result = train(cfg, resume=args.resume)
    if args.command == "rl":
        from codelm.report import plot_rollouts

        plot_rollouts(Path(cfg.train.out_dir))
    chat_humaneval(cfg, result, getattr(args, "humaneval", None))


def chat_humaneval(cfg: Config, result: dict, limit: int | None):
    """HumanEval asked as a chat of a recipe's final checkpoint (--humaneval), into OUT/eval."""
    if limit is None or result.get("stopped"):
        return
    from codelm.config import EvalConfig
    from codelm.eval.runner import Evaluation
    from codelm.report import write_eval_report

    out = Path(cfg.train.out_dir) / "eval"
    evaluation = Evaluation(EvalConfig(checkpoint=cfg.train.out_dir, tasks=["humaneval"], chat=True, limit=limit,
                                       out=str(out)))
    write_eval_report(evaluation.out, evaluation.run())
