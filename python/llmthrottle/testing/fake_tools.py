"""The fake provider's tool calls, as a model that always reaches for its tools would make them.

A request that offers tools is answered with a call of one of them: the one `tool_choice` names,
else the first; its arguments fill each property of the tool's schema with a sample of its type
("tok", 1, 1.5, true, [] or {}). It answers in text instead when `tool_choice` is none or when the
conversation ends with a tool's result (the model has what it asked for).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

__all__ = ["ToolCall", "tool_call_for"]

_SAMPLES: dict[str, Any] = {"string": "tok", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}


class ToolCall:
    """The call the fake makes: an id in the provider's style, a tool name, its arguments."""

    def __init__(self, family: str, name: str, arguments: dict[str, Any]) -> None:
        self.id = f"{'call' if family == 'openai' else 'toolu'}_{uuid.uuid4().hex[:24]}"
        self.name = name
        self.arguments = arguments

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, separators=(",", ":"))

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments_json}}

    def anthropic(self) -> dict[str, Any]:
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": self.arguments}


def tool_call_for(body: dict[str, Any], family: str) -> ToolCall | None:
    """The call to answer `body` with, or None to answer in text."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = body.get("tool_choice")
    if choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else {}
    if _is_tool_result(last, family):
        return None
    schemas = {name: schema for name, schema in (_tool(tool, family) for tool in tools) if name is not None}
    if not schemas:
        return None
    forced = _forced(choice, family)
    name = forced if forced is not None and forced in schemas else next(iter(schemas))
    properties = schemas[name].get("properties") if isinstance(schemas[name], dict) else None
    arguments = {
        prop: _SAMPLES.get(str(spec.get("type")) if isinstance(spec, dict) else "", "tok")
        for prop, spec in (properties.items() if isinstance(properties, dict) else ())
    }
    return ToolCall(family, name, arguments)


def _is_tool_result(message: Any, family: str) -> bool:
    if not isinstance(message, dict):
        return False
    if family == "openai":
        return message.get("role") == "tool"
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    )


def _tool(tool: Any, family: str) -> tuple[str | None, Any]:
    if not isinstance(tool, dict):
        return None, None
    if family == "openai":
        function = tool.get("function")
        if not isinstance(function, dict):
            return None, None
        return function.get("name"), function.get("parameters") or {}
    return tool.get("name"), tool.get("input_schema") or {}


def _forced(choice: Any, family: str) -> str | None:
    if not isinstance(choice, dict):
        return None
    if family == "openai":
        function = choice.get("function")
        return function.get("name") if isinstance(function, dict) else None
    return choice.get("name") if choice.get("type") == "tool" else None
