"""Knowledge distillation: a student learns a frozen teacher's next-token distributions on chat data.

Token-level (Hinton et al.; GKD, Agarwal et al. 2024): at every assistant token the student's distribution
is pulled toward the teacher's by forward KL, reverse KL or the generalized JSD between them (beta,
objectives.generalized_jsd), at a temperature. With distill.on_policy (GKD's lambda) that share of micro
batches holds the student's own replies, sampled through the engine from its current weights and scored by
the teacher, so the student is corrected where it actually goes instead of only on the data's replies.
The teacher must share the student's tokenizer: the distributions are over the same ids.
"""

import numpy as np

from codelm import checkpoint as ckpt
from codelm.chat import encode_chat, encode_conversation
from codelm.config import Config, SamplingParams
from codelm.data.sft import Example, PackedExamples
from codelm.errors import UserError
from codelm.inference.engine import Engine
from codelm.train.loop import DistEnv, setup_distributed, train
from codelm.train.objectives import Distill
from codelm.train.sft import ChatRun, held_out_validation, start_chat_run


class OnPolicy:
    """A BatchStream: with probability `share` (drawn per micro batch from the seed) a batch of the student's
    own replies to prompts of the training examples, else the next batch of the data. Each draw's randomness
    comes from (seed, draw), and the student's weights at that point from the checkpoint, so a resumed run
    draws the same batches."""

    def __init__(self, run: ChatRun, share: float, params: SamplingParams, seq_len: int, batch_rows: int,
                 seed: int, env: DistEnv):
        self.run, self.share, self.params, self.seq_len, self.batch_rows = run, share, params, seq_len, batch_rows
        self.seed, self.env, self.draws = seed, env, 0

    def state_dict(self) -> dict:
        return {"draws": self.draws, "data": self.run.stream.state_dict()}

    def load_state_dict(self, state: dict):
        self.draws = state["draws"]
        self.run.stream.load_state_dict(state["data"])

    def next_batch(self):
        rng = np.random.default_rng([self.seed, self.draws])
        self.draws += 1
        if rng.random() >= self.share:
            return self.run.stream.next_batch()
        examples = self.run.train_examples
        picks = rng.choice(len(examples), size=self.batch_rows * self.env.world)
        mine = [examples[i] for i in picks[self.env.rank * self.batch_rows : (self.env.rank + 1) * self.batch_rows]]
        replies = self.student_replies(mine, seed=int(rng.integers(2**31)))
        batch = PackedExamples(replies, self.seq_len, self.batch_rows, self.run.pad_id, shuffle=False,
                               passes=1).next_batch() if replies else None
        return batch if batch is not None else self.run.stream.next_batch()  # every reply too long: use the data

    def student_replies(self, examples: list[Example], seed: int) -> list[Example]:
        """The examples' conversations with the last reply rewritten by the student (sampled, current weights)."""
        tok, template, model = self.run.tok, self.run.tok.chat_template, self.run.model
        prompts, heads = [], []
        for e in examples:
            last = max(i for i, m in enumerate(e.messages) if m["role"] == "assistant")
            heads.append(e.messages[:last])
            prompts.append(encode_chat(tok, heads[-1], template))
        was_training = model.training
        completions = Engine(model, tok).generate(prompts, SamplingParams(**{**vars(self.params), "seed": seed}))
        model.train(was_training)
        replies = []
        for head, prompt, e, (completion,) in zip(heads, prompts, examples, completions):
            ids, learn = encode_conversation(tok, [*head, {"role": "assistant", "content": completion.text}], template)
            learn = np.asarray(learn, dtype=bool)
            learn[: len(prompt)] = False  # only the student's reply: earlier turns are the data's
            replies.append(Example(np.asarray(ids, dtype=np.int64), learn, f"{e.where} (student reply)", e.messages))
        return replies


def distill(cfg: Config, resume: bool = False) -> dict:
    env = setup_distributed(cfg.train.device)
    d = cfg.distill
    if not d.teacher:
        raise UserError("distillation needs a teacher: give --teacher CHECKPOINT (distill.teacher)")
    if not 0 <= d.beta <= 1 or d.temperature <= 0 or not 0 <= d.on_policy <= 1:
        raise UserError("distill.beta and distill.on_policy must be in [0, 1], distill.temperature above 0")
    run = start_chat_run(cfg, env, "distill")
    teacher, teacher_tok, _ = ckpt.load_model(d.teacher, device=env.device)
    if teacher_tok.hf.get_vocab() != run.tok.hf.get_vocab():
        raise UserError(f"the teacher {d.teacher} has another tokenizer than the student {cfg.train.init_from}: "
                        "token-level distillation compares distributions over the same ids (for another "
                        "tokenizer, distill at the sequence level: the teacher's replies as SFT data)")
    if env.is_main:
        print(f"teacher {d.teacher}: {teacher.num_params() / 1e6:.1f}M parameters | "
              f"{'forward KL' if d.beta == 0 else 'reverse KL' if d.beta == 1 else f'generalized JSD beta={d.beta:g}'}"
              f", temperature {d.temperature:g}, on-policy share {d.on_policy:g}", flush=True)
    stream = run.stream
    if d.on_policy:
        params = SamplingParams(strategy="sample", temperature=d.sample_temperature, max_new_tokens=d.max_new_tokens)
        stream = OnPolicy(run, d.on_policy, params, cfg.data.seq_len, cfg.train.micro_batch, cfg.train.seed, env)
    return train(cfg, env, run.model, stream, Distill(teacher, d.beta, d.temperature),
                 held_out_validation(cfg, run, env), run.source / "tokenizer.json", resume, recipe="distill")
