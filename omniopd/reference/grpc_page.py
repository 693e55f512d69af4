"""The gRPC contract's page, from the ``.proto`` file (its comments included)."""

from __future__ import annotations

import re
from typing import Any

from omniopd.reference.common import HEADER, PROTO, ROOT, cell

GRPC_EXPLORE = """\
The server also offers `grpc.health.v1.Health` and server reflection, so
[grpcurl](https://github.com/fullstorydev/grpcurl) lists, describes and calls it without the
`.proto` file (the calls below ask the `toy` teacher of [the quickstart](../quickstart.md); a
gateway with a token also wants `-H "authorization: Bearer $OMNIOPD_GATEWAY_TOKEN"`):

```bash
grpcurl -plaintext 127.0.0.1:50051 list                                  # the services
grpcurl -plaintext 127.0.0.1:50051 describe omniopd.v1.TeacherGateway    # their RPCs
grpcurl -plaintext 127.0.0.1:50051 describe omniopd.v1.SampleRequest     # a message
grpcurl -plaintext 127.0.0.1:50051 omniopd.v1.TeacherGateway/ListTeachers

# SampleChunks: n continuations of the partial answer
grpcurl -plaintext -d '{
  "teacher": "toy",
  "messages": [{"role": "user", "content": "Q: 41+72*6=?"}],
  "partial_answer": "72*6=",
  "n": 4,
  "max_tokens": 16
}' 127.0.0.1:50051 omniopd.v1.TeacherGateway/SampleChunks

# StreamChunks: one JSON object per request; each reply names its request_id
grpcurl -plaintext -d @ 127.0.0.1:50051 omniopd.v1.TeacherGateway/StreamChunks <<'EOF'
{"request_id": "a", "teacher": "toy", "messages": [{"role": "user", "content": "Q: 97*4+30=?"}], "n": 2}
{"request_id": "b", "teacher": "toy", "messages": [{"role": "user", "content": "Q: 12+8*5=?"}], "n": 2}
EOF
```

Status codes, retry delays, health checks and a Python client: [gateway.md](../gateway.md#the-api).
"""


def proto_comments(text: str) -> dict[str, str]:
    """Comments of the .proto by element: ``""`` (the file's first paragraph), ``Service``,
    ``Service.Method``, ``Message`` and ``Message.field``: the ``//`` lines above an element
    plus one at the end of its line."""
    header = text.split("\n\n", 1)[0].splitlines()  # the comment block before `syntax`
    intro = []
    for line in header:
        if not line.startswith("//") or not line[2:].strip():
            break
        intro.append(line[2:].strip())
    found: dict[str, str] = {"": " ".join(intro)}
    above: list[str] = []
    scope: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("//"):
            if line[2:].strip():
                above.append(line[2:].strip())
            continue
        code, _, trailing = line.partition("//")
        code = code.strip()
        note = " ".join([*above, trailing.strip()]).strip()
        if m := re.match(r"(service|message)\s+(\w+)\s*\{", code):
            scope.append(m.group(2))
            if note:
                found[m.group(2)] = note
        elif (m := re.match(r"rpc\s+(\w+)", code)) or (
            scope and (m := re.match(r"(?:optional\s+|repeated\s+)?[\w.]+\s+(\w+)\s*=\s*\d+", code))
        ):
            found[f"{scope[-1]}.{m.group(1)}"] = note
        if code.endswith("}") and scope:
            scope.pop()
        above = []
    return found


def proto_type(field: Any) -> str:
    from google.protobuf.descriptor import FieldDescriptor

    if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_ENUM):
        target = field.message_type or field.enum_type
        name = target.full_name
        local = name.startswith("omniopd.v1.")
        text = f"[`{target.name}`](#{target.name.lower()})" if local else f"`{name}`"
    else:
        names = {
            v: k.removeprefix("TYPE_").lower()
            for k, v in vars(FieldDescriptor).items()
            if k.startswith("TYPE_")
        }
        text = f"`{names[field.type]}`"
    if field.is_repeated:
        return f"repeated {text}"
    if field.has_presence and field.containing_oneof is not None:
        return f"optional {text}"
    return text


def grpc_page() -> str:
    from omniopd.proto.v1 import gateway_pb2

    file = gateway_pb2.DESCRIPTOR
    # What the tables below cannot show yet: fail rather than leave it out of the page.
    unsupported = [*file.enum_types_by_name] + [
        m.name
        for m in file.message_types_by_name.values()
        if m.nested_types or m.enum_types or any(not o.name.startswith("_") for o in m.oneofs)
    ]
    if unsupported:
        raise SystemExit(f"omniopd.reference: enums, nested messages, oneofs in {unsupported}")
    notes = proto_comments(PROTO.read_text(encoding="utf-8"))
    rel = PROTO.relative_to(ROOT).as_posix()
    out = [
        HEADER.format(source=f"`{rel}`"),
        "# Reference: the gateway's gRPC API\n\n",
        f"{notes['']}\n\n" if notes[""] else "",
        f"Package `{file.package}`, from [`{rel}`](../../{rel}). {GRPC_EXPLORE}",
    ]
    for service in file.services_by_name.values():
        out.append(f"\n## service {service.name}\n\n")
        if note := notes.get(service.name):
            out.append(f"{note}\n\n")
        out.append("| RPC | request | reply | what it does |\n| --- | --- | --- | --- |\n")
        for method in service.methods:
            req = (
                "stream " if method.client_streaming else ""
            ) + f"[`{method.input_type.name}`](#{method.input_type.name.lower()})"
            rep = (
                "stream " if method.server_streaming else ""
            ) + f"[`{method.output_type.name}`](#{method.output_type.name.lower()})"
            note = cell(notes.get(f"{service.name}.{method.name}", ""))
            out.append(f"| `{method.name}` | {req} | {rep} | {note} |\n")
    out.append("\n## Messages\n")
    for message in file.message_types_by_name.values():
        out.append(f"\n### {message.name}\n\n")
        if note := notes.get(message.name):
            out.append(f"{note}\n\n")
        if not message.fields:
            out.append("No fields.\n")
            continue
        out.append("| field | number | type | meaning |\n| --- | --- | --- | --- |\n")
        for field in message.fields:
            note = cell(notes.get(f"{message.name}.{field.name}", ""))
            out.append(f"| `{field.name}` | {field.number} | {proto_type(field)} | {note} |\n")
    return "".join(out)
