"""The official `openai` Python client against a running `suanli serve` (started by
scripts/test-openai.sh with a catalog model): chat, streamed chat with usage, completions from
token ids with logprobs, n > 1 with stop strings, seeded reproducibility, concurrency, errors."""

import json
import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai import OpenAI

URL = os.environ["SUANLI_URL"]  # http://host:port/v1
KEY = os.environ["SUANLI_KEY"]
MODEL = os.environ["SUANLI_MODEL"]
client = OpenAI(base_url=URL, api_key=KEY, max_retries=0, timeout=300)


def tokenize(text):
    req = urllib.request.Request(
        URL.removesuffix("/v1") + "/tokenize",
        data=json.dumps({"content": text}).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)["tokens"]


def ask(**kw):
    args = dict(model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=32, temperature=0)
    args.update(kw)
    return client.chat.completions.create(**args)


def test_models_lists_the_served_model():
    assert MODEL in [m.id for m in client.models.list()]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat():
    r = ask(messages=[{"role": "user", "content": "What is 2+2?"}])
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    c = r.choices[0]
    assert c.index == 0 and c.message.role == "assistant"
    assert "4" in c.message.content
    assert c.finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_streamed_chat_with_usage_equals_non_streamed():
    whole = ask(max_tokens=48)
    text, finish, usage, roles = "", None, None, []
    for chunk in ask(max_tokens=48, stream=True, stream_options={"include_usage": True}):
        assert chunk.object == "chat.completion.chunk" and chunk.id.startswith("chatcmpl-")
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert roles == ["assistant"]
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_chat_logprobs():
    r = ask(max_tokens=6, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert t.logprob <= 0 and 1 <= len(t.top_logprobs) <= 3
        # Greedy: the chosen token is the most likely alternative.
        assert abs(max(a.logprob for a in t.top_logprobs) - t.logprob) < 1e-6
    assert "".join(t.token for t in content) == r.choices[0].message.content


def test_completions_from_token_ids_with_logprobs():
    ids = tokenize("The capital of France is")
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0, logprobs=3)
    assert r.object == "text_completion"
    c = r.choices[0]
    lp = c.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert r.usage.prompt_tokens == len(ids)
    for tok, p, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert p <= 0 and tok in top and len(top) <= 3
        assert abs(max(top.values()) - p) < 1e-6
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert "".join(lp.tokens) == c.text
    text = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert text.choices[0].text == c.text
    both = client.completions.create(model=MODEL, prompt=[ids, ids[:3]], max_tokens=4, temperature=0)
    assert [ch.index for ch in both.choices] == [0, 1]
    assert both.choices[0].text == c.text[: len(both.choices[0].text)]


def test_echo_with_prompt_logprobs():
    ids = tokenize("The capital of France is")
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0, logprobs=2, echo=True)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + r.usage.completion_tokens
    assert lp.token_logprobs[0] is None and all(p <= 0 for p in lp.token_logprobs[1:])
    assert r.choices[0].text.startswith("The capital of France is")


def test_n_with_stop_strings():
    r = client.completions.create(model=MODEL, prompt="A list of fruits: apple, banana,", n=3,
                                  max_tokens=30, temperature=1.0, seed=7, stop=[",", "\n"])
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    for c in r.choices:
        assert "," not in c.text and "\n" not in c.text
        assert c.finish_reason in ("stop", "length")
    chat = ask(n=2, temperature=0.8, seed=3, stop=["."], max_tokens=40)
    assert len(chat.choices) == 2
    for c in chat.choices:
        assert "." not in c.message.content
    streamed = {}
    for chunk in ask(n=2, temperature=0.8, seed=3, stop=["."], max_tokens=40, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    assert [streamed[i] for i in range(2)] == [c.message.content for c in chat.choices]


def test_seeded_sampling_is_reproducible():
    kw = dict(temperature=0.9, top_p=0.95, max_tokens=24,
              messages=[{"role": "user", "content": "Write a one-line poem about rain."}])
    a = ask(seed=1234, **kw).choices[0].message.content
    b = ask(seed=1234, **kw).choices[0].message.content
    assert a == b
    others = {ask(seed=s, **kw).choices[0].message.content for s in range(5)}
    assert len(others) > 1, "different seeds should give different answers"


def test_concurrent_answers_equal_answers_alone():
    prompts = [f"Tell me a fact about the number {i}." for i in range(8)]
    one = lambda p: ask(messages=[{"role": "user", "content": p}], max_tokens=24).choices[0].message.content
    alone = [one(p) for p in prompts]
    with ThreadPoolExecutor(8) as ex:
        together = list(ex.map(one, prompts))
    assert together == alone


def test_invalid_parameters():
    cases = [
        (dict(temperature=3.0), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(messages=[]), "messages"),
        (dict(n=0), "n"),
        (dict(logit_bias={"999999999": 1}), "logit_bias"),
        (dict(top_logprobs=2), "top_logprobs"),
        (dict(stop=["x"] * 40), "stop"),
    ]
    for kw, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            ask(**kw)
        assert e.value.status_code == 400
        assert e.value.param == param, (kw, e.value.body)
    with pytest.raises(openai.NotFoundError):
        ask(model="no-such-model")
    bad = OpenAI(base_url=URL, api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
