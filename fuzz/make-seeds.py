#!/usr/bin/env python3
"""Writes the seed corpora: fuzz/corpus/<target>/seed-*. Run from anywhere;
the files are small and committed, and libFuzzer's own finds (named by their
hash) stay out of git (fuzz/.gitignore)."""
import json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")


def mp(v):
    """A minimal MessagePack encoder (maps, arrays, str, int, float, bool, nil)."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        if 0 <= v < 2**32:
            return b"\xce" + struct.pack(">I", v)
        if v >= 0:
            return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        if len(b) < 256:
            return b"\xd9" + bytes([len(b)]) + b
        return b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, list):
        head = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdc" + struct.pack(">H", len(v))
        return head + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        head = bytes([0x80 | len(v)]) if len(v) < 16 else b"\xde" + struct.pack(">H", len(v))
        return head + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


def example(name):
    with open(os.path.join(EXAMPLES, name), "rb") as f:
        return f.read()


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def js(v):
    return json.dumps(v, ensure_ascii=False).encode()


# submit: a selector byte (0 JSON, 1 MessagePack), then the body.
plan = json.loads(example("plan.json"))
bodies = {
    "plan": plan,
    "failing-plan": json.loads(example("failing-plan.json")),
    "execution-plan": json.loads(example("execution-plan.json")),
    "submit-wait": {"plan_id": "p1", "subtasks": [{"type": "math", "action": "sum", "args": [1, 2.5]}],
                    "wait": True, "wait_timeout_ms": 5000, "deadline_ms": 60000},
    "single": {"id": "t1", "plan_id": "p", "priority": "high", "timeout_ms": 100, "retries": 2, "args": [1, 2, 3]},
    "task-message": {"plan_id": "p", "id": "t1", "type": "math", "action": "sum", "args": [1, 2],
                     "attempt": 2, "deadline": "2026-11-21T12:00:00Z", "depends_on": [], "priority": "low"},
    "cycle": {"subtasks": [{"id": "a", "type": "m", "action": "x", "depends_on": ["b"]},
                           {"id": "b", "type": "m", "action": "x", "depends_on": ["a"]}]},
    "duplicate": {"subtasks": [{"id": "a", "type": "m", "action": "x"}, {"id": "a", "type": "m", "action": "x"}]},
    "unknown-dep": {"subtasks": [{"type": "m", "action": "x", "depends_on": ["t9"]}]},
    "bad-id": {"plan_id": "a.b", "subtasks": [{"type": "m*", "action": "x", "timeout_ms": 0}]},
    "goal-only": {"goal": "do things"},
}
for name, v in bodies.items():
    write("submit", "json-" + name, b"\x00" + js(v))
    write("submit", "msgpack-" + name, b"\x01" + mp(v))
write("submit", "json-malformed", b"\x00{\"subtasks\":[{\"type\":")
write("submit", "msgpack-malformed", b"\x01\xc1")
write("submit", "unsupported", b"\x06{}")

# results: a stored result as it is, or a result bundle part.
for name, v in {
    "success": {"status": "success", "output": 6},
    "error": {"status": "error", "error": {"code": "division_by_zero", "message": "x"}},
    "full": {"status": "success", "output": {"a": [1, 2.5, None]}, "duration_ms": 12, "worker": "w-1",
             "attempt": 2, "plan_id": "p", "task_id": "t1", "finished_at": "2026-01-02T03:04:05.5+01:00"},
    "error-no-code": {"status": "error"},
    "bad-code": {"status": "error", "error": {"code": "Not A Code", "message": "x"}},
    "pending": {"status": "pending", "worker": "w"},
    "weird": {"status": "weird"},
}.items():
    write("results", name, js(v))
write("results", "huge-number", b'{"status":"success","output":1e999}')
write("results", "not-json", b"not json")


def frame(task, value):
    return struct.pack("<H", len(task)) + task + struct.pack("<I", len(value)) + value


write("results", "bundle", b"\x01" + frame(b"t1", js({"status": "success", "output": 6}))
      + frame(b"t2", js({"status": "error", "error": {"code": "timeout"}})))
write("results", "bundle-cut", b"\x01\x05\x00ab")

# registry: the key, a newline, the value.
entry = {"capability": "math", "actions": ["sum", "multiply"], "pool": "math", "encoding": "msgpack",
         "description": "arithmetic", "registered_at": "2026-01-01T00:00:00Z"}
write("registry", "v1-key", b"cap.math\n" + js(entry))
write("registry", "pool-key", b"cap.math.math\n" + js(entry))
write("registry", "wrong-pool", b"cap.math.other\n" + js(entry))
write("registry", "bad-action", b"cap.math\n" + js({"capability": "math", "actions": ["a.b"], "pool": "math"}))
write("registry", "no-actions", b"cap.x\n" + js({"capability": "x", "actions": [], "pool": "p"}))
write("registry", "not-a-key", b"caps.math\n" + js(entry))

# epic: execution plans as text.
for name in ["execution-plan.md", "execution-plan.yaml", "execution-plan.json", "plan.json"]:
    write("epic", name, example(name))
md = example("execution-plan.md").decode()
write("epic", "md-cycle.md", md.replace("- Track 2 starts after bd-11", "- Track 2 starts after bd-11\n- bd-10 depends on bd-21"))
write("epic", "md-overlap.md", md.replace("`docs/**`", "`docs/**`, `sdk/{a,b}/[a-c]*.rs`"))
write("epic", "md-deps.md", md.replace("- Track 2 starts after bd-11 (Track 1)",
                                       "- bd-30 waits for bd-21\n- bd-11 -> bd-20\n- bd-10 blocks bd-30\n- none"))
write("epic", "md-bad-glob.md", md.replace("`docs/**`", "`../docs/**`"))
write("epic", "md-no-epic.md", md.replace("Epic: E1", ""))

# mail: JSON bodies.
for name, v in {
    "mail": {"v": 1, "id": "m1", "epic": "E1", "thread": "track.2", "from": "BlueLake", "to": ["GreenCastle"],
             "kind": "blocker", "subject": "stuck", "body": "**help**", "importance": "urgent",
             "ack_required": True, "reply_to": 3, "at": "2026-01-01T00:00:00Z", "seq": 7,
             "data": {"kind": "scope_violation", "bead": "bd-10", "track": "1", "agent": "BlueLake",
                      "worker": "w1", "files": ["x.rs"], "holders": [], "attempt": 1, "detail": "d"}},
    "mail-decision": {"from": "operator", "thread": "epic", "kind": "decision",
                      "data": {"action": "retry", "note": "n", "grant": ["sdk/**", "docs/{a,b}.md"]}},
    "draft": {"thread": "E1.inbox.BlueLake", "from": "operator", "subject": "hi", "body": "b",
              "to": ["BlueLake"], "kind": "note", "importance": "high", "ack_required": True},
    "draft-epic": {"epic": "E1", "thread": "track.1", "from": "chief", "subject": "s", "reply_to": 4},
    "reply": {"reply_to": 12, "from": "GreenCastle", "kind": "ack", "subject": "Re: x", "body": "ok"},
    "ack": {"seq": 3, "agent": "BlueLake"},
    "decision": {"action": "skip", "grant": ["src/", "./a/b/c.txt", "[!a-c]?/*.rs", "lib/**/x"]},
    "reserve": {"epic": "E1", "agent": "BlueLake", "track": "1", "patterns": ["sdk/**", "sdk/a/*.rs", "sdk/b.txt"],
                "exclusive": False, "id": "r1"},
    "release": {"epic": "E1", "id": "r1"},
}.items():
    write("mail", name, js(v))
write("mail", "thread", js("E1.track.2"))

# reply: a selector byte (0 JSON, 1 MessagePack), then the body.
for name, v in {
    "submit-reply": {"plan_id": "p", "status": "accepted", "total_tasks": 3},
    "error": {"status": "error", "error": {"code": "overloaded", "message": "busy", "retry_after_ms": 250},
              "plan_id": "p"},
    "error-own-code": {"status": "error", "error": {"code": "navigation_failed", "message": "m"}},
    "error-bad-code": {"status": "error", "error": {"code": "Bad Code", "message": "m"}},
    "planner": {"plan": {"plan_id": "p", "subtasks": [{"type": "m", "action": "a"}]}},
    "plan-view": {"plan_id": "p", "status": "running", "total_tasks": 1, "completed": 0, "failed": 0,
                  "pending": 1, "tasks": {"t1": {"status": "pending"}}},
    "code": "dependency_cycle",
    "error-value": {"code": "timeout", "message": "slow"},
}.items():
    write("reply", "json-" + name, b"\x00" + js(v))
    write("reply", "msgpack-" + name, b"\x01" + mp(v))

# Seeds at the edge of the depth limit (codec::MAX_DEPTH = 64): a task
# parameter nested 62 deep, in both encodings.
deep = 62
write("submit", "json-deep", b"\x00" + b'{"args":' + b"[" * (deep - 1) + b"1" + b"]" * (deep - 1) + b"}")
write("submit", "msgpack-deep", b"\x01\x81\xa4args" + b"\x91" * (deep - 1) + b"\x01")
write("reply", "json-deep", b"\x00" + b'{"plan_id":"p","status":"accepted","x":' + b"[" * (deep - 1) + b"0" + b"]" * (deep - 1) + b"}")


# Dictionaries for libFuzzer (-dict): field names, whole members that can be
# inserted before any other member of an object, values, and markdown.
def q(s):
    if isinstance(s, str):
        s = s.encode()
    out = ""
    for b in s:
        if b == 0x22:
            out += '\\"'
        elif b == 0x5C:
            out += "\\\\"
        elif 0x20 <= b < 0x7F:
            out += chr(b)
        else:
            out += "\\x%02X" % b
    return '"' + out + '"'


MEMBERS = {
    "plan_id": "p1", "goal": "g", "subtasks": [], "deadline_ms": 1000, "epic": {}, "wait": True,
    "wait_timeout_ms": 10, "id": "t1", "type": "math", "action": "sum", "depends_on": ["t1"],
    "priority": "high", "timeout_ms": 5, "retries": 3, "args": [1, 2], "attempt": 2,
    "deadline": "2026-11-21T12:00:00Z", "status": "error", "output": 1, "error": {"code": "timeout"},
    "code": "invalid_id", "message": "m", "retry_after_ms": 100, "duration_ms": 1, "worker": "w",
    "task_id": "t1", "finished_at": "2026-01-01T00:00:00Z", "capability": "math", "actions": ["sum"],
    "pool": "math", "encoding": "msgpack", "description": "d", "registered_at": "2026-01-01T00:00:00Z",
    "total_tasks": 1, "v": 1, "thread": "track.1", "from": "BlueLake", "to": ["operator"],
    "kind": "decision", "subject": "s", "body": "b", "importance": "urgent", "ack_required": True,
    "reply_to": 1, "data": {"action": "retry"}, "at": "2026-01-01T00:00:00Z", "seq": 1,
    "agent": "BlueLake", "track": "1", "patterns": ["src/**"], "exclusive": False, "grant": ["a/*"],
    "note": "n", "bead": "bd-1", "files": ["a.rs"], "holders": [], "detail": "d", "tracks": [],
    "scope": ["sdk/**"], "beads": [{"id": "bd-1"}], "dependencies": [], "after": "bd-1", "title": "t",
    "workdir": ".", "command": "c", "plan": {}, "tasks": {}, "completed": 0, "failed": 0, "pending": 0,
    "report": None, "markdown": "#", "truncated": True, "created_at": "2026-01-01T00:00:00Z",
}
VALUES = ["success", "error", "pending", "high", "normal", "low", "json", "msgpack", "accepted", "running",
          "completed", "reported", "bad_request", "overloaded", "internal", "division_by_zero", "cap.",
          "cap.math", "cap.math.math", "epic", "track.", "inbox.", "E1.track.1", "E1.inbox.a", "operator",
          "chief", "retry", "reassign", "skip", "abort", "blocker", "decision", "ack", "scope_violation",
          "**", "*", "?", "[!a-z]", "{a,b}", "/", "./", "..", "src/**", "", "must match [A-Za-z0-9_-]{1,64}"]
GLOBS = ["**", "*", "?", "[a-z]", "[!a]", "[]-]", "{a,b}", "{,x}", "/", "./", "../", "/abs", "a\\b", "sdk/**",
         "src/", "*.rs", "**/x"]
MARKDOWN = ["# Execution Plan: ", "Epic: ", "## Tracks", "| Track | Agent | Beads (in order) | File Scope |",
            "|---|---|---|---|", "|", "\\|", "### Track ", "## Track Details", "## Cross-Track Dependencies",
            "- ", "* ", "1. ", "- [ ] ", " starts after ", " depends on ", " waits for ", " blocks ",
            " before ", " needs ", " unblocks ", "->", "\u2192", "`", "```", "**", "**File scope**: ", "bd-10",
            "Track 2", "BlueLake", " - ", " \u2014 ", "\n  ", "none", "Workdir: ", "Command: ", "(Track 1)",
            "epic:", "tracks:", "  - id: ", "beads:", "scope:", "dependencies:", "after:", "files:",
            "agent:", "&a ", "*a", "!!str ", "---", "<<: ", "? ", "\t", "\r\n"]


def write_dict(name, lines, head):
    os.makedirs(os.path.join(HERE, "dict"), exist_ok=True)
    with open(os.path.join(HERE, "dict", name), "w") as f:
        f.write("# " + head + " (written by make-seeds.py)\n")
        seen = set()
        for t in lines:
            if t not in seen:
                seen.add(t)
                f.write(q(t) + "\n")


json_lines = ["{", "}", "[", "]", ":", ",", '"', "null", "true", "false", "-1", "0", "1e999", "1.5",
              "18446744073709551615", "-9223372036854775808", "\\u0000", "\\ud800", '""']
json_lines += ['"%s":' % k for k in MEMBERS]
json_lines += [json.dumps({k: v}, ensure_ascii=False)[1:-1] + "," for k, v in MEMBERS.items()]
json_lines += [json.dumps(v, ensure_ascii=False) for v in VALUES + GLOBS]
# MessagePack: markers, and field names as fixstr.
json_lines += [bytes([m]) for m in [0x80, 0x81, 0x90, 0x91, 0xC0, 0xC2, 0xC3, 0xCA, 0xCB, 0xCC, 0xCF, 0xD3,
                                    0xC4, 0xD9, 0xDC, 0xDE, 0xD4, 0xC7]]
json_lines += [mp(k) for k in MEMBERS]
json_lines += [mp(k) + mp(v) for k, v in MEMBERS.items() if not isinstance(v, (dict, list))]
write_dict("json.dict", json_lines, "Tokens of the wire types in JSON and MessagePack, for libFuzzer -dict")
write_dict("epic.dict", MARKDOWN + GLOBS + ['"%s":' % k for k in MEMBERS]
           + [json.dumps({k: v}, ensure_ascii=False)[1:-1] + "," for k, v in MEMBERS.items()],
           "Tokens of execution plans (markdown, YAML, JSON, globs), for libFuzzer -dict")
