"""The pages of the pydantic models: ``teachers.yaml``, the services' settings, ``TrainConfig``."""

from __future__ import annotations

import ast
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from omniopd.reference.common import HEADER, cell, doc_first_paragraph


def source_notes(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """What a class's source says beside its fields, as ``(notes, headings)`` by field name.

    A field's note is the comment block right above it plus any comment on its own lines. A
    comment block that follows a blank line heads a group of fields instead (``# Request
    limits (413 beyond them).``); it becomes the heading of the group's first field.
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}, {}
    lines = source.splitlines()
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }

    def comment_only(number: int) -> bool:  # 1-based, as ast and tokenize count
        return number >= 1 and lines[number - 1].lstrip().startswith("#")

    notes: dict[str, str] = {}
    headings: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name, first = node.target.id, node.lineno
        while comment_only(first - 1):
            first -= 1
        above = [comments[n] for n in range(first, node.lineno) if comments[n]]
        if above and first >= 2 and not lines[first - 2].strip():
            headings[name], above = " ".join(above), []
        own = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        if text := " ".join([*above, *own]):
            notes[name] = text
    return notes, headings


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None)) + " (optional)"
    if origin in (list, tuple, set):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def constraints(info: Any) -> str:
    words = []
    symbols = {
        "gt": ">",
        "ge": "≥",
        "lt": "<",
        "le": "≤",
        "min_length": "length ≥",
        "max_length": "length ≤",
    }
    for item in info.metadata:
        for attr, symbol in symbols.items():
            value = getattr(item, attr, None)
            if value is not None:
                words.append(f"{symbol} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            words.append(f"pattern `{pattern}`")
    return ", ".join(words)


def default_text(info: Any) -> str:
    extra = info.json_schema_extra
    if isinstance(extra, dict) and "default_text" in extra:  # e.g. a default that depends
        return str(extra["default_text"])  # on another field
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "**required**"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "(see below)"
    if value is None:
        return "unset"
    return f"`{json.dumps(value) if isinstance(value, dict | list | bool) else value}`"


def model_table(cls: type[BaseModel], first: str, name_of: Callable[[str], str]) -> str:
    """One row per field, in declaration order; a group's heading comment is a row of its own."""
    notes, headings = source_notes(cls)
    rows = [f"| {first} | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, info in cls.model_fields.items():
        if heading := headings.get(name):
            rows.append(f"| *{cell(heading)}* | | | | |")
        label = name_of(name)
        meaning = info.description or notes.get(name, "")
        if meaning == label.strip("`"):  # a description that only repeats the name
            meaning = ""
        rows.append(
            f"| {label} | {type_name(info.annotation)} | {default_text(info)} "
            f"| {cell(constraints(info))} | {cell(meaning)} |"
        )
    return "\n".join(rows) + "\n"


def gateway_config_page() -> str:
    from omniopd.gateway import config

    out = [
        HEADER.format(source="`omniopd.gateway.config`"),
        "# Reference: the gateway's `teachers.yaml`\n\n",
        "The file `omniopd-gateway --config` reads. Unknown keys are errors; a bad value stops the "
        "gateway at start, naming the teacher entry and the field. What each provider does with "
        "these fields: [gateway-providers.md](../gateway-providers.md).\n",
    ]
    sections = (
        (config.GatewayConfig, "The top level of the file"),
        (config.TeacherConfig, "Each entry of `teachers`"),
        (config.Limits, "A teacher's `limits`"),
        (config.Prices, "A teacher's `prices`"),
        (config.CacheConfig, "`cache`"),
    )
    for cls, where in sections:
        out.append(f"\n## {cls.__name__}\n\n{where}. {doc_first_paragraph(cls)}".rstrip() + "\n\n")
        out.append(model_table(cls, "key", lambda name: f"`{name}`"))
    return "".join(out)


def settings_page() -> str:
    from omniopd.gateway.cli import GatewaySettings
    from omniopd.settings import env_name
    from omniopd.trainer.services import ServiceTokens
    from omniopd.verifier.settings import VerifierSettings

    out = [
        HEADER.format(source="the services' settings classes"),
        "# Reference: environment variables\n\n",
        "Every process reads its settings from the environment (prefix `OMNIOPD_`, case does not "
        "matter; `REDIS_URL` has no prefix); a command-line flag, where there is one, wins. A bad "
        "value stops the process at start with one line per variable. Every process also reads "
        "`OMNIOPD_LOG_LEVEL` (default `INFO`) and `OMNIOPD_LOG_FORMAT` (`text` or `json`), the "
        "defaults of `--log-level` and `--log-format`.\n",
    ]
    run_config = "The run's own config is flags and YAML: [trainer-config.md](trainer-config.md)."
    sections = (
        (GatewaySettings, "omniopd-gateway", "omniopd.gateway.cli.GatewaySettings", ""),
        (VerifierSettings, "omniopd-verifier", "omniopd.verifier.settings.VerifierSettings", ""),
        (ServiceTokens, "omniopd-train", "omniopd.trainer.services.ServiceTokens", run_config),
    )
    for cls, who, path, more in sections:
        intro = " ".join(filter(None, [f"`{path}`.", doc_first_paragraph(cls), more]))
        out.append(f"\n## `{who}`\n\n{intro}\n\n")
        out.append(model_table(cls, "variable", lambda name, c=cls: f"`{env_name(c, name)}`"))
    return "".join(out)


def trainer_config_page() -> str:
    from omniopd.trainer.config import TrainConfig, flag

    out = [
        HEADER.format(source="`omniopd.trainer.config.TrainConfig`"),
        "# Reference: `omniopd-train` config\n\n",
        "Every field is a YAML key of `--config` and a flag (the field's name with dashes; "
        "booleans take `--name` / `--no-name`). Flags win over the YAML file, which wins over the "
        "config saved in `output_dir` (read with `--resume` only). What the fields do: "
        "[trainer.md](../trainer.md).\n\n",
    ]
    out.append(model_table(TrainConfig, "field", lambda name: f"`{name}` (`{flag(name)}`)"))
    return "".join(out)
