"""Structured outputs and tool calling through the official `openai` client against
`suanli serve` on the default model (Qwen2.5-Coder-0.5B-Instruct), started by
scripts/test-openai.sh. Every JSON answer is checked with the `jsonschema` package; tool calls
are checked against their function's parameters."""

import json
import os
from typing import Literal, Optional

import jsonschema
import openai
import pydantic
import pytest
from openai import OpenAI

URL = os.environ["SUANLI_URL"]
KEY = os.environ["SUANLI_KEY"]
MODEL = os.environ["SUANLI_MODEL"]
client = OpenAI(base_url=URL, api_key=KEY, max_retries=0, timeout=600)

SCHEMAS = {
    "nested_refs": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "home": {"$ref": "#/$defs/address"},
            "work": {"anyOf": [{"$ref": "#/$defs/address"}, {"type": "null"}]},
        },
        "required": ["name", "home", "work"],
        "additionalProperties": False,
        "$defs": {
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 30},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                },
                "required": ["city", "zip"],
                "additionalProperties": False,
            }
        },
    },
    "enums_bounds_arrays": {
        "type": "object",
        "properties": {
            "status": {"enum": ["open", "closed", "pending"]},
            "priority": {"type": "integer", "minimum": 1, "maximum": 5},
            "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12},
                     "minItems": 2, "maxItems": 4},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        },
        "required": ["status", "priority", "score", "tags", "code"],
        "additionalProperties": False,
    },
    "nullable_and_non_ascii": {
        "type": "object",
        "properties": {
            "城市": {"type": "string", "maxLength": 20},
            "人口": {"type": ["integer", "null"], "minimum": 0},
            "café": {"type": "boolean"},
            "note": {"anyOf": [{"type": "string", "maxLength": 30}, {"type": "null"}]},
        },
        "required": ["城市", "人口", "café", "note"],
        "additionalProperties": False,
    },
    "list_of_objects": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string", "maxLength": 10},
                                   "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
                    "required": ["sku", "qty"],
                    "additionalProperties": False,
                },
            },
            "total": {"type": "number", "minimum": 0},
        },
        "required": ["items", "total"],
        "additionalProperties": False,
    },
}

PROMPTS = {
    "nested_refs": "Describe a fictional person with a home and work address.",
    "enums_bounds_arrays": "Create a support ticket record.",
    "nullable_and_non_ascii": "Describe the city of Hangzhou as JSON.",
    "list_of_objects": "Write a small shopping order.",
}


