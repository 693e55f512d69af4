"""The verifier's page, from its OpenAPI schema."""

from __future__ import annotations

import json
from typing import Any

from omniopd.reference.common import HEADER, cell

VERIFIER_EXPLORE = """\
A running verifier serves this schema at `GET /openapi.json` (for client generators) and a
browsable page at `/docs`. With `curl` (a verifier with a token also wants
`-H "authorization: Bearer $OMNIOPD_VERIFIER_TOKEN"`):

```bash
curl -s http://127.0.0.1:8100/readyz            # 200 once the model is loaded, else 503
curl -s http://127.0.0.1:8100/openapi.json -o verifier-openapi.json
curl -s http://127.0.0.1:8100/v1/score -H 'content-type: application/json' -d '{
  "groups": [{"id": "fork-0", "drafts": ["so x = 4", "x equals 5"],
              "teacher": ["x = 4", "so x is 4", "dividing by 2, x = 4"]}],
  "reward": "logratio"
}'
curl -s http://127.0.0.1:8100/v1/embeddings -H 'content-type: application/json' \\
  -d '{"input": ["x = 4", "x is 4"]}'
```

Every non-2xx answer is [`ErrorResponse`](#errorresponse). What the scores mean, the errors, and
the Python client: [verifier.md](../verifier.md).

"""


def openapi_schema() -> dict[str, Any]:
    from omniopd.verifier.api import build_app
    from omniopd.verifier.serving import VerifierService
    from omniopd.verifier.settings import VerifierSettings

    # The defaults, not this machine's environment; the model is not loaded to make the schema.
    service = VerifierService(VerifierSettings.model_construct())
    return build_app(service).openapi()


def schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{name.lower()})"
    if "anyOf" in schema:
        parts = [schema_type(s) for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = any(s.get("type") == "null" for s in schema["anyOf"])
        return " or ".join(parts) + (" or null" if nullable else "")
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    if schema.get("type") == "array":
        return f"list of {schema_type(schema.get('items', {}))}"
    return f"`{schema.get('type', 'any')}`"


def schema_limits(schema: dict[str, Any]) -> str:
    names = {
        "minimum": "≥",
        "exclusiveMinimum": ">",
        "maximum": "≤",
        "exclusiveMaximum": "<",
        "minItems": "items ≥",
        "maxItems": "items ≤",
        "minLength": "length ≥",
        "maxLength": "length ≤",
    }
    words = [f"{symbol} {schema[key]}" for key, symbol in names.items() if key in schema]
    for option in schema.get("anyOf", []):
        words += [f"{symbol} {option[key]}" for key, symbol in names.items() if key in option]
    return ", ".join(words)


def verifier_api_page() -> str:
    spec = openapi_schema()
    out = [
        HEADER.format(source="the verifier's OpenAPI schema (`GET /openapi.json`)"),
        "# Reference: the verifier's HTTP API\n\n",
        f"{spec['info']['title']}, OpenAPI {spec['openapi']}. {VERIFIER_EXPLORE}",
        "## Routes\n\n| method | path | summary | request body | 200 | other answers |\n"
        "| --- | --- | --- | --- | --- | --- |\n",
    ]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            request = schema_type(body["schema"]) if body else ""
            ok = op["responses"].get("200", {}).get("content", {})
            reply = (
                schema_type(ok["application/json"]["schema"])
                if "application/json" in ok
                else ", ".join(f"`{t}`" for t in ok)
            )
            others = ", ".join(sorted(code for code in op["responses"] if code != "200"))
            out.append(
                f"| {method.upper()} | `{path}` | {cell(op.get('summary', ''))} | {request} | {reply} | {others} |\n"
            )
    out.append("\n## Schemas\n")
    for name, schema in spec["components"]["schemas"].items():
        out.append(f"\n### {name}\n\n")
        if schema.get("description"):
            out.append(f"{' '.join(schema['description'].split())}\n\n")
        props = schema.get("properties", {})
        if not props:
            out.append(f"{schema_type(schema)}\n")
            continue
        required = set(schema.get("required", []))
        out.append(
            "| field | type | required | default | allowed | meaning |\n| --- | --- | --- | --- | --- | --- |\n"
        )
        for prop, sub in props.items():
            default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
            out.append(
                f"| `{prop}` | {schema_type(sub)} | {'yes' if prop in required else ''} | {default} "
                f"| {cell(schema_limits(sub))} | {cell(' '.join(sub.get('description', '').split()))} |\n"
            )
    return "".join(out)
