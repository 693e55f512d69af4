"""Train the toy student with TRL's GRPOTrainer and OmniOPD's teacher-agreement reward, on CPU.

Start a gateway serving the toy teacher and a verifier first (docs/quickstart.md, section
"From another trainer"), then:

    python examples/trl_grpo.py --gateway 127.0.0.1:50051 --teacher toy \
        --verifier http://127.0.0.1:8100 --steps 20 --output-dir runs/trl-grpo

Every step the student writes ``--num-generations`` answers per prompt; the reward asks the
teacher (through the gateway) for ``--teacher-samples`` answers to each new prompt and the
verifier scores each student answer by how much the teacher's answers agree with it
(:class:`omniopd.integrations.trl.OmniOPDReward`). No answer key is used. The last line
printed is JSON: the steps run, the last step's logged figures and the reward's counts.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gateway", required=True, help="teacher gateway host:port")
    p.add_argument("--teacher", required=True, help="teacher name in the gateway's teachers.yaml")
    p.add_argument("--verifier", required=True, help="verifier base URL")
    p.add_argument(
        "--world", type=Path, help="toy world folder (default: build or reuse the cached one)"
    )
    p.add_argument("--steps", type=int, default=20, help="optimiser steps")
    p.add_argument("--prompts", type=int, default=256, help="training prompts taken from the world")
    p.add_argument("--batch-size", type=int, default=8, help="completions per device per step")
    p.add_argument(
        "--num-generations", type=int, default=4, help="completions per prompt (GRPO group)"
    )
    p.add_argument("--teacher-samples", type=int, default=4, help="teacher answers per prompt (M)")
    p.add_argument(
        "--max-completion-length", type=int, default=48, help="student tokens per answer"
    )
    p.add_argument("--reward", choices=["prob", "logratio"], default="prob")
    p.add_argument("--metric", choices=["embedding", "lexical", "hybrid"], default="embedding")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient (0: no reference model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", type=Path, default=Path("runs/trl-grpo"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only contend on a CPU

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from omniopd.integrations.trl import OmniOPDReward
    from omniopd.toy import ToyWorld, ensure_toy_world

    torch.set_num_threads(1)
    world = ToyWorld.at(args.world) if args.world else ensure_toy_world()
    rows = load_dataset("json", data_files=str(world.train), split="train")
    rows = rows.select(range(min(args.prompts, len(rows))))
    # Conversational prompts: TRL renders them with the student's chat template, and the
    # gateway sends the same user turn to the teacher.
    dataset = rows.map(
        lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}]}, remove_columns=["answer"]
    )

    tokenizer = AutoTokenizer.from_pretrained(world.student)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(world.student, dtype=torch.float32)

    config = GRPOConfig(
        output_dir=str(args.output_dir),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        learning_rate=args.lr,
        beta=args.beta,
        temperature=1.0,
        seed=args.seed,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
    )
    reward = OmniOPDReward(
        gateway=args.gateway,
        teacher=args.teacher,
        verifier=args.verifier,
        teacher_samples=args.teacher_samples,
        reward=args.reward,
        metric=args.metric,
    )
    with reward:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.train()

    steps = [h for h in trainer.state.log_history if "rewards/omniopd/mean" in h]
    summary = {
        "steps": trainer.state.global_step,
        "last": steps[-1] if steps else None,
        "reward_stats": vars(reward.stats),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
