"""What every step of a run shares: models, optimiser, services and running estimates."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from omniopd.trainer.config import TrainConfig
from omniopd.trainer.services import Services
from omniopd.trainer.teacher import CharsPerToken


@dataclass
class Run:
    config: TrainConfig
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    eos_ids: list[int]
    pad_id: int
    ref: torch.nn.Module | None = None  # KL anchor π_ref (None when beta = 0)
    white_box_teacher: torch.nn.Module | None = None  # --method opd
    services: Services | None = None
    fork_rng: random.Random = field(default_factory=random.Random)
    teacher_chars_per_token: CharsPerToken = field(default_factory=lambda: CharsPerToken(4.0))
    extras: dict[str, Any] = field(default_factory=dict)  # per-method state (e.g. SFT cache)
    step: int = 0  # the step being taken, from 1 (set by the trainer before each step)
