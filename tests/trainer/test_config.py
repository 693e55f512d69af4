"""The trainer's config: YAML under flags, every field a flag, bad values named at start."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from omniopd.trainer.config import (
    ConfigError,
    TrainConfig,
    build_parser,
    flag,
    parse_config,
    save_config,
)

BASE = ["--student", "s", "--dataset", "d.jsonl", "--method", "grpo"]
REQUIRED = [
    *("--student", "s", "--dataset", "d.jsonl", "--gateway", "g:1", "--teacher", "t"),
    *("--verifier", "http://v"),
]


def test_every_field_is_a_flag_with_dashes():
    parser = build_parser()
    options = {o for a in parser._actions for o in a.option_strings}
    for name in TrainConfig.model_fields:
        assert flag(name) in options
    assert {"--output-dir", "--batch-size", "--save-every", "--eval-every"} <= options


def test_flags_override_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {"student": "a", "dataset": "d.jsonl", "method": "grpo", "batch_size": 3, "lr": 0.1}
        )
    )
    config, _ = parse_config(["--config", str(path), "--batch-size", "5", "--eval-every", "0"])
    assert (config.student, config.batch_size, config.lr, config.eval_every) == ("a", 5, 0.1, 0)


def test_yaml_accepts_dashed_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("student: a\ndataset: d.jsonl\nmethod: grpo\nbatch-size: 2\n")
    assert parse_config(["--config", str(path)])[0].batch_size == 2


def test_bool_flags():
    assert parse_config([*BASE, "--resume"])[0].resume is True
    assert parse_config([*BASE, "--no-normalize-advantages"])[0].normalize_advantages is False


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--batch-size", "0"], "batch_size (--batch-size)"),
        (["--fork-quantile", "1.5"], "fork_quantile (--fork-quantile)"),
        (["--kl-estimator", "k2"], "kl_estimator (--kl-estimator)"),
        (["--num-drafts", "many"], "num_drafts (--num-drafts)"),
        (["--baseline", "fork"], "baseline (--baseline)"),
    ],
)
def test_invalid_values_name_the_field(argv, named):
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + argv)
    assert named in str(err.value.code)


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("student: a\ndataset: d.jsonl\nmethod: grpo\nbatch_sise: 2\n")
    with pytest.raises(ConfigError, match="batch_sise: unknown field"):
        parse_config(["--config", str(path)])


def test_unknown_flag_fails_at_start():
    proc = subprocess.run(
        [sys.executable, "-m", "omniopd.trainer", *BASE, "--batch-sise", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--batch-sise" in proc.stderr


def test_method_needs_its_services():
    with pytest.raises(ConfigError) as err:
        parse_config(
            ["--student", "s", "--dataset", "d.jsonl", "--method", "omniopd", "--gateway", "h:1"]
        )
    message = str(err.value.code)
    assert "teacher (--teacher)" in message and "verifier (--verifier)" in message
    with pytest.raises(ConfigError, match="opd_teacher"):
        parse_config(["--student", "s", "--dataset", "d.jsonl", "--method", "opd"])


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_config(["--config", str(path)])
    with pytest.raises(ConfigError, match="No such file"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])


def test_resume_reads_the_saved_config_beneath_flags(tmp_path):
    saved, _ = parse_config([*BASE, "--output-dir", str(tmp_path), "--lr", "0.5", "--steps", "3"])
    save_config(saved, tmp_path)
    config, _ = parse_config(["--output-dir", str(tmp_path), "--resume", "--steps", "6"])
    assert (config.student, config.lr, config.steps, config.resume) == ("s", 0.5, 6, True)


def test_docs_list_every_field():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "trainer.md").read_text()
    for name in TrainConfig.model_fields:
        assert f"| `{name}` | `{flag(name)}` |" in docs, f"docs/trainer.md lacks {name}"


PUBLISHED = {
    "chunks_per_response": 10,
    "chunk_tokens": 50,
    "teacher_samples": 10,
    "alpha": 1.0,
    "beta": 0.1,
    "metric": "rouge1",
}


def test_the_likelihood_objective_takes_the_published_defaults():
    cfg, _ = parse_config([*REQUIRED, "--objective", "likelihood"])
    assert {k: getattr(cfg, k) for k in PUBLISHED} == PUBLISHED
    # A flag still wins over the objective's default.
    cfg, _ = parse_config([*REQUIRED, "--objective", "likelihood", "--chunk-tokens", "8"])
    assert cfg.chunk_tokens == 8 and cfg.teacher_samples == 10
    # The drafts objective, and every other method's KL anchor, keep the drafts design's.
    drafts, _ = parse_config(REQUIRED)
    assert (drafts.objective, drafts.chunk_tokens, drafts.alpha, drafts.beta) == (
        "drafts",
        16,
        2.0,
        0.05,
    )
    grpo, _ = parse_config(["--student", "s", "--dataset", "d", "--method", "grpo"])
    assert grpo.beta == 0.05


def test_resolved_defaults_are_saved_and_resumed(tmp_path):
    cfg, _ = parse_config([*REQUIRED, "--objective", "likelihood", "--output-dir", str(tmp_path)])
    save_config(cfg, tmp_path)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert {k: saved[k] for k in PUBLISHED} == PUBLISHED
    resumed, _ = parse_config([*REQUIRED, "--output-dir", str(tmp_path), "--resume"])
    assert resumed.objective == "likelihood" and resumed.chunk_tokens == 50


def test_likelihood_refuses_ppo_epochs():
    with pytest.raises(SystemExit, match="ppo_epochs"):
        parse_config([*REQUIRED, "--objective", "likelihood", "--ppo-epochs", "2"])


@pytest.mark.parametrize("name", ["outcome_weight", "mixed_weight"])
def test_the_extensions_extend_the_likelihood_objective_only(name):
    option = "--" + name.replace("_", "-")
    cfg, _ = parse_config([*REQUIRED, "--objective", "likelihood", option, "0.5"])
    assert getattr(cfg, name) == 0.5
    for other in (["--objective", "drafts"], ["--method", "grpo"]):
        with pytest.raises(SystemExit, match=name):
            parse_config([*REQUIRED, *other, option, "0.5"])


def test_the_mixed_term_refuses_fsdp():
    with pytest.raises(SystemExit, match="--fsdp"):
        parse_config([*REQUIRED, "--objective", "likelihood", "--mixed-weight", "1", "--fsdp"])
