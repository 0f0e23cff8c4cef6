"""Check that a few dozen on-policy steps from the warm-started student move its pass rate.

A deliberately small, hand-written loop (the real one is ``opdkit.train``'s): sample Q prompts x G rollouts
from the student, then one AdamW step on

- ``grpo``: -A_i * log pi(y_t), A = (r - group mean) / (group std + 1e-6) (ALGORITHMS.md §2.1), token-mean;
- ``opd``:  -sg(log pi_T(y_t) - log pi(y_t)) * log pi(y_t), the sampled-token reverse KL (§3.1), teacher = the
  warm-started teacher;
- ``sdpo``: the same with the *student itself* (live weights, no grad) reading the reprompted context of §4.4
  (a successful sibling as demonstration) as the teacher, on the rollouts that get one (§4.5).

It prints the held-out pass rate (sampled, T = 1, 4 samples per report problem) every ``--eval-every`` steps.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/learning_signal.py --method opd --steps 40
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from opdkit.models import load_pretrained
from opdkit.rewards.base import VERIFIERS
from opdkit.rollout import SamplingParams, encode_chats, pad_sequences, response_logprobs, sample
from opdkit.tasks import STYLES, prompt_messages
from opdkit.teachers.reprompt import plan_reprompts, reprompt_user_text
from opdkit.train.warmstart import WarmStartConfig, warm_start, warm_start_problems


def held_out_pass_rate(model, tok, verifier, convs, golds, seed: int, temperature: float = 1.0) -> float:
    out = sample(model, tok, encode_chats(tok, convs), SamplingParams(n=4, temperature=temperature,
                 max_new_tokens=16), seed=seed)  # fmt: skip
    return sum(verifier(t, golds[i // 4]).correct for i, t in enumerate(out.texts)) / len(out.texts)


def sdpo_teacher_logp(model, tok, config, convs, rollout, success):
    """Live self-teacher log-probs on each rollout's reprompted context, and the SDPO row mask (§4.2-4.5)."""
    plan = plan_reprompts(rollout.group_ids_N.tolist(), success, [""] * len(success))
    teacher_convs = []
    for i, demo in enumerate(plan.demo_index):
        conv = convs[int(rollout.group_ids_N[i])]
        text = reprompt_user_text(conv[-1]["content"], rollout.texts[demo] if demo >= 0 else None, None,
                                  config.template)  # fmt: skip
        teacher_convs.append([*conv[:-1], {"role": "user", "content": text}])
    prompts = pad_sequences(encode_chats(tok, teacher_convs), tok.pad_token_id, side="left")
    with torch.no_grad():
        logp = response_logprobs(model, prompts.ids_N_T, prompts.mask_N_T, rollout.response_ids_N_L,
                                 rollout.response_mask_N_L)  # fmt: skip
    return logp, torch.tensor(plan.sd_mask, dtype=torch.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=["grpo", "opd", "sdpo"], default="opd")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmstart-seed", type=int, default=0)
    p.add_argument("--cache-dir", default=".cache/opdkit/warmstart")
    args = p.parse_args()
    torch.set_num_threads(1)
    config = WarmStartConfig(seed=args.warmstart_seed)
    ws = warm_start(config, cache_dir=args.cache_dir, log=print)
    loaded = load_pretrained(ws.student_path)
    student, tok = loaded.model, loaded.tokenizer
    teacher = load_pretrained(ws.teacher_path).model
    verifier = VERIFIERS.get(config.task.verifier)()
    style = STYLES.get(config.task.style)
    problems = warm_start_problems(config)  # train on its pool, evaluate on its held-out report problems
    test_convs = [prompt_messages(config.task, q) for q in problems.report]
    test_golds = [style.gold(q) for q in problems.report]
    rng = random.Random(args.seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    params = SamplingParams(n=args.group, temperature=args.temperature, max_new_tokens=16)
    rate = held_out_pass_rate(student, tok, verifier, test_convs, test_golds, 1)
    print(f"step 0 held-out pass rate {rate:.3f}")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = rng.sample(problems.train, args.prompts)
        convs = [prompt_messages(config.task, q) for q in batch]
        golds = [style.gold(q) for q in batch]
        rollout = sample(student, tok, encode_chats(tok, convs), params, seed=args.seed * 100_003 + step)
        verdicts = [verifier(t, golds[i // args.group]) for i, t in enumerate(rollout.texts)]
        reward = torch.tensor([v.score for v in verdicts])
        mask = rollout.response_mask_N_L.float()
        student.train()
        logp = response_logprobs(student, rollout.prompt_ids_N_P, rollout.prompt_mask_N_P,
                                 rollout.response_ids_N_L, rollout.response_mask_N_L,
                                 temperature=args.temperature)  # fmt: skip
        if args.method == "grpo":
            r = reward.view(-1, args.group)
            adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).view(-1, 1)
        elif args.method == "opd":
            with torch.no_grad():
                t_logp = response_logprobs(teacher, rollout.prompt_ids_N_P, rollout.prompt_mask_N_P,
                                           rollout.response_ids_N_L, rollout.response_mask_N_L,
                                           temperature=args.temperature)  # fmt: skip
            adv = (t_logp - logp).detach()
        else:
            t_logp, sd_mask = sdpo_teacher_logp(
                student, tok, config, convs, rollout, [v.correct for v in verdicts]
            )
            adv = (t_logp - logp).detach()
            mask = mask * sd_mask[:, None]
        loss = -(adv * logp * mask).sum() / mask.sum().clamp(min=1)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        if step % args.eval_every == 0:
            rate = held_out_pass_rate(student, tok, verifier, test_convs, test_golds, 1)
            print(f"step {step} train reward {reward.mean():.3f} held-out pass rate {rate:.3f} "
                  f"({time.perf_counter() - start:.1f}s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
