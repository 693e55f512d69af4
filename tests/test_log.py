import json
import logging
import subprocess
import sys

import pytest

from omniopd.log import REDACTED, configure_logging, redact, register_secret

CANARY = "sk-canary-7f3a9c2e51d0"


@pytest.fixture
def captured(capsys):
    def read() -> str:
        return capsys.readouterr().err

    yield read
    configure_logging("WARNING", "text")


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("var", ["ANTHROPIC_API_KEY", "OMNIOPD_GATEWAY_TOKEN", "hf_token"])
def test_secret_from_environment_never_written(monkeypatch, captured, fmt, var):
    monkeypatch.setenv(var, CANARY)
    configure_logging("DEBUG", fmt)
    log = logging.getLogger("omniopd.test")
    log.info("message %s", CANARY)
    log.warning(f"f-string {CANARY}", extra={"header": f"Bearer {CANARY}"})
    try:
        raise RuntimeError(f"backend said: bad key {CANARY}")
    except RuntimeError:
        log.exception("call failed")
    out = captured()
    assert CANARY not in out
    assert out.count(REDACTED) >= 3  # message, f-string, traceback (+ extra field in JSON)


def test_key_exported_after_configuration_is_still_masked(monkeypatch, captured):
    configure_logging("INFO", "text")
    monkeypatch.setenv("LATE_API_KEY", CANARY)
    logging.getLogger("x").info(CANARY)
    assert CANARY not in captured()


def test_registered_secret_and_other_loggers(captured):
    register_secret("registered-secret-value")
    configure_logging("INFO", "json")
    logging.getLogger("uvicorn.error").warning("token=registered-secret-value")
    out = captured()
    assert "registered-secret-value" not in out
    assert json.loads(out.strip().splitlines()[-1])["logger"] == "uvicorn.error"


def test_handlers_a_library_installed_earlier_cannot_bypass_redaction(monkeypatch, captured):
    # What uvicorn's default logging config does: its own stderr handler, no propagation.
    library = logging.getLogger("some.library")
    library.addHandler(logging.StreamHandler(sys.stderr))
    library.propagate = False
    monkeypatch.setenv("LIBRARY_API_KEY", CANARY)
    configure_logging("INFO", "text")
    library.warning("calling with %s", CANARY)
    out = captured()
    assert CANARY not in out and REDACTED in out
    assert library.handlers == [] and library.propagate


def test_longer_secret_masked_whole(monkeypatch):
    monkeypatch.setenv("A_API_KEY", "abcd")
    monkeypatch.setenv("B_API_KEY", "abcdefgh")
    assert redact("key abcdefgh") == f"key {REDACTED}"


def test_json_lines_carry_extra_fields(captured):
    configure_logging("INFO", "json")
    logging.getLogger("omniopd.trainer").info("step done", extra={"step": 3, "loss": 0.5})
    record = json.loads(captured().strip().splitlines()[-1])
    assert record["msg"] == "step done"
    assert record["step"] == 3 and record["loss"] == 0.5
    assert record["level"] == "info"


def test_warnings_and_uncaught_in_a_fresh_process_are_masked():
    code = (
        "import logging, warnings\n"
        "from omniopd.log import configure_logging\n"
        "configure_logging('INFO', 'text')\n"
        f"warnings.warn('leak {CANARY}')\n"
        f"logging.getLogger('grpc').error('leak %s', '{CANARY}')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": CANARY}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "leak" in proc.stderr
    assert CANARY not in proc.stderr
