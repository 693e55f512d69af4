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
