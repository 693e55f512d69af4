"""One typed config for ``omniopd-train``: YAML via ``--config``, every field a ``--flag``.

Layers, lowest first: the config saved in ``output_dir`` (only with ``--resume``), the YAML
file, then flags. Flags are the field names with dashes (``batch_size`` → ``--batch-size``).
An unknown key, a bad value or a missing service fails at start, naming the field and its flag.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from omniopd.log import add_logging_args

# The scoring vocabulary is the verifier's (its wire types, re-exported by its client).
from omniopd.verifier.client import Metric, Reward

CONFIG_FILE = "config.yaml"

Method = Literal["omniopd", "opd", "sft", "grpo"]
Objective = Literal["drafts", "likelihood"]

# Defaults of the fields that depend on the objective, filled in where a config leaves them out.
# `likelihood` takes the paper's published values (M = 10, C = 50, N = 10, α = 1, β = 0.1) and
# of its two published agreements ROUGE-1, which the toy world's runs favour over edit
# similarity (docs/method.md); `drafts`, and every other method's KL anchor, keep the values the
# drafts design was tuned with. Toy-world recipes set their own (short answers).
OBJECTIVE_DEFAULTS: dict[str, dict[str, Any]] = {
    "likelihood": {
        "chunks_per_response": 10,
        "chunk_tokens": 50,
        "teacher_samples": 10,
        "alpha": 1.0,
        "beta": 0.1,
        "metric": "rouge1",
    },
    "drafts": {
        "chunks_per_response": 4,
        "chunk_tokens": 16,
        "teacher_samples": 8,
        "alpha": 2.0,
        "beta": 0.05,
        "metric": "embedding",
    },
}


def by_objective(name: str) -> dict[str, str]:
    """The reference page's default cell for a field whose default depends on the objective."""
    like, drafts = OBJECTIVE_DEFAULTS["likelihood"][name], OBJECTIVE_DEFAULTS["drafts"][name]
    return {"default_text": f"`{like}` with `--objective likelihood`, else `{drafts}`"}


def objective_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """The defaults that apply to ``values``: the published ones for ``--method omniopd
    --objective likelihood``, the drafts design's for everything else."""
    method = values.get("method", "omniopd")
    objective = values.get("objective", "drafts")
    key = "likelihood" if method == "omniopd" and objective == "likelihood" else "drafts"
    return OBJECTIVE_DEFAULTS[key]


class ConfigError(SystemExit):
    """A bad config: uncaught, Python prints the message (no traceback) and exits with 1."""