def chat(content, **kw):
    args = dict(model=MODEL, messages=[{"role": "user", "content": content}],
                max_tokens=200, temperature=0)
    args.update(kw)
    return client.chat.completions.create(**args)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_answers_validate(name):
    schema = SCHEMAS[name]
    r = chat(PROMPTS[name], response_format={
        "type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}})
    c = r.choices[0]
    assert c.finish_reason == "stop", c
    jsonschema.validate(json.loads(c.message.content), schema)


def test_sampled_json_schema_answers_validate():
    schema = SCHEMAS["enums_bounds_arrays"]
    r = chat(PROMPTS["enums_bounds_arrays"], temperature=1.0, seed=7, n=3, response_format={
        "type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    for c in r.choices:
        assert c.finish_reason == "stop", c
        jsonschema.validate(json.loads(c.message.content), schema)


def test_json_object_answers_parse():
    r = chat("List three colors in JSON.", response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_streamed_json_equals_whole():
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMAS["nested_refs"]}}
    whole = chat(PROMPTS["nested_refs"], response_format=fmt).choices[0].message.content
    text = "".join(ch.choices[0].delta.content or "" for ch in
                   chat(PROMPTS["nested_refs"], response_format=fmt, stream=True) if ch.choices)
    assert text == whole


def test_parse_with_a_pydantic_model():
    class Step(pydantic.BaseModel):
        explanation: str
        output: str

    class Math(pydantic.BaseModel):
        steps: list[Step]
        final_answer: str
        confidence: Optional[Literal["low", "high"]]

    r = client.chat.completions.parse(
        model=MODEL, temperature=0, max_tokens=300,
        messages=[{"role": "user", "content": "Solve 8x + 7 = -23 step by step."}],
        response_format=Math)
    assert isinstance(r.choices[0].message.parsed, Math)


def test_length_ends_with_length_not_invalid_stop():
    r = chat(PROMPTS["nested_refs"], max_tokens=5, response_format={
        "type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMAS["nested_refs"]}})
    assert r.choices[0].finish_reason == "length"


def test_vllm_and_llamacpp_fields():
    r = chat("Is the sky blue? Answer yes or no.", extra_body={
        "structured_outputs": {"choice": ["yes", "no"]}})
    assert r.choices[0].message.content in ("yes", "no")
    r = chat("Give a date.", extra_body={"structured_outputs": {"regex": "[0-9]{4}-[0-9]{2}-[0-9]{2}"}})
    assert len(r.choices[0].message.content) == 10
    r = chat("Say hi.", extra_body={"grammar": 'start: "hi" | "hello"'})
    assert r.choices[0].message.content in ("hi", "hello")
    r = client.completions.create(model=MODEL, prompt="The answer is", max_tokens=10, temperature=0,
                                  extra_body={"structured_outputs": {"regex": " [0-9]+"}})
    assert r.choices[0].text.strip().isdigit()


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The current time in a time zone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}},
                   "required": ["tz"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
ASK_WEATHER = "What's the weather like in Paris today?"


def check_calls(calls, names=None):
    assert calls
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        params = next(t for t in TOOLS if t["function"]["name"] == c.function.name)
        jsonschema.validate(json.loads(c.function.arguments), params["function"]["parameters"])
        if names:
            assert c.function.name in names


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_tool_choice_calls_the_tool(choice):
    r = chat(ASK_WEATHER, tools=TOOLS, tool_choice=choice)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    check_calls(c.message.tool_calls, {"get_weather"})
    assert "Paris" in json.loads(c.message.tool_calls[0].function.arguments)["city"]


def test_named_tool_choice_forces_that_tool():
    r = chat(ASK_WEATHER, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}})
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    check_calls(c.message.tool_calls, {"get_time"})


def test_tool_choice_none_answers_in_text():
    r = chat(ASK_WEATHER, tools=TOOLS, tool_choice="none")
    c = r.choices[0]
    assert not c.message.tool_calls and c.message.content and c.finish_reason in ("stop", "length")


def test_streamed_tool_calls_reassemble_to_the_whole_answer():
    for choice in ("required", "auto"):
        whole = chat(ASK_WEATHER, tools=TOOLS, tool_choice=choice).choices[0]
        calls, finish, content = {}, None, ""
        for ch in chat(ASK_WEATHER, tools=TOOLS, tool_choice=choice, stream=True):
            if not ch.choices:
                continue
            d = ch.choices[0].delta
            content += d.content or ""
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    slot["id"] = tc.id
                if tc.function and tc.function.name:
                    slot["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
            finish = ch.choices[0].finish_reason or finish
            assert "<tool_call>" not in content
        assert finish == whole.finish_reason == "tool_calls"
        got = [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)]
        want = [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
        assert got == want
        assert all(calls[i]["id"].startswith("call_") for i in calls)
        assert content == (whole.message.content or "")


def test_tool_round_trip_completes():
    first = chat(ASK_WEATHER, tools=TOOLS, tool_choice="required").choices[0].message
    call = first.tool_calls[0]
    messages = [
        {"role": "user", "content": ASK_WEATHER},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "cloudy"})},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                       max_tokens=80, temperature=0)
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length") and c.message.content
    assert not c.message.tool_calls


@pytest.mark.parametrize("kw, param", [
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}}}), "response_format"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}),
     "response_format"),
    (dict(response_format={"type": "yaml"}), "response_format"),
    (dict(extra_body={"grammar": "start: undefined_rule"}), "grammar"),
    (dict(extra_body={"structured_outputs": {"regex": "(unclosed"}}), "structured_outputs"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
    (dict(tools=[{"type": "function", "function": {"parameters": {}}}]), "tools"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}],
          tool_choice="required"), "tools"),
    (dict(tool_choice="required"), "tool_choice"),
])
def test_bad_requests_are_400_naming_the_field(kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        chat("hi", **kw)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param, e.value.body
