#!/usr/bin/env python3
"""A strict emulator of three LLM providers' HTTP APIs, for the integration
tests (there is no internet): OpenAI Chat Completions, Anthropic Messages and
Gemini generateContent, each checking its requests the way the real API does
(per its public documentation) and answering with what the test scripted.

Usage: ``python3 tests/llm_emulator.py`` binds 127.0.0.1:0, prints
``LISTENING <port>`` and serves (HTTP/1.1, keep-alive) until killed.
Python 3 standard library only.

Endpoints (``<url>`` is ``http://127.0.0.1:<port>``):

- ``POST <url>/openai/v1/chat/completions``          (base URL ``<url>/openai/v1``)
- ``POST <url>/anthropic/v1/messages``               (base URL ``<url>/anthropic/v1``)
- ``POST <url>/gemini/v1beta/models/<m>:generateContent`` (base ``<url>/gemini/v1beta``)

Control endpoints (no auth): ``POST /_emu/script`` ``{"model", "replies"}``
appends to the model's FIFO queue, ``POST /_emu/default`` ``{"model",
"reply"}`` sets the reply used when the queue is empty, ``GET /_emu/received``
lists every provider request so far (rejected ones too), ``POST /_emu/reset``
forgets everything. The queues are per model and shared by the three APIs.

A reply is ``{"kind": "json", "value"}`` (answered as a tool call when the
request forces one, else as its compact JSON text), ``{"kind": "text",
"text"}``, ``{"kind": "error", "status", "retry_after"?, "message"?}``,
``{"kind": "delay", "ms", "then"}`` or ``{"kind": "refusal", "text"}``. A
request is checked before a reply is taken: an invalid one consumes nothing.

Tokens: input = max(1, ceil(len(compact JSON of the messages or contents,
plus that of the system prompt when given) / 4)); output = max(1,
ceil(len(answer text or tool-call arguments JSON) / 4)). An answer longer than
the request's output limit (max_tokens, max_completion_tokens,
maxOutputTokens) is cut to limit * 4 characters and reported as such
(finish_reason "length", stop_reason "max_tokens", finishReason "MAX_TOKENS");
Anthropic and Gemini tool calls are never cut. Error answers count no tokens.

In ``received`` a request still being answered (a delay) has status 0; one
whose client went away during a delay has status 499.
"""

import json
import math
import os
import re
import select
import socket
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

OPENAI_KEY = "sk-emu-openai-7Qx2Lm9Vt4Rb"
ANTHROPIC_KEY = "sk-ant-emu-3Jd8Pw5Kz1Nf"
GEMINI_KEY = "AIzaEmuGemini6Hc0Ys2Wq8"
ANTHROPIC_VERSION = "2023-06-01"

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOL_USE_ID_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
GEMINI_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")
GEMINI_PATH_RE = re.compile(r"^/gemini/v1beta/models/([^/:]+):([A-Za-z]+)$")


# --------------------------------------------------------------------------
# State


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.scripts = {}  # model -> deque of replies
        self.defaults = {}  # model -> reply
        self.received = []  # records, in arrival order

    def take(self, model):
        with self.lock:
            queue = self.scripts.get(model)
            if queue:
                return queue.popleft()
            return self.defaults.get(model)


STATE = State()


