import subprocess
import sys

import pytest
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings

from omniopd.settings import SettingsError, load_settings, settings_config


class DemoSettings(BaseSettings):
    model_config = settings_config("DEMO_")

    port: int = Field(8000, ge=0, le=65535)
    device: str = "cpu"
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL"))


def test_reads_prefixed_environment(monkeypatch):
    monkeypatch.setenv("OMNIOPD_DEMO_PORT", "9001")
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/0")
    s = load_settings(DemoSettings)
    assert s.port == 9001
    assert s.redis_url == "redis://example:6379/0"


def test_overrides_win_and_none_means_unset(monkeypatch):
    monkeypatch.setenv("OMNIOPD_DEMO_PORT", "9001")
    assert load_settings(DemoSettings, port=7000).port == 7000
    assert load_settings(DemoSettings, port=None).port == 9001


def test_bad_value_names_the_variable_and_the_rule(monkeypatch):
    monkeypatch.setenv("OMNIOPD_DEMO_PORT", "70000")
    with pytest.raises(SettingsError) as info:
        load_settings(DemoSettings)
    message = info.value.message
    assert "OMNIOPD_DEMO_PORT" in message
    assert "less than or equal to 65535" in message
    assert "70000" in message


def test_bad_setting_exits_without_a_traceback():
    code = (
        "from pydantic import Field\n"
        "from pydantic_settings import BaseSettings\n"
        "from omniopd.settings import load_settings, settings_config\n"
        "class S(BaseSettings):\n"
        "    model_config = settings_config('X_')\n"
        "    workers: int = Field(1, gt=0)\n"
        "load_settings(S)\n"
    )
    env = {"OMNIOPD_X_WORKERS": "zero", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "OMNIOPD_X_WORKERS" in proc.stderr
    assert "Traceback" not in proc.stderr
