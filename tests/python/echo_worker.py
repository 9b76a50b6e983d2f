#!/usr/bin/env python3
"""A complete jetmesh foreign worker in Python (nats-py), following the
foreign-worker contract of protocol v1 and nothing else:

1. put cap.<capability> into the mesh_registry bucket;
2. pull from the durable consumer pool_<pool> on stream MESH_QUEUES
   (filter mesh.queue.<pool>.>), creating it with the documented config if absent;
3. for each task, write the result object to mesh_results key
   task.<plan_id>.<task_id>, then ack (a permanent failure is a result too).

Capability "echo", actions "say" (returns its text/args), "fail" (always an
error result) and "flaky" (naks, leaving the task unrecorded, while the file
named by ECHO_BROKEN_FILE exists: a retryable failure that tests fix by
removing the file). ECHO_MAX_DELIVER sets the consumer's max deliveries when
this worker creates it (default 5). Usage: NATS_URL=nats://127.0.0.1:4222 python3 echo_worker.py
Prints "ready" once registered; SIGTERM stops it after the current batch.
"""

import asyncio
import json
import os
import signal
import sys
import time

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

CAPABILITY = os.environ.get("ECHO_CAPABILITY", "echo")
POOL = os.environ.get("ECHO_POOL", CAPABILITY)
WORKER = f"{POOL}-py{os.getpid()}"


def execute(task):
    action = task.get("action")
    if action == "say":
        text = task.get("text", task.get("args"))
        return {"status": "success", "output": {"echo": text}}
    if action == "flaky":
        return {"status": "success", "output": "fixed"}
    if action == "fail":
        return {"status": "error", "error": {"code": "echo_failed", "message": "asked to fail"}}
    return {"status": "error", "error": {"code": "unknown_action", "message": f"echo has no action {action!r}"}}


async def main():
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"), name=WORKER)
    js = nc.jetstream()
    registry = await js.key_value("mesh_registry")
    results = await js.key_value("mesh_results")

    consumer = f"pool_{POOL}"
    try:
        await js.consumer_info("MESH_QUEUES", consumer)
    except NotFoundError:
        await js.add_consumer(
            "MESH_QUEUES",
            ConsumerConfig(
                durable_name=consumer,
                filter_subject=f"mesh.queue.{POOL}.>",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                max_deliver=int(os.environ.get("ECHO_MAX_DELIVER", "5")),
                max_ack_pending=10000,
            ),
        )
    sub = await js.pull_subscribe_bind(consumer, stream="MESH_QUEUES")

    entry = {"capability": CAPABILITY, "actions": ["say", "fail", "flaky"], "pool": POOL, "encoding": "json"}
    await registry.put(f"cap.{CAPABILITY}", json.dumps(entry).encode())
    print("ready", flush=True)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(16, timeout=0.5)
        except (NatsTimeout, asyncio.TimeoutError):
            continue
        for msg in msgs:
            try:
                await handle(msg, results)
            except Exception as e:  # noqa: BLE001 - a slow server must not kill the worker
                # Not acked: JetStream redelivers the task after ack_wait.
                print(f"task not recorded, will be redelivered: {e!r}", file=sys.stderr, flush=True)
    await nc.close()


async def handle(msg, results):
    """Runs one task and records its result; raises if it could not be recorded."""
    started = time.monotonic()
    try:
        task = json.loads(msg.data)
        plan_id, task_id = task["plan_id"], task["id"]
    except (ValueError, KeyError):
        await msg.term()  # cannot even say which task it was
        return
    broken = os.environ.get("ECHO_BROKEN_FILE", "")
    if task.get("action") == "flaky" and broken and os.path.exists(broken):
        await msg.nak(delay=0.1)  # retryable: JetStream delivers it again
        return
    result = execute(task)
    result.update(
        duration_ms=int((time.monotonic() - started) * 1000),
        worker=WORKER,
        attempt=msg.metadata.num_delivered,
        plan_id=plan_id,
        task_id=task_id,
    )
    try:
        # create, not put: the first terminal result of a task wins.
        await results.create(f"task.{plan_id}.{task_id}", json.dumps(result).encode())
    except KeyWrongLastSequenceError:
        pass  # already recorded by an earlier delivery
    await msg.ack()


if __name__ == "__main__":
    asyncio.run(main())