class Invalid(Exception):
    """A request the provider would refuse: ``status`` with ``message``."""

    def __init__(self, message, param=None, status=400, kind=None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.kind = kind


class ControlError(Exception):
    pass


def compact(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def count_tokens(text):
    return max(1, math.ceil(len(text) / 4))


def hexid(n=24):
    return os.urandom(n // 2).hex()


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def truncate(text, limit):
    """The text and whether it was cut to ``limit`` tokens."""
    if limit is not None and count_tokens(text) > limit:
        return text[: limit * 4], True
    return text, False


# --------------------------------------------------------------------------
# Replies (control side)


REPLY_KEYS = {
    "json": {"kind", "value"},
    "text": {"kind", "text"},
    "error": {"kind", "status", "retry_after", "message"},
    "delay": {"kind", "ms", "then"},
    "refusal": {"kind", "text"},
}


def check_reply(r, path):
    if not isinstance(r, dict):
        raise ControlError(f"{path}: a reply is an object with a kind")
    kind = r.get("kind")
    if kind not in REPLY_KEYS:
        raise ControlError(f"{path}.kind: one of {sorted(REPLY_KEYS)}, not {kind!r}")
    extra = sorted(set(r) - REPLY_KEYS[kind])
    if extra:
        raise ControlError(f"{path}: unknown keys {extra} for kind {kind}")
    if kind == "json" and "value" not in r:
        raise ControlError(f"{path}.value is required")
    if kind in ("text", "refusal") and not isinstance(r.get("text"), str):
        raise ControlError(f"{path}.text must be a string")
    if kind == "error":
        if not is_int(r.get("status")) or not 400 <= r["status"] <= 599:
            raise ControlError(f"{path}.status must be an HTTP error status (400-599)")
        ra = r.get("retry_after")
        if ra is not None and (not is_num(ra) or ra < 0):
            raise ControlError(f"{path}.retry_after must be a non-negative number")
        if r.get("message") is not None and not isinstance(r["message"], str):
            raise ControlError(f"{path}.message must be a string")
    if kind == "delay":
        if not is_int(r.get("ms")) or r["ms"] < 0:
            raise ControlError(f"{path}.ms must be a non-negative integer")
        check_reply(r.get("then"), path + ".then")


def fmt_secs(v):
    return str(int(v)) if float(v).is_integer() else str(v)


# --------------------------------------------------------------------------
# OpenAI Chat Completions


def o_type(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a decimal"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


OPENAI_TOP = [
    "model", "messages", "response_format", "tools", "tool_choice", "max_tokens",
    "max_completion_tokens", "temperature", "n", "stream", "top_p", "seed", "user",
    "stop", "presence_penalty", "frequency_penalty", "metadata", "store",
    "parallel_tool_calls", "reasoning_effort", "stream_options",
]
OPENAI_ROLES = ["system", "developer", "user", "assistant", "tool"]
OPENAI_MSG_KEYS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "refusal"},
    "tool": {"role", "content", "tool_call_id"},
}


class OpenAI:
    api = "openai"
    prefix = "/openai"

    def error_body(self, status, message, param=None, kind=None):
        if kind is None:
            kind, code = {
                401: ("invalid_request_error", "invalid_api_key"),
                404: ("invalid_request_error", None),
                429: ("requests", "rate_limit_exceeded"),
            }.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        else:
            kind, code = kind
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}

    def default_message(self, status):
        return {
            429: "Rate limit reached for requests. Please try again later.",
            500: "The server had an error while processing your request. Sorry about that!",
            503: "The engine is currently overloaded, please try again later.",
        }.get(status, f"emulated error {status}")

    def headers(self):
        return [("x-request-id", "req_" + hexid(32))]

    def route(self, method, path):
        if path != "/openai/v1/chat/completions":
            raise Invalid(f"Invalid URL ({method} {path[len(self.prefix):]})", status=404)
        if method != "POST":
            raise Invalid(f"Invalid method for URL ({method} {path[len(self.prefix):]})", status=405)
        return None

    def auth(self, headers, query):
        value = headers.get("authorization")
        if value is None:
            raise Invalid(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                status=401,
            )
        key = value[7:].strip() if value[:7].lower() == "bearer " else value.strip()
        if key != OPENAI_KEY:
            shown = key[:6] if len(key) >= 8 else key[: len(key) // 2]
            raise Invalid(f"Incorrect API key provided: {shown}***", status=401)

    def not_json(self):
        return Invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)"
        )

    def model_of(self, body):
        m = body.get("model") if isinstance(body, dict) else None
        return m if isinstance(m, str) else ""

    # -- validation

    def content(self, c, p):
        if isinstance(c, str):
            return
        if isinstance(c, list):
            if not c:
                raise Invalid(
                    f"Invalid '{p}': empty array. Expected an array with minimum length 1, "
                    "but got an empty array instead.", p)
            for j, part in enumerate(c):
                pp = f"{p}[{j}]"
                if not isinstance(part, dict):
                    raise Invalid(f"Invalid type for '{pp}': expected an object, but got "
                                  f"{o_type(part)} instead.", pp)
                if "type" not in part:
                    raise Invalid(f"Missing required parameter: '{pp}.type'.", f"{pp}.type")
                if part["type"] != "text":
                    raise Invalid(f"Invalid value: '{part['type']}'. Supported values are: "
                                  "'text'.", f"{pp}.type")
                for k in part:
                    if k not in ("type", "text"):
                        raise Invalid(f"Unrecognized request argument supplied: {pp}.{k}", f"{pp}.{k}")
                if "text" not in part:
                    raise Invalid(f"Missing required parameter: '{pp}.text'.", f"{pp}.text")
                if not isinstance(part["text"], str):
                    raise Invalid(f"Invalid type for '{pp}.text': expected a string, but got "
                                  f"{o_type(part['text'])} instead.", f"{pp}.text")
            return
        raise Invalid(f"Invalid type for '{p}': expected one of a string or array of objects, "
                      f"but got {o_type(c)} instead.", p)

    def tool_calls(self, tcs, p):
        if not isinstance(tcs, list):
            raise Invalid(f"Invalid type for '{p}': expected an array of objects, but got "
                          f"{o_type(tcs)} instead.", p)
        if not tcs:
            raise Invalid(f"Invalid '{p}': empty array. Expected an array with minimum length 1, "
                          "but got an empty array instead.", p)
        ids = []
        for j, tc in enumerate(tcs):
            pp = f"{p}[{j}]"
            if not isinstance(tc, dict):
                raise Invalid(f"Invalid type for '{pp}': expected an object, but got "
                              f"{o_type(tc)} instead.", pp)
            for k in tc:
                if k not in ("id", "type", "function"):
                    raise Invalid(f"Unrecognized request argument supplied: {pp}.{k}", f"{pp}.{k}")
            for k in ("id", "type", "function"):
                if k not in tc:
                    raise Invalid(f"Missing required parameter: '{pp}.{k}'.", f"{pp}.{k}")
            if not isinstance(tc["id"], str) or not tc["id"]:
                raise Invalid(f"Invalid '{pp}.id': expected a non-empty string.", f"{pp}.id")
            if tc["type"] != "function":
                raise Invalid(f"Invalid value: '{tc['type']}'. Supported values are: 'function'.",
                              f"{pp}.type")
            f = tc["function"]
            if not isinstance(f, dict):
                raise Invalid(f"Invalid type for '{pp}.function': expected an object, but got "
                              f"{o_type(f)} instead.", f"{pp}.function")
            for k in f:
                if k not in ("name", "arguments"):
                    raise Invalid(f"Unrecognized request argument supplied: {pp}.function.{k}",
                                  f"{pp}.function.{k}")
            for k in ("name", "arguments"):
                if k not in f:
                    raise Invalid(f"Missing required parameter: '{pp}.function.{k}'.",
                                  f"{pp}.function.{k}")
                if not isinstance(f[k], str):
                    raise Invalid(f"Invalid type for '{pp}.function.{k}': expected a string, but "
                                  f"got {o_type(f[k])} instead.", f"{pp}.function.{k}")
            try:
                json.loads(f["arguments"])
            except ValueError:
                raise Invalid(f"Invalid '{pp}.function.arguments': expected a JSON string.",
                              f"{pp}.function.arguments")
            ids.append(tc["id"])
        return ids

    def messages(self, msgs):
        if not isinstance(msgs, list):
            raise Invalid("Invalid type for 'messages': expected an array of objects, but got "
                          f"{o_type(msgs)} instead.", "messages")
        if not msgs:
            raise Invalid("Invalid 'messages': empty array. Expected an array with minimum "
                          "length 1, but got an empty array instead.", "messages")
        call_ids = None  # the tool_calls ids of the assistant message answered now
        awaiting = []  # of those, the ones without a tool message yet
        awaiting_at = 0
        for i, m in enumerate(msgs):
            p = f"messages[{i}]"
            if not isinstance(m, dict):
                raise Invalid(f"Invalid type for '{p}': expected an object, but got "
                              f"{o_type(m)} instead.", p)
            if "role" not in m:
                raise Invalid(f"Missing required parameter: '{p}.role'.", f"{p}.role")
            role = m["role"]
            if role not in OPENAI_ROLES:
                raise Invalid(f"Invalid value: '{role}'. Supported values are: 'system', "
                              "'developer', 'user', 'assistant', and 'tool'.", f"{p}.role")
            for k in m:
                if k not in OPENAI_MSG_KEYS[role]:
                    raise Invalid(f"Additional properties are not allowed ('{k}' was unexpected) "
                                  f"- 'messages.{i}'", f"{p}.{k}")
            if role != "tool":
                if awaiting:
                    raise Invalid(
                        "An assistant message with 'tool_calls' must be followed by tool "
                        "messages responding to each 'tool_call_id'. The following "
                        f"tool_call_ids did not have response messages: {', '.join(awaiting)}",
                        f"messages.[{awaiting_at}].role")
                call_ids = None
            if "name" in m and not isinstance(m["name"], str):
                raise Invalid(f"Invalid type for '{p}.name': expected a string, but got "
                              f"{o_type(m['name'])} instead.", f"{p}.name")
            if role == "assistant":
                tcs = m.get("tool_calls")
                if tcs is not None:
                    call_ids = self.tool_calls(tcs, f"{p}.tool_calls")
                    awaiting = list(call_ids)
                    awaiting_at = i
                if m.get("content") is None:
                    if tcs is None:
                        raise Invalid(f"Missing required parameter: '{p}.content'.", f"{p}.content")
                else:
                    self.content(m["content"], f"{p}.content")
                if m.get("refusal") is not None and not isinstance(m["refusal"], str):
                    raise Invalid(f"Invalid type for '{p}.refusal': expected a string, but got "
                                  f"{o_type(m['refusal'])} instead.", f"{p}.refusal")
                continue
            if role == "tool":
                if call_ids is None:
                    raise Invalid("Invalid parameter: messages with role 'tool' must be a "
                                  "response to a preceeding message with 'tool_calls'.",
                                  f"messages.[{i}].role")
                if "tool_call_id" not in m:
                    raise Invalid(f"Missing required parameter: '{p}.tool_call_id'.",
                                  f"{p}.tool_call_id")
                tcid = m["tool_call_id"]
                if not isinstance(tcid, str):
                    raise Invalid(f"Invalid type for '{p}.tool_call_id': expected a string, but "
                                  f"got {o_type(tcid)} instead.", f"{p}.tool_call_id")
                if tcid not in call_ids:
                    raise Invalid(f"Invalid parameter: 'tool_call_id' of '{tcid}' not found in "
                                  "'tool_calls' of previous message.", f"messages.[{i}].tool_call_id")
                if tcid in awaiting:
                    awaiting.remove(tcid)
            if "content" not in m or m["content"] is None:
                raise Invalid(f"Missing required parameter: '{p}.content'.", f"{p}.content")
            self.content(m["content"], f"{p}.content")
        if awaiting:
            raise Invalid(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(awaiting)}", f"messages.[{awaiting_at}].role")

    def strict_schema(self, schema, label, path=()):
        """What strict mode requires of a schema: every object closed and
        every property required."""
        if not isinstance(schema, dict):
            return
        is_object = schema.get("type") == "object" or (
            isinstance(schema.get("type"), list) and "object" in schema["type"]) or "properties" in schema
        if is_object:
            if schema.get("additionalProperties") is not False:
                raise Invalid(f"Invalid schema for {label}: In context={path!r}, "
                              "'additionalProperties' is required to be supplied and to be false.")
            props = schema.get("properties") or {}
            required = schema.get("required")
            missing = [k for k in props if not isinstance(required, list) or k not in required]
            if missing:
                raise Invalid(f"Invalid schema for {label}: In context={path!r}, 'required' is "
                              "required to be supplied and to be an array including every key in "
                              f"properties. Missing '{missing[0]}'.")
            for k, sub in props.items():
                self.strict_schema(sub, label, path + ("properties", k))
        if "items" in schema:
            self.strict_schema(schema["items"], label, path + ("items",))
        for key in ("anyOf", "allOf"):
            for j, sub in enumerate(schema.get(key) or []):
                self.strict_schema(sub, label, path + (key, str(j)))
        for key in ("$defs", "definitions"):
            for name, sub in (schema.get(key) or {}).items():
                self.strict_schema(sub, label, path + (key, name))

    def name(self, v, p):
        if not isinstance(v, str):
            raise Invalid(f"Invalid type for '{p}': expected a string, but got {o_type(v)} "
                          "instead.", p)
        if len(v) > 64:
            raise Invalid(f"Invalid '{p}': string too long. Expected a string with maximum "
                          f"length 64, but got a string with length {len(v)} instead.", p)
        if not NAME_RE.match(v):
            raise Invalid(f"Invalid '{p}': string does not match pattern. Expected a string that "
                          "matches the pattern '^[a-zA-Z0-9_-]+$'.", p)

    def response_format(self, rf, messages):
        p = "response_format"
        if not isinstance(rf, dict):
            raise Invalid(f"Invalid type for '{p}': expected an object, but got {o_type(rf)} "
                          "instead.", p)
        if "type" not in rf:
            raise Invalid(f"Missing required parameter: '{p}.type'.", f"{p}.type")
        t = rf["type"]
        if t not in ("text", "json_object", "json_schema"):
            raise Invalid(f"Invalid value: '{t}'. Supported values are: 'text', 'json_object', "
                          "and 'json_schema'.", f"{p}.type")
        allowed = ("type", "json_schema") if t == "json_schema" else ("type",)
        for k in rf:
            if k not in allowed:
                raise Invalid(f"Unrecognized request argument supplied: {p}.{k}", f"{p}.{k}")
        if t == "json_object" and "json" not in compact(messages).lower():
            raise Invalid("'messages' must contain the word 'json' in some form, to use "
                          "'response_format' of type 'json_object'.", "messages")
        if t != "json_schema":
            return
        js = rf.get("json_schema")
        if js is None:
            raise Invalid(f"Missing required parameter: '{p}.json_schema'.", f"{p}.json_schema")
        p = f"{p}.json_schema"
        if not isinstance(js, dict):
            raise Invalid(f"Invalid type for '{p}': expected an object, but got {o_type(js)} "
                          "instead.", p)
        for k in js:
            if k not in ("name", "schema", "strict", "description"):
                raise Invalid(f"Unrecognized request argument supplied: {p}.{k}", f"{p}.{k}")
        if "name" not in js:
            raise Invalid(f"Missing required parameter: '{p}.name'.", f"{p}.name")
        self.name(js["name"], f"{p}.name")
        if "schema" not in js:
            raise Invalid(f"Missing required parameter: '{p}.schema'.", f"{p}.schema")
        if not isinstance(js["schema"], dict):
            raise Invalid(f"Invalid type for '{p}.schema': expected an object, but got "
                          f"{o_type(js['schema'])} instead.", f"{p}.schema")
        if js.get("strict") is not None and not isinstance(js["strict"], bool):
            raise Invalid(f"Invalid type for '{p}.strict': expected a boolean, but got "
                          f"{o_type(js['strict'])} instead.", f"{p}.strict")
        if js.get("description") is not None and not isinstance(js["description"], str):
            raise Invalid(f"Invalid type for '{p}.description': expected a string, but got "
                          f"{o_type(js['description'])} instead.", f"{p}.description")
        if js.get("strict"):
            label = f"response_format '{js['name']}'"
            if js["schema"].get("type") != "object":
                raise Invalid(f"Invalid schema for {label}: schema must be a JSON Schema of "
                              f"'type: \"object\"', got 'type: \"{js['schema'].get('type')}\"'.",
                              f"{p}.schema")
            self.strict_schema(js["schema"], label)

    def tools(self, tools):
        if not isinstance(tools, list):
            raise Invalid(f"Invalid type for 'tools': expected an array of objects, but got "
                          f"{o_type(tools)} instead.", "tools")
        if not tools:
            raise Invalid("Invalid 'tools': empty array. Expected an array with minimum length 1, "
                          "but got an empty array instead.", "tools")
        names = []
        for i, t in enumerate(tools):
            p = f"tools[{i}]"
            if not isinstance(t, dict):
                raise Invalid(f"Invalid type for '{p}': expected an object, but got {o_type(t)} "
                              "instead.", p)
            for k in t:
                if k not in ("type", "function"):
                    raise Invalid(f"Unrecognized request argument supplied: {p}.{k}", f"{p}.{k}")
            if "type" not in t:
                raise Invalid(f"Missing required parameter: '{p}.type'.", f"{p}.type")
            if t["type"] != "function":
                raise Invalid(f"Invalid value: '{t['type']}'. Supported values are: 'function'.",
                              f"{p}.type")
            f = t.get("function")
            if f is None:
                raise Invalid(f"Missing required parameter: '{p}.function'.", f"{p}.function")
            p = f"{p}.function"
            if not isinstance(f, dict):
                raise Invalid(f"Invalid type for '{p}': expected an object, but got {o_type(f)} "
                              "instead.", p)
            for k in f:
                if k not in ("name", "description", "parameters", "strict"):
                    raise Invalid(f"Unrecognized request argument supplied: {p}.{k}", f"{p}.{k}")
            if "name" not in f:
                raise Invalid(f"Missing required parameter: '{p}.name'.", f"{p}.name")
            self.name(f["name"], f"{p}.name")
            if f.get("description") is not None and not isinstance(f["description"], str):
                raise Invalid(f"Invalid type for '{p}.description': expected a string, but got "
                              f"{o_type(f['description'])} instead.", f"{p}.description")
            if f.get("parameters") is not None and not isinstance(f["parameters"], dict):
                raise Invalid(f"Invalid type for '{p}.parameters': expected an object, but got "
                              f"{o_type(f['parameters'])} instead.", f"{p}.parameters")
            if f.get("strict") is not None and not isinstance(f["strict"], bool):
                raise Invalid(f"Invalid type for '{p}.strict': expected a boolean, but got "
                              f"{o_type(f['strict'])} instead.", f"{p}.strict")
            if f.get("strict") and isinstance(f.get("parameters"), dict):
                self.strict_schema(f["parameters"], f"function '{f['name']}'")
            names.append(f["name"])
        return names

    def validate(self, body):
        if not isinstance(body, dict):
            raise Invalid(f"Invalid type for request body: expected an object, but got "
                          f"{o_type(body)} instead.")
        for k in body:
            if k not in OPENAI_TOP:
                raise Invalid(f"Unrecognized request argument supplied: {k}")
        if body.get("model") is None:
            raise Invalid("you must provide a model parameter")
        model = body["model"]
        if not isinstance(model, str) or not model:
            raise Invalid(f"Invalid type for 'model': expected a non-empty string, but got "
                          f"{o_type(model)} instead.", "model")
        if "messages" not in body:
            raise Invalid("Missing required parameter: 'messages'.", "messages")
        self.messages(body["messages"])

        def number(key, lo, hi, integer=False):
            v = body.get(key)
            if v is None:
                return None
            if not (is_int(v) if integer else is_num(v)):
                want = "an integer" if integer else "a number"
                raise Invalid(f"Invalid type for '{key}': expected {want}, but got {o_type(v)} "
                              "instead.", key)
            if lo is not None and v < lo:
                raise Invalid(f"Invalid '{key}': {'integer' if integer else 'decimal'} below "
                              f"minimum value. Expected a value >= {lo}, but got {v} instead.", key)
            if hi is not None and v > hi:
                raise Invalid(f"Invalid '{key}': {'integer' if integer else 'decimal'} above "
                              f"maximum value. Expected a value <= {hi}, but got {v} instead.", key)
            return v

        def typed(key, kind, name):
            v = body.get(key)
            if v is not None and not isinstance(v, kind):
                raise Invalid(f"Invalid type for '{key}': expected {name}, but got {o_type(v)} "
                              "instead.", key)
            return v

        limit = number("max_completion_tokens", 1, None, True)
        max_tokens = number("max_tokens", 1, None, True)
        if limit is None:
            limit = max_tokens
        number("temperature", 0, 2)
        number("top_p", 0, 1)
        number("presence_penalty", -2, 2)
        number("frequency_penalty", -2, 2)
        number("seed", None, None, True)
        if body.get("n") is not None:
            number("n", 1, None, True)
            if body["n"] != 1:
                raise Invalid("emulator: 'n' must be 1 (one choice is emulated).", "n")
        if body.get("stream") is not None:
            typed("stream", bool, "a boolean")
            if body["stream"]:
                raise Invalid("emulator: streaming is not emulated; 'stream' must be false.",
                              "stream")
        if body.get("stream_options") is not None:
            raise Invalid("The 'stream_options' parameter is only allowed when 'stream' is "
                          "enabled.", "stream_options")
        typed("user", str, "a string")
        typed("store", bool, "a boolean")
        typed("parallel_tool_calls", bool, "a boolean")
        stop = body.get("stop")
        if stop is not None and not isinstance(stop, str):
            if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
                raise Invalid("Invalid type for 'stop': expected one of a string or array of "
                              f"strings, but got {o_type(stop)} instead.", "stop")
            if len(stop) > 4:
                raise Invalid(f"Invalid 'stop': array too long. Expected an array with maximum "
                              f"length 4, but got an array with length {len(stop)} instead.", "stop")
        md = body.get("metadata")
        if md is not None:
            if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
                raise Invalid("Invalid type for 'metadata': expected an object of strings.",
                              "metadata")
            if len(md) > 16:
                raise Invalid("Invalid 'metadata': too many properties. Expected an object with "
                              f"at most 16 properties, but got {len(md)} instead.", "metadata")
        re_ = body.get("reasoning_effort")
        if re_ is not None and re_ not in ("none", "minimal", "low", "medium", "high", "xhigh"):
            raise Invalid(f"Invalid value: '{re_}'. Supported values are: 'none', 'minimal', "
                          "'low', 'medium', 'high', and 'xhigh'.", "reasoning_effort")
        if body.get("response_format") is not None:
            self.response_format(body["response_format"], body["messages"])
        names = []
        if body.get("tools") is not None:
            names = self.tools(body["tools"])
        if body.get("parallel_tool_calls") is not None and not names:
            raise Invalid("Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only "
                          "allowed when 'tools' are specified.", "parallel_tool_calls")
        forced = None
        tc = body.get("tool_choice")
        if tc is not None:
            if not names:
                raise Invalid("Invalid value for 'tool_choice': 'tool_choice' is only allowed "
                              "when 'tools' are specified.", "tool_choice")
            if isinstance(tc, str):
                if tc not in ("none", "auto", "required"):
                    raise Invalid(f"Invalid value: '{tc}'. Supported values are: 'none', 'auto', "
                                  "and 'required'.", "tool_choice")
                if tc == "required":
                    forced = names[0]
            elif isinstance(tc, dict):
                for k in tc:
                    if k not in ("type", "function"):
                        raise Invalid(f"Unrecognized request argument supplied: tool_choice.{k}",
                                      f"tool_choice.{k}")
                if tc.get("type") != "function":
                    raise Invalid(f"Invalid value: '{tc.get('type')}'. Supported values are: "
                                  "'function'.", "tool_choice.type")
                f = tc.get("function")
                if not isinstance(f, dict) or set(f) != {"name"} or not isinstance(f["name"], str):
                    raise Invalid("Invalid 'tool_choice.function': expected an object with only "
                                  "a string 'name'.", "tool_choice.function")
                if f["name"] not in names:
                    raise Invalid(f"Invalid value for 'tool_choice': tool '{f['name']}' not found "
                                  "in 'tools'.", "tool_choice")
                forced = f["name"]
            else:
                raise Invalid("Invalid type for 'tool_choice': expected one of a string or "
                              f"object, but got {o_type(tc)} instead.", "tool_choice")
        return {
            "model": model,
            "forced": forced,
            "limit": limit,
            "input_tokens": count_tokens(compact(body["messages"])),
        }

    # -- answers

    def answer(self, ctx, reply):
        """(status, body, output_tokens)"""
        kind = reply["kind"]
        message = {"role": "assistant", "content": None, "refusal": None}
        finish = "stop"
        if kind == "json" and ctx["forced"]:
            args, cut = truncate(compact(reply["value"]), ctx["limit"])
            out = args
            message["tool_calls"] = [{
                "id": "call_" + hexid(24),
                "type": "function",
                "function": {"name": ctx["forced"], "arguments": args},
            }]
            finish = "length" if cut else "tool_calls"
        elif kind == "refusal":
            out = reply["text"]
            message["refusal"] = out
        else:
            text = compact(reply["value"]) if kind == "json" else reply["text"]
            out, cut = truncate(text, ctx["limit"])
            message["content"] = out
            if cut:
                finish = "length"
        n_out = count_tokens(out)
        body = {
            "id": "chatcmpl-" + hexid(24),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": ctx["model"],
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": ctx["input_tokens"], "completion_tokens": n_out,
                      "total_tokens": ctx["input_tokens"] + n_out},
        }
        return 200, body, n_out


