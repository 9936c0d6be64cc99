#!/usr/bin/env python3
"""Reference prompts for chats with tools: transformers' own chat-template rendering.

    python3 -m venv /tmp/t && /tmp/t/bin/pip install transformers jinja2
    /tmp/t/bin/python scripts/gen_tool_prompts.py

Writes tests/fixtures/templates/tool_prompts.json: OpenAI-shaped requests (as a client sends
them: `tools`, assistant `tool_calls` with JSON-string arguments, `role: "tool"` results) and
the prompt transformers renders for each with the Qwen2.5 chat template (the template in the
Qwen2.5-Coder GGUF, byte for byte), the way vLLM prepares them: tool-call arguments given to the
template as objects. The server's test renders the same requests through its own path
(`messages` -> `conversation` -> minijinja) and must produce the same text.
"""
import copy
import importlib.metadata
import json
import pathlib

from transformers.utils.chat_template_utils import render_jinja_template

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEMPLATE = (ROOT / "tests/fixtures/templates/qwen2.5.jinja").read_text()

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "城市 (city)"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "now", "description": "The time now",
                                         "parameters": {"type": "object", "properties": {}}}}

REQUESTS = [
    {"tools": [WEATHER], "messages": [{"role": "user", "content": "Weather in Paris?"}]},
    {"tools": [WEATHER, TIME], "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris and 北京, and the time?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"北京\", \"unit\": \"celsius\"}"}},
            {"id": "call_3", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, cloudy"},
        {"role": "tool", "tool_call_id": "call_2", "content": "{\"temp\": 3}"},
        {"role": "tool", "tool_call_id": "call_3", "content": "12:00"},
        {"role": "assistant", "content": "Paris 18 C, Beijing 3 C, noon."},
        {"role": "user", "content": "Thanks! And tomorrow in Paris?"},
    ]},
    {"tools": [TIME], "messages": [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "09:30"},
    ]},
]


def as_template_sees(messages):
    """Arguments strings become objects, as vLLM passes them to templates."""
    out = copy.deepcopy(messages)
    for m in out:
        for c in m.get("tool_calls") or []:
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
    return out


def main():
    cases = []
    for req in REQUESTS:
        rendered = render_jinja_template(
            conversations=[as_template_sees(req["messages"])],
            tools=req["tools"],
            chat_template=TEMPLATE,
            add_generation_prompt=True,
        )
        rendered = rendered[0][0] if isinstance(rendered, tuple) else rendered
        cases.append({"request": req, "rendered": rendered})
    out = {
        "generator": "scripts/gen_tool_prompts.py",
        "transformers": importlib.metadata.version("transformers"),
        "jinja2": importlib.metadata.version("jinja2"),
        "cases": cases,
    }
    path = ROOT / "tests/fixtures/templates/tool_prompts.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
