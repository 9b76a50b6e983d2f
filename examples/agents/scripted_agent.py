#!/usr/bin/env python3
"""A scripted agent for jetmesh epics: it follows its bead's description as a
tiny script, one command per line, so that epics can be run (and tested)
without a coding model. Configure it as an allowlisted command:

    [agent.commands]
    scripted = ["python3", "examples/agents/scripted_agent.py"]

Commands (other lines are ignored):
    write PATH TEXT...        append TEXT as a line to PATH (directories made)
    stray PATH TEXT...        like write, but only until a decision gave
                              guidance (it "obeys" the chief on the retry)
    sleep SECONDS
    learn TEXT...             post TEXT as a learning to the track thread
    expect-learning TEXT...   fail unless a learning so far contains TEXT
    fail TEXT...              exit 1 with TEXT on stderr
    block TEXT...             say it is stuck (a blocker the chief escalates)

The bead arrives as JSON on stdin (the same as $JETMESH_CONTEXT); what it
reports goes to $JETMESH_OUTPUT as {"summary", "learnings", "blocked"}.
"""
import json
import os
import sys
import time


def main() -> int:
    ctx = json.load(sys.stdin)
    bead = ctx["bead"]
    note = ctx.get("note")
    learned_so_far = [l["body"] for l in ctx.get("learnings", [])]
    out = {"summary": "", "learnings": []}
    done = []
    for raw in (bead.get("description") or "").splitlines():
        words = raw.strip().split(" ", 2)
        cmd = words[0] if words else ""
        if cmd in ("write", "stray") and len(words) >= 2:
            if cmd == "stray" and note:
                continue
            path = words[1]
            text = words[2] if len(words) > 2 else bead["id"]
            d = os.path.dirname(path)
            if d:
                os.makedirs(d, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(text + "\n")
            done.append(path)
        elif cmd == "sleep" and len(words) >= 2:
            time.sleep(float(words[1]))
        elif cmd == "learn":
            out["learnings"].append(raw.strip()[len("learn "):])
        elif cmd == "expect-learning":
            want = raw.strip()[len("expect-learning "):]
            if not any(want in l for l in learned_so_far):
                print(f"missing learning {want!r}; had {learned_so_far!r}", file=sys.stderr)
                return 1
        elif cmd == "fail":
            print(raw.strip()[len("fail "):], file=sys.stderr)
            return 1
        elif cmd == "block":
            out["blocked"] = raw.strip()[len("block "):]
    out["summary"] = f"{bead['id']}: wrote {', '.join(done) or 'nothing'}" + (
        f" (attempt {ctx['attempt']}, guided)" if note else ""
    )
    with open(os.environ["JETMESH_OUTPUT"], "w", encoding="utf-8") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
