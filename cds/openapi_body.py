"""Request-body schemas for the OpenAPI document of routes that read their own JSON (hook call, feedback).

Those routes take the raw body so that they answer malformed input with an OperationOutcome of their own;
the document still has to describe the body. pydantic puts nested models under the schema's own `$defs`,
but a `$ref` inside an OpenAPI document points from the document's root, so the nested models are inlined
here (our request models are not recursive).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_DEFS = "#/$defs/"


def inline_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema without `$ref`s. Raises ValueError for a recursive model."""
    schema = model.model_json_schema()
    definitions: dict[str, Any] = schema.pop("$defs", {})

    def inline(node: Any, expanding: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(item, expanding) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_DEFS):
            name = ref.removeprefix(_DEFS)
            if name in expanding:
                raise ValueError(f"{model.__name__} is recursive through {name}; it cannot be inlined")
            siblings = {key: inline(value, expanding) for key, value in node.items() if key != "$ref"}
            return {**inline(definitions[name], (*expanding, name)), **siblings}
        return {key: inline(value, expanding) for key, value in node.items()}

    inlined: dict[str, Any] = inline(schema, ())
    return inlined