class TrainConfig(BaseModel):
    """Everything a run needs. Field descriptions are the ``--help`` text and docs/trainer.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # What to train, and against whom.
    student: str = Field(description="student model: HF name or local path")
    ref: str | None = Field(None, description="KL reference model; default: the student at start")
    method: Method = Field("omniopd", description="omniopd | opd | sft | grpo")
    gateway: str | None = Field(None, description="teacher gateway host:port (omniopd, sft)")
    teacher: str | None = Field(None, description="teacher name in the gateway's config")
    verifier: str | None = Field(None, description="verifier base URL (omniopd)")
    opd_teacher: str | None = Field(None, description="local white-box teacher path (opd)")

    # Data.
    dataset: str = Field(description="JSONL path, or a `datasets` hub name")
    dataset_split: str = Field("train", description="split of a hub dataset")
    prompt_field: str = Field("prompt", description="row field holding the prompt")
    answer_field: str = Field("answer", description="row field holding the reference answer")
    eval_dataset: str | None = Field(
        None,
        description="held-out JSONL (or hub set, split test); default: last eval_size rows",
    )
    eval_size: int = Field(64, ge=0, description="rows held out for evaluation (no eval_dataset)")

    # Sampling the student.
    temperature: float = Field(1.0, gt=0, le=4, description="student sampling temperature τ")
    max_new_tokens: int = Field(256, ge=1, description="response length limit (student tokens)")
    min_new_tokens: int = Field(0, ge=0, description="no EOS before this many response tokens")

    # OmniOPD's knobs (steps 2-6 of docs/method.md). Fields left unset take the defaults of
    # the chosen objective (OBJECTIVE_DEFAULTS): the paper's for `likelihood`.
    objective: Objective = Field(
        "drafts",
        description="likelihood: the published objective (π̂-weighted likelihood of the"
        " student's own chunks); drafts: K drafts per fork, group-centred policy gradient",
    )
    fork_strategy: Literal["peak", "random"] = Field(
        "peak", description="peak: entropy peaks; random: as many audits at random positions"
    )
    fork_quantile: float = Field(0.8, ge=0, le=1, description="q: batch entropy quantile (drafts)")
    min_fork_entropy: float = Field(
        0.5, ge=0, description="h_min: entropy floor at a fork, nats (drafts)"
    )
    chunks_per_response: int = Field(
        None,
        json_schema_extra=by_objective("chunks_per_response"),
        ge=1,
        description="M: audited chunks per response, at most",
    )
    num_drafts: int = Field(
        4, ge=2, description="K: drafts per fork, own chunk + K-1 fresh (drafts)"
    )
    chunk_tokens: int = Field(
        None,
        json_schema_extra=by_objective("chunk_tokens"),
        ge=1,
        description="C: chunk length in student tokens",
    )
    teacher_samples: int = Field(
        None,
        json_schema_extra=by_objective("teacher_samples"),
        ge=1,
        description="N: teacher continuations per chunk",
    )
    teacher_temperature: float = Field(1.0, ge=0, le=2, description="teacher sampling temperature")
    teacher_chars_per_token: float = Field(
        4.0, gt=0, description="initial guess for sizing teacher max_tokens (then measured)"
    )
    metric: Metric = Field(
        None, json_schema_extra=by_objective("metric"), description="φ: the verifier's similarity"
    )
    prior: Literal["student", "uniform"] = Field(
        "student", description="Beta prior mean (drafts; likelihood uses the student's π̄)"
    )
    alpha: float = Field(
        None, json_schema_extra=by_objective("alpha"), gt=0, description="prior strength α"
    )
    outcome_weight: float = Field(
        0.0,
        ge=0,
        description="λ (likelihood; this project's extension, after KDRL): every response token"
        " also weighted by λ·(r − r̄), r the answer checker's 0/1 reward and r̄ the step's mean",
    )
    mixed_weight: float = Field(
        0.0,
        ge=0,
        description="μ (likelihood; this project's extension, after LUFFY): the teacher"
        " continuation that agrees most with the others also trained on at its chunk, off-policy,"
        " shaped by p/(p+γ), γ = 0.1",
    )
    reward: Reward = Field("prob", description="reward from the posterior (drafts)")
    baseline: Literal["group", "batch"] = Field(
        "group",
        description="advantage centring: per fork (skips unanimous forks) or per step (drafts)",
    )
    normalize_advantages: bool = Field(False, description="divide advantages by their std (drafts)")
    beta: float = Field(
        None,
        json_schema_extra=by_objective("beta"),
        ge=0,
        description="KL anchor coefficient: KL(π_ref ‖ π_θ) on unaudited tokens (likelihood),"
        " KL(π_θ ‖ π_ref) on every token (drafts, grpo)",
    )
    kl_estimator: Literal["exact", "k3"] = Field(
        "exact", description="exact over V, or k3 (drafts, grpo; likelihood: always exact)"
    )
    ppo_epochs: int = Field(
        1, ge=1, description="optimiser passes per batch (>1: PPO clip; drafts, grpo)"
    )
    clip: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip ε")
    grpo_samples: int = Field(4, ge=2, description="samples per prompt (grpo)")
    sft_answers: int = Field(
        1,
        ge=1,
        description="teacher answers per prompt (sft), all trained on: k times the teacher"
        " tokens of a step, to compare methods at equal teacher cost",
    )

    # Optimisation.
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="decay after warm-up, to 0 at the last step"
    )
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    batch_size: int = Field(8, ge=1, description="prompts per step on each process")
    grad_accum_steps: int = Field(
        1, ge=1, description="micro-batches a step's update is split into (memory, not batch)"
    )
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm (0: off)")
    gradient_checkpointing: bool = Field(
        False,
        description="recompute each decoder layer in the backward pass instead of keeping its"
        " activations: less memory for about one more forward pass of time",
    )
    steps: int = Field(100, ge=1, description="training steps")

    # Running.
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="compute: bfloat16 runs forward passes under autocast on float32 master weights",
    )
    fsdp: bool = Field(
        False,
        description="shard the student (and reference, white-box teacher) over the ranks"
        " with FSDP2, for models that do not fit one device",
    )
    seed: int = Field(0, description="seed for data order, sampling and forks")
    output_dir: str = Field("runs/omniopd", description="checkpoints, metrics.jsonl, config")
    save_every: int = Field(50, ge=0, description="checkpoint every N steps (0: end only)")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept on disk")
    eval_every: int = Field(50, ge=0, description="evaluate every N steps and at the end (0: off)")
    eval_batch_size: int = Field(64, ge=1, description="prompts per evaluation batch")
    resume: bool = Field(False, description="continue from output_dir's latest checkpoint")
    request_timeout_s: float = Field(
        120.0, gt=0, description="verifier call timeout; longest wait for the next teacher reply"
    )
    max_retries: int = Field(4, ge=0, description="retries of a failed service call")
    retry_backoff_s: float = Field(0.5, ge=0, description="first retry delay (doubles)")

    @model_validator(mode="before")
    @classmethod
    def _fill_objective_defaults(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        if "max_forks" in values and "chunks_per_response" not in values:  # its old name:
            values = dict(values)  # a run saved before the rename still resumes
            values["chunks_per_response"] = values.pop("max_forks")
        missing = {k: v for k, v in objective_defaults(values).items() if values.get(k) is None}
        return values | missing

    @model_validator(mode="after")
    def _method_needs(self) -> TrainConfig:
        needs = {
            "omniopd": ("gateway", "teacher", "verifier"),
            "sft": ("gateway", "teacher"),
            "opd": ("opd_teacher",),
            "grpo": (),
        }[self.method]
        missing = [f for f in needs if not getattr(self, f)]
        if missing:
            raise ValueError(
                f"method {self.method!r} needs " + ", ".join(f"{f} ({flag(f)})" for f in missing)
            )
        likelihood = self.method == "omniopd" and self.objective == "likelihood"
        for name in ("outcome_weight", "mixed_weight"):
            if getattr(self, name) > 0 and not likelihood:
                raise ValueError(
                    f"{name} ({flag(name)}) extends --objective likelihood of --method omniopd;"
                    " other methods do not take it"
                )
        if self.mixed_weight > 0 and self.fsdp:
            raise ValueError(
                "mixed_weight (--mixed-weight) does not run with --fsdp yet: its extra forward"
                " pass is not taken on ranks without a target"
            )
        if likelihood and self.ppo_epochs > 1:
            raise ValueError(
                "ppo_epochs (--ppo-epochs) > 1 is for --objective drafts; the likelihood"
                " objective takes one step per batch"
            )
        return self


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return bool in typing.get_args(annotation)
    return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniopd-train",
        description="OmniOPD: on-policy distillation from black-box teachers (and baselines).",
    )
    parser.add_argument("--config", type=Path, help="YAML file of config fields")
    for name, info in TrainConfig.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and "default_text" in extra:  # set by by_objective()
            default = f"default: {extra['default_text']}".replace("`", "")
        else:
            default = "required" if info.is_required() else f"default: {info.default}"
        help_text = f"{info.description} ({default})"
        if _is_bool(info.annotation):
            parser.add_argument(
                flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag(name), dest=name, metavar="VALUE", default=argparse.SUPPRESS, help=help_text
            )
    add_logging_args(parser)
    return parser


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"--config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of field: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def describe(err: ValidationError) -> str:
    lines = ["invalid trainer config:"]
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        got = "" if "input" not in e or isinstance(e["input"], dict) else f" (got {e['input']!r})"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field")
        elif field:
            lines.append(f"  {field} ({flag(field)}): {e['msg']}{got}")
        else:
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def validate(values: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError(describe(err)) from None


def parse_config(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Flags (and the YAML/saved config beneath them) → a validated config, plus the raw args."""
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.model_fields}
    from_yaml = read_yaml(args.config) if args.config else {}
    values = from_yaml | flags
    if values.get("resume") in (True, "true", "True", "1"):
        saved = Path(str(values.get("output_dir", TrainConfig.model_fields["output_dir"].default)))
        if (saved / CONFIG_FILE).is_file():
            values = read_yaml(saved / CONFIG_FILE) | values
    return validate(values), args


def to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False)


def save_config(config: TrainConfig, output_dir: Path) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / CONFIG_FILE
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(to_yaml(config))
    tmp.replace(path)
    return path