# --------------------------------------------------------------------------
# Anthropic Messages


ANTHROPIC_TOP = [
    "model", "max_tokens", "messages", "system", "tools", "tool_choice", "temperature",
    "top_p", "top_k", "stop_sequences", "metadata", "stream", "thinking", "service_tier",
]
ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class Anthropic:
    api = "anthropic"
    prefix = "/anthropic"

    def error_body(self, status, message, param=None, kind=None):
        kind = kind or ANTHROPIC_ERRORS.get(
            status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def default_message(self, status):
        return {
            429: "Number of request tokens has exceeded your per-minute rate limit.",
            500: "Internal server error",
            529: "Overloaded",
        }.get(status, f"emulated error {status}")

    def headers(self):
        return [("request-id", "req_" + hexid(24))]

    def route(self, method, path):
        if path != "/anthropic/v1/messages":
            raise Invalid("Not Found", status=404)
        if method != "POST":
            raise Invalid(f"Method {method} not allowed for {path[len(self.prefix):]}", status=405)
        return None

    def auth(self, headers, query):
        if headers.get("x-api-key") != ANTHROPIC_KEY:
            raise Invalid("invalid x-api-key", status=401)
        version = headers.get("anthropic-version")
        if version is None:
            raise Invalid("anthropic-version: header is required")
        if version != ANTHROPIC_VERSION:
            raise Invalid(f"anthropic-version: \"{version}\" is not a valid version")

    def not_json(self):
        return Invalid("There was an error parsing the body of your request as JSON.")

    def model_of(self, body):
        m = body.get("model") if isinstance(body, dict) else None
        return m if isinstance(m, str) else ""

    # -- validation

    @staticmethod
    def extra(d, allowed, p):
        for k in d:
            if k not in allowed:
                raise Invalid(f"{p}{k}: Extra inputs are not permitted")

    def text_block(self, b, p):
        self.extra(b, ("type", "text", "cache_control", "citations"), p + ".")
        if "text" not in b:
            raise Invalid(f"{p}.text: Field required")
        if not isinstance(b["text"], str):
            raise Invalid(f"{p}.text: Input should be a valid string")
        if not b["text"]:
            raise Invalid("messages: text content blocks must be non-empty")

    def system(self, s):
        if isinstance(s, str):
            return
        if not isinstance(s, list):
            raise Invalid("system: Input should be a valid string or a list of text blocks")
        for j, b in enumerate(s):
            p = f"system.{j}"
            if not isinstance(b, dict) or b.get("type") != "text":
                raise Invalid(f"{p}.type: Input should be 'text'")
            self.text_block(b, p)

    def messages(self, msgs):
        if not isinstance(msgs, list):
            raise Invalid("messages: Input should be a valid list")
        if not msgs:
            raise Invalid("messages: at least one message is required")
        prev_uses = None  # tool_use ids of the previous message, when an assistant's
        for i, m in enumerate(msgs):
            p = f"messages.{i}"
            if not isinstance(m, dict):
                raise Invalid(f"{p}: Input should be a valid dictionary")
            self.extra(m, ("role", "content"), p + ".")
            for k in ("role", "content"):
                if k not in m:
                    raise Invalid(f"{p}.{k}: Field required")
            role = m["role"]
            if role not in ("user", "assistant"):
                raise Invalid(f"{p}.role: Input should be 'user' or 'assistant'")
            if i == 0 and role != "user":
                raise Invalid("messages: first message must use the \"user\" role")
            last = i == len(msgs) - 1
            content = m["content"]
            uses, results = [], []
            if isinstance(content, str):
                if not content and not (last and role == "assistant"):
                    raise Invalid(f"{p}: all messages must have non-empty content except for "
                                  "the optional final assistant message")
                if last and role == "assistant" and content != content.rstrip():
                    raise Invalid("messages: final assistant content cannot end with trailing "
                                  "whitespace")
            elif isinstance(content, list):
                if not content and not (last and role == "assistant"):
                    raise Invalid(f"{p}: all messages must have non-empty content except for "
                                  "the optional final assistant message")
                for j, b in enumerate(content):
                    bp = f"{p}.content.{j}"
                    if not isinstance(b, dict):
                        raise Invalid(f"{bp}: Input should be a valid dictionary")
                    t = b.get("type")
                    if "type" not in b:
                        raise Invalid(f"{bp}.type: Field required")
                    if t == "text":
                        self.text_block(b, bp)
                        if last and role == "assistant" and j == len(content) - 1 and \
                                b["text"] != b["text"].rstrip():
                            raise Invalid("messages: final assistant content cannot end with "
                                          "trailing whitespace")
                    elif t == "tool_use" and role == "assistant":
                        self.extra(b, ("type", "id", "name", "input", "cache_control"), bp + ".")
                        for k in ("id", "name", "input"):
                            if k not in b:
                                raise Invalid(f"{bp}.{k}: Field required")
                        if not isinstance(b["id"], str) or not TOOL_USE_ID_RE.match(b["id"]):
                            raise Invalid(f"{bp}.id: String should match pattern "
                                          "'^[a-zA-Z0-9_-]+$'")
                        if not isinstance(b["name"], str) or not b["name"]:
                            raise Invalid(f"{bp}.name: Input should be a valid string")
                        if not isinstance(b["input"], dict):
                            raise Invalid(f"{bp}.input: Input should be a valid dictionary")
                        uses.append(b["id"])
                    elif t == "tool_result" and role == "user":
                        self.extra(b, ("type", "tool_use_id", "content", "is_error",
                                       "cache_control"), bp + ".")
                        if "tool_use_id" not in b:
                            raise Invalid(f"{bp}.tool_use_id: Field required")
                        if not isinstance(b["tool_use_id"], str):
                            raise Invalid(f"{bp}.tool_use_id: Input should be a valid string")
                        rc = b.get("content")
                        if rc is not None and not isinstance(rc, str):
                            if not isinstance(rc, list):
                                raise Invalid(f"{bp}.content: Input should be a valid string or "
                                              "a list of content blocks")
                            for k, rb in enumerate(rc):
                                if not isinstance(rb, dict) or rb.get("type") != "text":
                                    raise Invalid(f"{bp}.content.{k}.type: Input should be "
                                                  "'text'")
                                self.text_block(rb, f"{bp}.content.{k}")
                        if b.get("is_error") is not None and not isinstance(b["is_error"], bool):
                            raise Invalid(f"{bp}.is_error: Input should be a valid boolean")
                        results.append((j, b["tool_use_id"]))
                    else:
                        allowed = ("'text', 'tool_use'" if role == "assistant"
                                   else "'text', 'tool_result'")
                        raise Invalid(f"{bp}: Input tag '{t}' found using 'type' does not match "
                                      f"any of the expected tags in a {role} message: {allowed}")
            else:
                raise Invalid(f"{p}.content: Input should be a valid string or a list of "
                              "content blocks")
            if role == "user":
                if results and not prev_uses:
                    raise Invalid(f"{p}.content.{results[0][0]}: unexpected `tool_use_id` found "
                                  f"in `tool_result` blocks: {results[0][1]}. Each `tool_result` "
                                  "block must have a corresponding `tool_use` block in the "
                                  "previous message.")
                for j, rid in results:
                    if rid not in prev_uses:
                        raise Invalid(f"{p}.content.{j}: unexpected `tool_use_id` found in "
                                      f"`tool_result` blocks: {rid}. Each `tool_result` block "
                                      "must have a corresponding `tool_use` block in the "
                                      "previous message.")
            if prev_uses:
                answered = {rid for _, rid in results} if role == "user" else set()
                missing = [u for u in prev_uses if u not in answered]
                if missing:
                    raise Invalid(f"messages.{i - 1}: `tool_use` ids were found without "
                                  f"`tool_result` blocks immediately after: {', '.join(missing)}. "
                                  "Each `tool_use` block must have a corresponding `tool_result` "
                                  "block in the next message.")
            prev_uses = uses if role == "assistant" else None
        if prev_uses:
            raise Invalid(f"messages.{len(msgs) - 1}: `tool_use` ids were found without "
                          f"`tool_result` blocks immediately after: {', '.join(prev_uses)}. "
                          "Each `tool_use` block must have a corresponding `tool_result` block "
                          "in the next message.")

    def tools(self, tools):
        if not isinstance(tools, list):
            raise Invalid("tools: Input should be a valid list")
        names = []
        for i, t in enumerate(tools):
            p = f"tools.{i}"
            if not isinstance(t, dict):
                raise Invalid(f"{p}: Input should be a valid dictionary")
            self.extra(t, ("name", "description", "input_schema", "cache_control", "type"), p + ".")
            if t.get("type") not in (None, "custom"):
                raise Invalid(f"{p}.type: Input should be 'custom'")
            if "name" not in t:
                raise Invalid(f"{p}.name: Field required")
            if not isinstance(t["name"], str) or not NAME_RE.match(t["name"]):
                raise Invalid(f"{p}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if t.get("description") is not None and not isinstance(t["description"], str):
                raise Invalid(f"{p}.description: Input should be a valid string")
            if "input_schema" not in t:
                raise Invalid(f"{p}.input_schema: Field required")
            schema = t["input_schema"]
            if not isinstance(schema, dict):
                raise Invalid(f"{p}.input_schema: Input should be a valid dictionary")
            if schema.get("type") != "object":
                raise Invalid(f"{p}.input_schema.type: Input should be 'object'")
            if t["name"] in names:
                raise Invalid("tools: Tool names must be unique.")
            names.append(t["name"])
        return names

    def validate(self, body):
        if not isinstance(body, dict):
            raise Invalid("Input should be a valid dictionary")
        for k in body:
            if k not in ANTHROPIC_TOP:
                raise Invalid(f"{k}: Extra inputs are not permitted")
        for k in ("model", "max_tokens", "messages"):
            if k not in body:
                raise Invalid(f"{k}: Field required")
        model = body["model"]
        if not isinstance(model, str) or not model:
            raise Invalid("model: Input should be a valid string")
        mt = body["max_tokens"]
        if not is_int(mt):
            raise Invalid("max_tokens: Input should be a valid integer")
        if mt < 1:
            raise Invalid("max_tokens: Input should be greater than or equal to 1")
        self.messages(body["messages"])
        system = body.get("system")
        if system is not None:
            self.system(system)

        def number(key, lo, hi, integer=False):
            v = body.get(key)
            if v is None:
                return
            if not (is_int(v) if integer else is_num(v)):
                raise Invalid(f"{key}: Input should be a valid {'integer' if integer else 'number'}")
            if lo is not None and v < lo:
                raise Invalid(f"{key}: Input should be greater than or equal to {lo}")
            if hi is not None and v > hi:
                raise Invalid(f"{key}: Input should be less than or equal to {hi}")

        number("temperature", 0, 1)
        number("top_p", 0, 1)
        number("top_k", 0, None, True)
        ss = body.get("stop_sequences")
        if ss is not None and (not isinstance(ss, list) or not all(isinstance(s, str) for s in ss)):
            raise Invalid("stop_sequences: Input should be a valid list of strings")
        md = body.get("metadata")
        if md is not None:
            if not isinstance(md, dict):
                raise Invalid("metadata: Input should be a valid dictionary")
            self.extra(md, ("user_id",), "metadata.")
            if md.get("user_id") is not None and not isinstance(md["user_id"], str):
                raise Invalid("metadata.user_id: Input should be a valid string")
        stream = body.get("stream")
        if stream is not None:
            if not isinstance(stream, bool):
                raise Invalid("stream: Input should be a valid boolean")
            if stream:
                raise Invalid("emulator: streaming is not emulated; stream must be false")
        st = body.get("service_tier")
        if st is not None and st not in ("auto", "standard_only"):
            raise Invalid("service_tier: Input should be 'auto' or 'standard_only'")
        thinking = False
        th = body.get("thinking")
        if th is not None:
            if not isinstance(th, dict) or th.get("type") not in ("enabled", "disabled"):
                raise Invalid("thinking: Input tag found using 'type' does not match any of the "
                              "expected tags: 'enabled', 'disabled'")
            if th["type"] == "enabled":
                self.extra(th, ("type", "budget_tokens"), "thinking.enabled.")
                b = th.get("budget_tokens")
                if not is_int(b):
                    raise Invalid("thinking.enabled.budget_tokens: Field required")
                if b < 1024:
                    raise Invalid("thinking.enabled.budget_tokens: Input should be greater than "
                                  "or equal to 1024")
                if mt <= b:
                    raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
                thinking = True
                if body.get("temperature") is not None and body["temperature"] != 1:
                    raise Invalid("`temperature` may only be set to 1 when thinking is enabled.")
            else:
                self.extra(th, ("type",), "thinking.disabled.")
        names = []
        if body.get("tools") is not None:
            names = self.tools(body["tools"])
        forced = None
        tc = body.get("tool_choice")
        if tc is not None:
            if not isinstance(tc, dict):
                raise Invalid("tool_choice: Input should be a valid dictionary")
            t = tc.get("type")
            if t not in ("auto", "any", "none", "tool"):
                raise Invalid("tool_choice: Input tag found using 'type' does not match any of "
                              "the expected tags: 'auto', 'any', 'tool', 'none'")
            allowed = {"auto": ("type", "disable_parallel_tool_use"),
                       "any": ("type", "disable_parallel_tool_use"),
                       "none": ("type",),
                       "tool": ("type", "name", "disable_parallel_tool_use")}[t]
            self.extra(tc, allowed, f"tool_choice.{t}.")
            if tc.get("disable_parallel_tool_use") is not None and \
                    not isinstance(tc["disable_parallel_tool_use"], bool):
                raise Invalid(f"tool_choice.{t}.disable_parallel_tool_use: Input should be a "
                              "valid boolean")
            if t in ("any", "tool"):
                if not names:
                    raise Invalid("tool_choice may only be specified while providing tools.")
                if thinking:
                    raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")
            if t == "tool":
                if "name" not in tc:
                    raise Invalid("tool_choice.tool.name: Field required")
                if tc["name"] not in names:
                    raise Invalid(f"tool_choice.tool.name: Tool '{tc['name']}' not found in "
                                  "provided tools")
                forced = tc["name"]
            elif t == "any":
                forced = names[0]
        text = compact(body["messages"])
        if system is not None:
            text += compact(system)
        return {
            "model": model,
            "forced": forced,
            "limit": mt,
            "input_tokens": count_tokens(text),
        }

    def answer(self, ctx, reply):
        kind = reply["kind"]
        if kind == "json" and ctx["forced"]:
            value = reply["value"]
            n_out = count_tokens(compact(value))
            content = [{"type": "tool_use", "id": "toolu_" + hexid(24), "name": ctx["forced"],
                        "input": value}]
            stop = "tool_use"
        elif kind == "refusal":
            n_out = count_tokens(reply["text"])
            content = [{"type": "text", "text": reply["text"]}]
            stop = "refusal"
        else:
            text = compact(reply["value"]) if kind == "json" else reply["text"]
            text, cut = truncate(text, ctx["limit"])
            n_out = count_tokens(text)
            content = [{"type": "text", "text": text}]
            stop = "max_tokens" if cut else "end_turn"
        body = {
            "id": "msg_" + hexid(24),
            "type": "message",
            "role": "assistant",
            "model": ctx["model"],
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": ctx["input_tokens"], "output_tokens": n_out},
        }
        return 200, body, n_out


# --------------------------------------------------------------------------
# Gemini generateContent


GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
GEMINI_SCHEMA_KEYS = {
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
}
GEMINI_TYPES = {"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT",
                "NULL"}


def camel(key):
    head, *rest = key.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def snake(key):
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


class Gemini:
    api = "gemini"
    prefix = "/gemini"

    def error_body(self, status, message, param=None, kind=None):
        return {"error": {"code": status, "message": message,
                          "status": kind or GEMINI_STATUS.get(status, "UNKNOWN")}}

    def default_message(self, status):
        return {
            429: "Resource has been exhausted (e.g. check quota).",
            500: "An internal error has occurred. Please retry or report in "
                 "https://developers.generativeai.google/guide/troubleshooting",
            503: "The model is overloaded. Please try again later.",
        }.get(status, f"emulated error {status}")

    def headers(self):
        return []

    def route(self, method, path):
        m = GEMINI_PATH_RE.match(path)
        if not m or m.group(2) != "generateContent":
            raise Invalid(f"emulator: no such method: {path[len(self.prefix):]} (only "
                          "models/<model>:generateContent is emulated)", status=404)
        if method != "POST":
            raise Invalid(f"Method {method} is not allowed for {path[len(self.prefix):]}",
                          status=405)
        return None

    def auth(self, headers, query):
        key = headers.get("x-goog-api-key")
        if key is None and query.get("key"):
            key = query["key"][0]
        if key is None:
            raise Invalid("Method doesn't allow unregistered callers (callers without "
                          "established identity). Please use API Key or other form of API "
                          "consumer identity to call this API.", status=403)
        if key != GEMINI_KEY:
            raise Invalid("API key not valid. Please pass a valid API key.", status=400,
                          kind="API_KEY_INVALID")

    def not_json(self):
        return Invalid("Invalid JSON payload received. Expected a JSON object.")

    def model_of(self, body):
        return ""

    def path_model(self, path):
        m = GEMINI_PATH_RE.match(path)
        return unquote(m.group(1)) if m else None

    # -- validation

    @staticmethod
    def fields(d, allowed, at):
        """The object with snake_case names made lowerCamelCase (the API
        takes both); unknown names refused."""
        out = {}
        for k, v in d.items():
            c = camel(k)
            if c not in allowed:
                where = f" at '{at}'" if at else ""
                raise Invalid(f"Invalid JSON payload received. Unknown name \"{k}\"{where}: "
                              "Cannot find field.")
            out[c] = v
        return out

    @staticmethod
    def obj(v, at):
        if not isinstance(v, dict):
            raise Invalid(f"Invalid JSON payload received. Expected an object at '{at}'.")
        return v

    @staticmethod
    def arr(v, at):
        if not isinstance(v, list):
            raise Invalid(f"Invalid JSON payload received. Expected an array at '{at}'.")
        return v

    def schema(self, s, at):
        s = self.fields(self.obj(s, at), GEMINI_SCHEMA_KEYS, at)
        t = s.get("type")
        if t is not None and (not isinstance(t, str) or t.upper() not in GEMINI_TYPES):
            raise Invalid(f"Invalid value at '{at}.type' "
                          f"(type.googleapis.com/google.ai.generativelanguage.v1beta.Type), "
                          f"{json.dumps(t)}")
        for name, sub in self.obj(s.get("properties", {}), f"{at}.properties").items():
            self.schema(sub, f"{at}.properties[{name}].value")
        if "items" in s:
            self.schema(s["items"], f"{at}.items")
        for j, sub in enumerate(self.arr(s.get("anyOf", []), f"{at}.any_of")):
            self.schema(sub, f"{at}.any_of[{j}]")

    def part(self, part, at, role):
        part = self.fields(self.obj(part, at),
                           {"text", "functionCall", "functionResponse", "thought",
                            "thoughtSignature"}, at)
        data = [k for k in ("text", "functionCall", "functionResponse") if k in part]
        if not data:
            raise Invalid(f"* GenerateContentRequest.{at}.data: required oneof field 'data' "
                          "must have one initialized field")
        if len(data) > 1:
            raise Invalid(f"Invalid JSON payload received. Oneof field 'data' is already set. "
                          f"Cannot set '{data[1]}'")
        kind = data[0]
        if kind == "text" and not isinstance(part["text"], str):
            raise Invalid(f"Invalid value at '{at}.text' (TYPE_STRING), {json.dumps(part['text'])}")
        if kind == "functionCall":
            fc = self.fields(self.obj(part["functionCall"], f"{at}.function_call"),
                             {"name", "args", "id"}, f"{at}.function_call")
            if not isinstance(fc.get("name"), str) or not fc["name"]:
                raise Invalid(f"* GenerateContentRequest.{at}.function_call.name: name is not "
                              "specified")
            if "args" in fc:
                self.obj(fc["args"], f"{at}.function_call.args")
        if kind == "functionResponse":
            fr = self.fields(self.obj(part["functionResponse"], f"{at}.function_response"),
                             {"name", "response", "id"}, f"{at}.function_response")
            if not isinstance(fr.get("name"), str) or not fr["name"]:
                raise Invalid(f"* GenerateContentRequest.{at}.function_response.name: name is "
                              "not specified")
            if "response" not in fr:
                raise Invalid(f"* GenerateContentRequest.{at}.function_response.response: "
                              "response is not specified")
            self.obj(fr["response"], f"{at}.function_response.response")
        if "thought" in part and not isinstance(part["thought"], bool):
            raise Invalid(f"Invalid value at '{at}.thought' (TYPE_BOOL), "
                          f"{json.dumps(part['thought'])}")
        if "thoughtSignature" in part and not isinstance(part["thoughtSignature"], str):
            raise Invalid(f"Invalid value at '{at}.thought_signature' (TYPE_BYTES), "
                          f"{json.dumps(part['thoughtSignature'])}")
        return kind

    def contents(self, contents):
        self.arr(contents, "contents")
        if not contents:
            raise Invalid("* GenerateContentRequest.contents: contents is not specified")
        prev = None  # (role, number of functionCall parts)
        for i, c in enumerate(contents):
            at = f"contents[{i}]"
            c = self.fields(self.obj(c, at), {"role", "parts"}, at)
            role = c.get("role", "user")
            if role not in ("user", "model"):
                raise Invalid("Please use a valid role: user, model.")
            parts = self.arr(c.get("parts", []), f"{at}.parts")
            if not parts:
                raise Invalid(f"* GenerateContentRequest.{at}.parts: contents.parts must not be "
                              "empty.")
            kinds = [self.part(p, f"{at}.parts[{j}]", role) for j, p in enumerate(parts)]
            calls = kinds.count("functionCall")
            responses = kinds.count("functionResponse")
            if calls and role != "model":
                raise Invalid("Please ensure that function call turns are model turns "
                              "(role \"model\").")
            if responses and role != "user":
                raise Invalid("Please ensure that function response turns are user turns "
                              "(role \"user\").")
            if calls and (prev is None or prev[0] != "user"):
                raise Invalid("Please ensure that function call turn comes immediately after a "
                              "user turn or after a function response turn.")
            if responses:
                if prev is None or prev[1] == 0:
                    raise Invalid("Please ensure that function response turn comes immediately "
                                  "after a function call turn.")
                if responses != prev[1]:
                    raise Invalid("Please ensure that the number of function response parts is "
                                  "equal to the number of function call parts of the function "
                                  "call turn.")
            prev = (role, calls)

    def generation_config(self, g):
        at = "generation_config"
        g = self.fields(self.obj(g, at), {
            "responseMimeType", "responseSchema", "responseJsonSchema", "maxOutputTokens",
            "temperature", "topP", "topK", "candidateCount", "stopSequences", "thinkingConfig",
            "seed"}, at)
        mime = g.get("responseMimeType")
        if mime is not None and mime not in ("text/plain", "application/json"):
            raise Invalid(f"* GenerateContentRequest.generation_config.response_mime_type: "
                          f"allowed mimetypes are `text/plain` and `application/json`; got "
                          f"{json.dumps(mime)}.")
        if "responseSchema" in g and "responseJsonSchema" in g:
            raise Invalid("* GenerateContentRequest.generation_config: response_schema and "
                          "response_json_schema cannot both be set.")
        for key in ("responseSchema", "responseJsonSchema"):
            if key in g and mime != "application/json":
                raise Invalid(f"* GenerateContentRequest.generation_config.{snake(key)}: "
                              "response_mime_type must be application/json when a response "
                              "schema is set.")
        if "responseSchema" in g:
            self.schema(g["responseSchema"], f"{at}.response_schema")
        if "responseJsonSchema" in g and not isinstance(g["responseJsonSchema"], (dict, bool)):
            raise Invalid(f"Invalid value at '{at}.response_json_schema': expected a JSON schema.")
        limit = g.get("maxOutputTokens")
        if limit is not None and (not is_int(limit) or limit < 1):
            raise Invalid(f"* GenerateContentRequest.generation_config.max_output_tokens: "
                          f"max_output_tokens must be positive, got {json.dumps(limit)}.")
        t = g.get("temperature")
        if t is not None and (not is_num(t) or not 0 <= t <= 2):
            raise Invalid(f"* GenerateContentRequest.generation_config.temperature: temperature "
                          f"must be in the range [0.0, 2.0], got {json.dumps(t)}.")
        tp = g.get("topP")
        if tp is not None and (not is_num(tp) or not 0 <= tp <= 1):
            raise Invalid("* GenerateContentRequest.generation_config.top_p: top_p must be in "
                          "the range [0.0, 1.0].")
        tk = g.get("topK")
        if tk is not None and (not is_int(tk) or tk < 1):
            raise Invalid("* GenerateContentRequest.generation_config.top_k: top_k must be "
                          "positive.")
        cc = g.get("candidateCount")
        if cc is not None and cc != 1:
            raise Invalid("Only one candidate can be specified in the current model")
        ss = g.get("stopSequences")
        if ss is not None and (not isinstance(ss, list)
                               or not all(isinstance(s, str) for s in ss)):
            raise Invalid(f"Invalid value at '{at}.stop_sequences': expected strings.")
        if ss is not None and len(ss) > 5:
            raise Invalid("* GenerateContentRequest.generation_config.stop_sequences: at most 5 "
                          "stop sequences are allowed.")
        if "thinkingConfig" in g:
            tc = self.fields(self.obj(g["thinkingConfig"], f"{at}.thinking_config"),
                             {"thinkingBudget", "includeThoughts", "thinkingLevel"},
                             f"{at}.thinking_config")
            if "thinkingBudget" in tc and not is_int(tc["thinkingBudget"]):
                raise Invalid(f"Invalid value at '{at}.thinking_config.thinking_budget' "
                              f"(TYPE_INT32), {json.dumps(tc['thinkingBudget'])}")
        if "seed" in g and not is_int(g["seed"]):
            raise Invalid(f"Invalid value at '{at}.seed' (TYPE_INT32), {json.dumps(g['seed'])}")
        return limit

    def tools(self, tools):
        names = []
        for i, t in enumerate(self.arr(tools, "tools")):
            at = f"tools[{i}]"
            t = self.fields(self.obj(t, at), {"functionDeclarations"}, at)
            decls = self.arr(t.get("functionDeclarations", []), f"{at}.function_declarations")
            for j, d in enumerate(decls):
                dat = f"{at}.function_declarations[{j}]"
                d = self.fields(self.obj(d, dat), {
                    "name", "description", "parameters", "parametersJsonSchema", "response",
                    "responseJsonSchema", "behavior"}, dat)
                name = d.get("name")
                if not isinstance(name, str) or not GEMINI_NAME_RE.match(name):
                    raise Invalid(f"* GenerateContentRequest.{dat}.name: Invalid function name. "
                                  "Must start with a letter or an underscore. Must be a-z, A-Z, "
                                  "0-9, or contain underscores, dots, colons and dashes, with a "
                                  "maximum length of 64.")
                if d.get("description") is not None and not isinstance(d["description"], str):
                    raise Invalid(f"Invalid value at '{dat}.description' (TYPE_STRING)")
                if "parameters" in d and "parametersJsonSchema" in d:
                    raise Invalid(f"* GenerateContentRequest.{dat}: parameters and "
                                  "parameters_json_schema cannot both be set.")
                if "parameters" in d:
                    self.schema(d["parameters"], f"{dat}.parameters")
                if "response" in d:
                    self.schema(d["response"], f"{dat}.response")
                for key in ("parametersJsonSchema", "responseJsonSchema"):
                    if key in d and not isinstance(d[key], (dict, bool)):
                        raise Invalid(f"Invalid value at '{dat}.{snake(key)}': expected a JSON "
                                      "schema.")
                names.append(name)
        return names

    def tool_config(self, tc, names):
        at = "tool_config"
        tc = self.fields(self.obj(tc, at), {"functionCallingConfig"}, at)
        if "functionCallingConfig" not in tc:
            return None
        at = "tool_config.function_calling_config"
        fc = self.fields(self.obj(tc["functionCallingConfig"], at),
                         {"mode", "allowedFunctionNames"}, at)
        mode = fc.get("mode", "MODE_UNSPECIFIED")
        if mode not in ("MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"):
            raise Invalid(f"Invalid value at '{at}.mode' (type.googleapis.com/google.ai."
                          f"generativelanguage.v1beta.FunctionCallingConfig.Mode), "
                          f"{json.dumps(mode)}")
        allowed = fc.get("allowedFunctionNames")
        if allowed is not None:
            if not isinstance(allowed, list) or not all(isinstance(n, str) for n in allowed):
                raise Invalid(f"Invalid value at '{at}.allowed_function_names': expected strings.")
            if mode not in ("ANY", "VALIDATED"):
                raise Invalid("* GenerateContentRequest.tool_config.function_calling_config."
                              "allowed_function_names: allowed_function_names should only be set "
                              "when the Function calling mode is ANY or VALIDATED.")
            for n in allowed:
                if n not in names:
                    raise Invalid(f"* GenerateContentRequest.tool_config.function_calling_config."
                                  f"allowed_function_names: function {json.dumps(n)} is not "
                                  "declared in tools.")
        if mode in ("ANY", "VALIDATED") and not names:
            raise Invalid("* GenerateContentRequest.tool_config.function_calling_config.mode: "
                          "Function calling config is set without function_declarations.")
        if mode == "ANY":
            return allowed[0] if allowed else names[0]
        return None

    def validate(self, body, model):
        if not isinstance(body, dict):
            raise Invalid("Invalid JSON payload received. Expected an object.")
        b = self.fields(body, {"contents", "systemInstruction", "generationConfig", "tools",
                               "toolConfig", "safetySettings"}, "")
        if "contents" not in b:
            raise Invalid("* GenerateContentRequest.contents: contents is not specified")
        self.contents(b["contents"])
        system = b.get("systemInstruction")
        if system is not None:
            s = self.fields(self.obj(system, "system_instruction"), {"role", "parts"},
                            "system_instruction")
            parts = self.arr(s.get("parts", []), "system_instruction.parts")
            if not parts:
                raise Invalid("* GenerateContentRequest.system_instruction.parts: contents.parts "
                              "must not be empty.")
            for j, p in enumerate(parts):
                at = f"system_instruction.parts[{j}]"
                p = self.fields(self.obj(p, at), {"text"}, at)
                if not isinstance(p.get("text"), str):
                    raise Invalid(f"* GenerateContentRequest.{at}: a system instruction part "
                                  "needs text.")
        limit = None
        if b.get("generationConfig") is not None:
            limit = self.generation_config(b["generationConfig"])
        names = []
        if b.get("tools") is not None:
            names = self.tools(b["tools"])
        forced = None
        if b.get("toolConfig") is not None:
            forced = self.tool_config(b["toolConfig"], names)
        for i, s in enumerate(self.arr(b.get("safetySettings", []), "safety_settings")):
            at = f"safety_settings[{i}]"
            s = self.fields(self.obj(s, at), {"category", "threshold", "method"}, at)
            for k in ("category", "threshold"):
                if not isinstance(s.get(k), str):
                    raise Invalid(f"* GenerateContentRequest.{at}.{k}: {k} is not specified")
        text = compact(b["contents"])
        if system is not None:
            text += compact(system)
        return {
            "model": model,
            "forced": forced,
            "limit": limit,
            "input_tokens": count_tokens(text),
        }

    def answer(self, ctx, reply):
        kind = reply["kind"]
        n_in = ctx["input_tokens"]
        if kind == "refusal":
            body = {
                "promptFeedback": {"blockReason": "SAFETY"},
                "usageMetadata": {"promptTokenCount": n_in, "totalTokenCount": n_in},
                "modelVersion": ctx["model"],
                "responseId": hexid(22),
            }
            return 200, body, 0
        finish = "STOP"
        if kind == "json" and ctx["forced"]:
            value = reply["value"]
            n_out = count_tokens(compact(value))
            parts = [{"functionCall": {"name": ctx["forced"], "args": value}}]
        else:
            text = compact(reply["value"]) if kind == "json" else reply["text"]
            text, cut = truncate(text, ctx["limit"])
            n_out = count_tokens(text)
            parts = [{"text": text}]
            if cut:
                finish = "MAX_TOKENS"
        body = {
            "candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": finish, "index": 0}],
            "usageMetadata": {"promptTokenCount": n_in, "candidatesTokenCount": n_out,
                              "totalTokenCount": n_in + n_out},
            "modelVersion": ctx["model"],
            "responseId": hexid(22),
        }
        return 200, body, n_out


