"""docs/reference/ is generated from the code (``python -m omniopd.reference``): these tests fail
when a page drifts from the models, the .proto or the OpenAPI schema it is made from, and when
the output would depend on anything but the code."""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys

import pytest
from pydantic import BaseModel, Field

from omniopd import reference
from omniopd.reference.common import doc_first_paragraph
from omniopd.reference.config_pages import model_table, source_notes
from omniopd.reference.grpc_page import proto_comments

REGENERATE = "run `.venv/bin/python -m omniopd.reference` and commit docs/reference/"


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return reference.render()


def test_every_page_matches_the_code(pages):
    stale = reference.stale_pages(pages, reference.OUT)
    if stale:
        name = stale[0]
        path = reference.OUT / name
        old = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        diff = "\n".join(
            difflib.unified_diff(old, pages.get(name, "").splitlines(), lineterm="", n=1)
        )
        pytest.fail(f"out of date: {', '.join(stale)}; {REGENERATE}\n{name}:\n{diff[:4000]}")


def test_pages_depend_on_the_code_only(pages, tmp_path):
    """Another hash seed, a C locale and settings in the environment change nothing."""
    env = {
        **os.environ,
        "PYTHONHASHSEED": "4242",
        "LC_ALL": "C",
        "LANG": "C",
        "PYTHONIOENCODING": "ascii",
        "OMNIOPD_GATEWAY_PORT": "1234",
        "OMNIOPD_VERIFIER_METRIC": "lexical",
        "OMNIOPD_VERIFIER_MAX_GROUPS": "7",
        "REDIS_URL": "redis://elsewhere:6379/3",
    }
    subprocess.run(
        [sys.executable, "-m", "omniopd.reference", "--out", str(tmp_path)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert {p.name: p.read_text(encoding="utf-8") for p in tmp_path.iterdir()} == pages


def test_check_names_each_stale_page_and_writing_repairs_them(pages, tmp_path):
    out = tmp_path / "reference"
    shutil.copytree(reference.OUT, out)
    changed, missing = sorted(pages)[:2]
    (out / changed).write_text(pages[changed].replace("|", "¦", 3), encoding="utf-8")
    (out / missing).unlink()
    (out / "gone.md").write_text(reference.HEADER.format(source="an old model"), encoding="utf-8")
    (out / "notes.md").write_text("A page written by hand stays.\n", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    with pytest.raises(SystemExit) as exit_info:
        reference.main(["--check", "--out", str(out)])
    message = str(exit_info.value.code)
    for name in (changed, missing, "gone.md"):
        assert name in message
    assert "notes.md" not in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # --check writes nothing

    reference.main(["--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == sorted([*pages, "notes.md"])
    reference.main(["--check", "--out", str(out)])  # returns: nothing is stale now


class Example(BaseModel):
    """How the pages read a model: this first paragraph.

    Not this one.
    """

    plain: int = 1
    # A note above a field
    noted: int = 2  # and one beside it.
    spread: int = Field(
        3,  # beside a line of its own
        ge=0,
    )

    # A heading: it names a group of fields.
    grouped: str | None = None
    described: float = Field(0.5, gt=0, le=1, description="the description wins")  # not this


def test_field_notes_and_group_headings_come_from_the_source():
    notes, headings = source_notes(Example)
    assert notes == {
        "noted": "A note above a field and one beside it.",
        "spread": "beside a line of its own",
        "described": "not this",
    }
    assert headings == {"grouped": "A heading: it names a group of fields."}
    assert doc_first_paragraph(Example) == "How the pages read a model: this first paragraph."


def test_model_table_rows():
    table = model_table(Example, "key", lambda name: f"`{name}`").splitlines()
    assert table[2] == "| `plain` | int | `1` |  |  |"
    assert table[3] == "| `noted` | int | `2` |  | A note above a field and one beside it. |"
    assert table[4] == "| `spread` | int | `3` | ≥ 0 | beside a line of its own |"
    assert table[5] == "| *A heading: it names a group of fields.* | | | | |"
    assert table[6] == "| `grouped` | str (optional) | unset |  |  |"
    assert table[7] == "| `described` | float | `0.5` | > 0, ≤ 1 | the description wins |"


def test_proto_comments_by_element():
    text = (
        '// The service.\n//\n// More.\nsyntax = "proto3";\n\n'
        "service S {\n  // Does it.\n  rpc Do(A) returns (B);\n}\n"
        "message A {\n  // Above.\n  optional string x = 1;  // beside\n  repeated int32 y = 2;\n}\n"
        "message B {}\n"
    )
    assert proto_comments(text) == {
        "": "The service.",
        "S.Do": "Does it.",
        "A.x": "Above. beside",
        "A.y": "",
    }
