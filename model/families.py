"""Per-family adapters: the few things that differ between VLM families once loaded through the Auto classes.

Chat templates come from the checkpoint itself; an adapter only says how to lay out one user turn
(images first, then text, as each family was trained), which tokens end a turn, and how that family
writes a tool call, so the rest of the runtime is family-agnostic.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


class ToolCall(BaseModel):
    """A tool invocation the model wrote; arguments are validated against the tool's schema by the caller."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class FamilyAdapter:
    """What differs between families; `model_types` are the `config.model_type` values it serves."""

    family: str
    model_types: tuple[str, ...]
    stop_tokens: tuple[str, ...]
    tool_call_open: str
    tool_call_close: str
    nested_images: bool = False

    def messages(self, image_count: int, prompt: str) -> list[dict[str, Any]]:
        """One user turn with `image_count` image slots before the text (training order of all three)."""
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(image_count)]
        content.append({"type": "text", "text": prompt})
        return [{"role": "user", "content": content}]

    def format_tool_call(self, call: ToolCall) -> str:
        """The text this family emits for `call`, used in few-shot prompts and tool-result turns."""
        return f"{self.tool_call_open}{call.model_dump_json()}{self.tool_call_close}"

    def parse_tool_calls(self, text: str) -> list[ToolCall]:
        """Every well-formed tool call in `text`; malformed ones are skipped (the agent re-asks)."""
        pattern = re.escape(self.tool_call_open) + r"(.*?)" + re.escape(self.tool_call_close)
        calls: list[ToolCall] = []
        for body in re.findall(pattern, text, flags=re.DOTALL):
            try:
                calls.append(ToolCall.model_validate(json.loads(body)))
            except ValueError:
                continue
        return calls


QWEN2_5_VL = FamilyAdapter(
    family="qwen2_5_vl",
    model_types=("qwen2_5_vl", "qwen2_vl"),
    stop_tokens=("<|im_end|>", "<|endoftext|>"),
    tool_call_open="<tool_call>\n",
    tool_call_close="\n</tool_call>",
)
GEMMA3 = FamilyAdapter(
    family="gemma3",
    model_types=("gemma3",),
    stop_tokens=("<end_of_turn>", "<eos>"),
    tool_call_open="```tool_call\n",
    tool_call_close="\n```",
    nested_images=True,
)
LLAVA = FamilyAdapter(
    family="llava",
    model_types=("llava",),
    stop_tokens=("<|im_end|>", "</s>", "<|endoftext|>"),
    tool_call_open="```tool_call\n",
    tool_call_close="\n```",
)
ADAPTERS = (QWEN2_5_VL, GEMMA3, LLAVA)


def adapter_for(model_type: str) -> FamilyAdapter:
    """The adapter for a checkpoint's `config.model_type`; an unknown family is refused, not guessed."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    known = sorted(t for a in ADAPTERS for t in a.model_types)
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {known}")