PROVIDERS = [OpenAI(), Anthropic(), Gemini()]


# --------------------------------------------------------------------------
# HTTP


class Disconnected(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llm-emulator/1"

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        sys.stderr.write("llm-emulator: %s\n" % (fmt % args))

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def do_PATCH(self):
        self.dispatch()

    def do_OPTIONS(self):
        self.dispatch()

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send_json(self, status, obj, headers=()):
        data = json.dumps(obj).encode()
        try:
            self.send_response(status, "Overloaded" if status == 529 else None)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def dispatch(self):
        url = urlsplit(self.path)
        body = self.read_body()
        if url.path.startswith("/_emu/"):
            return self.control(url.path, body)
        for p in PROVIDERS:
            if url.path == p.prefix or url.path.startswith(p.prefix + "/"):
                return self.provider(p, url, body)
        self.send_json(404, {"error": f"emulator: no such path {url.path}"})

    # -- control

    def control(self, path, raw):
        try:
            if path == "/_emu/received" and self.command == "GET":
                with STATE.lock:
                    out = [dict(r) for r in STATE.received]
                return self.send_json(200, out)
            if self.command != "POST" or path not in ("/_emu/script", "/_emu/default",
                                                       "/_emu/reset"):
                return self.send_json(404, {"error": f"emulator: no {self.command} {path}"})
            if path == "/_emu/reset":
                with STATE.lock:
                    STATE.scripts.clear()
                    STATE.defaults.clear()
                    STATE.received.clear()
                return self.send_json(200, {"ok": True})
            try:
                body = json.loads(raw)
            except ValueError:
                raise ControlError("the body is not JSON")
            if not isinstance(body, dict) or not isinstance(body.get("model"), str) or \
                    not body["model"]:
                raise ControlError("the body needs a non-empty string model")
            model = body["model"]
            if path == "/_emu/script":
                if set(body) != {"model", "replies"} or not isinstance(body["replies"], list):
                    raise ControlError("the body is {\"model\", \"replies\": [...]}")
                for i, r in enumerate(body["replies"]):
                    check_reply(r, f"replies[{i}]")
                with STATE.lock:
                    q = STATE.scripts.setdefault(model, deque())
                    q.extend(body["replies"])
                    queued = len(q)
                return self.send_json(200, {"ok": True, "queued": queued})
            if set(body) != {"model", "reply"}:
                raise ControlError("the body is {\"model\", \"reply\": {...}}")
            check_reply(body["reply"], "reply")
            with STATE.lock:
                STATE.defaults[model] = body["reply"]
            return self.send_json(200, {"ok": True})
        except ControlError as e:
            return self.send_json(400, {"error": str(e)})

    # -- providers

    def provider(self, p, url, raw):
        headers = {k.lower(): v for k, v in self.headers.items()}
        query = parse_qs(url.query)
        try:
            body = json.loads(raw) if raw else None
            parsed = raw != b""
        except ValueError:
            body, parsed = None, False
        record = {
            "api": p.api,
            "model": p.model_of(body),
            "path": url.path,
            "query": {k: v[-1] for k, v in query.items()},
            "headers": headers,
            "body": body,
            "status": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "error": None,
        }
        with STATE.lock:
            STATE.received.append(record)

        def finish(status, obj, extra=(), error=None, n_in=0, n_out=0):
            with STATE.lock:
                record.update(status=status, error=error, input_tokens=n_in, output_tokens=n_out)
            self.send_json(status, obj, list(p.headers()) + list(extra))

        path_model = p.path_model(url.path) if p.api == "gemini" else None
        if path_model is not None:
            with STATE.lock:
                record["model"] = path_model
        try:
            p.route(self.command, url.path)
            p.auth(headers, query)
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json" or not parsed:
                raise p.not_json()
            ctx = p.validate(body, path_model) if p.api == "gemini" else p.validate(body)
        except Invalid as e:
            obj = p.error_body(e.status, e.message, e.param)
            if p.api == "gemini" and e.kind == "API_KEY_INVALID":
                obj["error"]["details"] = [{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }]
            return finish(e.status, obj, error=e.message)

        model = ctx["model"]
        reply = STATE.take(model)
        if reply is None:
            message = f"emulator: nothing scripted for model {model}"
            return finish(500, p.error_body(500, message), error=message)
        try:
            while reply["kind"] == "delay":
                self.wait(reply["ms"] / 1000.0)
                reply = reply["then"]
        except Disconnected:
            with STATE.lock:
                record.update(status=499, error="emulator: the client went away during a delay")
            self.close_connection = True
            return None
        if reply["kind"] == "error":
            status = reply["status"]
            message = reply.get("message") or p.default_message(status)
            obj = p.error_body(status, message)
            extra = []
            ra = reply.get("retry_after")
            if ra is not None:
                extra.append(("Retry-After", fmt_secs(ra)))
                if p.api == "gemini":
                    obj["error"]["details"] = [{
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{fmt_secs(ra)}s",
                    }]
            return finish(status, obj, extra)
        status, obj, n_out = p.answer(ctx, reply)
        return finish(status, obj, n_in=ctx["input_tokens"], n_out=n_out)

    def wait(self, seconds):
        """Sleeps, raising Disconnected as soon as the client closes."""
        deadline = time.monotonic() + seconds
        sock = self.connection
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([sock], [], [], min(left, 0.05))
            if readable:
                try:
                    peek = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError:
                    raise Disconnected()
                if peek == b"":
                    raise Disconnected()
                # The client sent more (a pipelined request): keep waiting.
                time.sleep(min(left, 0.05))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    server = Server(("127.0.0.1", 0), Handler)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
