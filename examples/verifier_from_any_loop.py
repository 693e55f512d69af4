"""The verifier from a plain PyTorch loop: REINFORCE on the toy student, rewarded by agreement.

No OmniOPD trainer and no gateway: the loop samples the teacher itself (the toy teacher,
in-process, once per prompt), and the only OmniOPD piece is the verifier's HTTP API through its
typed client. Start a verifier (``omniopd-verifier --port 8100``), then:

    python examples/verifier_from_any_loop.py --verifier http://127.0.0.1:8100 --steps 10

Each step: ``--samples`` (K) student answers per prompt; one ``POST /v1/score`` with one group
per prompt (K drafts against the teacher's M answers); the verifier's per-group advantages
(``normalize_advantage``) weight the answers' mean token log-probabilities. The last line
printed is JSON with each step's mean reward.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--verifier", required=True, help="verifier base URL")
    p.add_argument("--world", type=Path, help="toy world folder (default: the cached one)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4, help="prompts per step")
    p.add_argument("--samples", type=int, default=4, help="K: student answers per prompt")
    p.add_argument("--teacher-samples", type=int, default=4, help="M: teacher answers per prompt")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omniopd.toy import ToyWorld, ensure_toy_world
    from omniopd.verifier.client import VerifierClient

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    world = ToyWorld.at(args.world) if args.world else ensure_toy_world()
    prompts = [json.loads(line)["prompt"] for line in world.train.read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(world.student)  # teacher and student share it
    tokenizer.padding_side = "left"
    student = AutoModelForCausalLM.from_pretrained(world.student, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(world.teacher, dtype=torch.float32).eval()
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr)

    def encode(batch: list[str]) -> dict[str, torch.Tensor]:
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in batch
        ]
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def sample(model, batch: list[str], n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(sequences (B·n, T), answer mask (B·n, T-P), prompt width P)."""
        enc = encode(batch)
        with torch.no_grad():
            seqs = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                num_return_sequences=n,
                max_new_tokens=args.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        width = enc["input_ids"].shape[1]
        answer = seqs[:, width:]
        # Tokens up to and including the first EOS count; the padding after it does not.
        ended = (answer == tokenizer.eos_token_id).int().cumsum(dim=1)
        mask = (ended == 0) | ((ended == 1) & (answer == tokenizer.eos_token_id))
        return seqs, mask, width

    def decode(seqs: torch.Tensor, width: int) -> list[str]:
        return tokenizer.batch_decode(seqs[:, width:], skip_special_tokens=True)

    teacher_cache: dict[str, list[str]] = {}
    history = []
    with VerifierClient(args.verifier) as verifier:
        for step in range(args.steps):
            start = (step * args.batch_size) % len(prompts)
            batch = prompts[start : start + args.batch_size]
            new = [p for p in batch if p not in teacher_cache]
            if new:
                seqs, _, width = sample(teacher, new, args.teacher_samples)
                texts = decode(seqs, width)
                for i, p in enumerate(new):
                    teacher_cache[p] = texts[
                        i * args.teacher_samples : (i + 1) * args.teacher_samples
                    ]

            student.eval()  # dropout off: sampling and scoring see the same policy
            seqs, mask, width = sample(student, batch, args.samples)
            drafts = decode(seqs, width)
            groups = [
                {
                    "id": p,
                    "drafts": drafts[i * args.samples : (i + 1) * args.samples],
                    "teacher": teacher_cache[p],
                }
                for i, p in enumerate(batch)
            ]
            scored = verifier.score(groups, reward="prob", normalize_advantage=True)
            advantages = torch.tensor([a for g in scored.groups for a in g.advantage])  # (B·K,)

            attention = (seqs != tokenizer.pad_token_id).long()
            attention[:, width:] = mask.long()
            positions = (attention.cumsum(dim=1) - 1).clamp(min=0)  # as generate() numbers them
            out = student(input_ids=seqs, attention_mask=attention, position_ids=positions)
            logits = out.logits[:, width - 1 : -1]  # (B·K, T-P, V): predicts each answer token
            logp = torch.log_softmax(logits.float(), dim=-1)  # (B·K, T-P, V)
            token_logp = logp.gather(-1, seqs[:, width:].unsqueeze(-1)).squeeze(-1)
            mean_logp = (token_logp * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B·K,)
            loss = -(advantages * mean_logp).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

            reward = sum(r for g in scored.groups for r in g.reward) / len(advantages)
            history.append({"step": step + 1, "loss": loss.item(), "reward_mean": reward})
            print(f"step {step + 1}: loss {loss.item():+.4f}  reward {reward:.4f}", flush=True)
    print(json.dumps({"steps": len(history), "history": history}))


if __name__ == "__main__":
    main()
