//! Task and plan bodies as clients send them (`mesh.plans.submit`,
//! `mesh.run.*`, `mesh.tasks.*`) and as they sit on pool queues, in JSON and
//! in MessagePack.
//!
//! Input: one selector byte, then the body. The selector picks the
//! `Content-Type` header (even: JSON-like, odd: MessagePack-like; one value
//! is an unsupported type). The body is decoded as every client-facing type;
//! each value that decodes must survive a round trip through both encodings.
//! A decoded plan goes through `plan::normalize`, whose promises are checked
//! independently (ids, dependencies, no cycles, idempotence); then it must
//! reach the planner as the chief sends it, and each of its tasks must reach
//! a worker as the router sends it. A single task must reach a worker too,
//! and `dlq::task_ids` must find the ids of any task message that decodes.

#![no_main]

use async_nats::HeaderMap;
use jetmesh_fuzz::{
    NORMALIZE_CODES, check_decode_error, check_dispatch, check_normalized, round_trip,
    same,
};
use jetmesh_shared::codec::{self, Encoding};
use jetmesh_shared::error::ErrorCode;
use jetmesh_shared::wire::{Plan, PlannerRequest, SingleTask, SubmitRequest, Subtask, TaskMessage};
use jetmesh_shared::{dlq, ids, plan};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;

/// `Content-Type` values by selector, with the encoding each must select.
const CONTENT_TYPES: [(Option<&str>, Option<Encoding>); 8] = [
    (None, Some(Encoding::Json)),
    (Some("application/msgpack"), Some(Encoding::Msgpack)),
    (
        Some("application/json; charset=utf-8"),
        Some(Encoding::Json),
    ),
    (Some("application/vnd.msgpack"), Some(Encoding::Msgpack)),
    (Some("text/plain"), Some(Encoding::Json)),
    (Some(" Application/X-MsgPack "), Some(Encoding::Msgpack)),
    (Some("application/xml"), None),
    (Some("application/msgpack; q=1"), Some(Encoding::Msgpack)),
];

/// Far above what a fuzz input holds (the mesh's is `mesh.max_subtasks`).
const MAX_SUBTASKS: usize = 10_000;

fn decode<T>(headers: Option<&HeaderMap>, body: &[u8], enc: Encoding, what: &str) -> Option<T>
where
    T: Serialize + DeserializeOwned + Debug,
{
    match codec::decode_message::<T>(headers, body, usize::MAX) {
        Ok((v, e)) => {
            assert_eq!(e, enc);
            round_trip(&v, Encoding::Json, what);
            round_trip(&v, Encoding::Msgpack, what);
            Some(v)
        }
        Err(e) => {
            check_decode_error(&e, what);
            None
        }
    }
}

fn check_plan(mut p: Plan) {
    match plan::normalize(&mut p, MAX_SUBTASKS) {
        Ok(()) => {
            check_normalized(&p, MAX_SUBTASKS);
            ask_planner(p);
        }
        Err(e) => assert!(NORMALIZE_CODES.contains(&e.code), "normalize: {e}"),
    }
}

/// The chief hands an accepted, normalized plan to the planner inside a
/// `PlannerRequest`, in MessagePack (`ask_planner` in agents/chief): the
/// planner must read the plan the chief accepted.
fn ask_planner(plan: Plan) {
    // Both forms of the request: to run, and a dry run.
    let dry_run = plan.subtasks.len() % 2 == 1;
    let request = PlannerRequest { plan, dry_run };
    for enc in [Encoding::Msgpack, Encoding::Json] {
        let bytes = enc.encode(&request).expect("a planner request encodes");
        match enc.decode::<PlannerRequest>(&bytes) {
            Ok(back) => assert!(same(&back, &request), "the planner reads another plan"),
            Err(e) => panic!(
                "the planner cannot read a plan the chief accepted ({enc:?}): {e}\n{:#?}",
                request.plan
            ),
        }
    }
}

/// What the router makes of a single task (`mesh.run.math.sum`,
/// `mesh.tasks.math.sum`): the same steps as `Router::parse_single` in
/// agents/router/src/lib.rs, which is not a library function. The task it
/// builds must reach the worker as it was built.
fn single_task(body: SingleTask) {
    let id = body
        .id
        .clone()
        .unwrap_or_else(|| body.plan_id.clone().unwrap_or_else(|| "fallback".into()));
    let plan_id = body.plan_id.clone().unwrap_or_else(|| id.clone());
    if !ids::is_valid(&plan_id) || !ids::is_valid(&id) || body.timeout_ms == Some(0) {
        return;
    }
    // The router refuses parameters named like the task message's own fields.
    if let Err(e) = jetmesh_shared::wire::check_params(&body.params) {
        assert_eq!(e.code, ErrorCode::BadRequest);
        return;
    }
    let task = Subtask {
        id,
        capability: "math".into(),
        action: "sum".into(),
        depends_on: Vec::new(),
        priority: body.priority,
        timeout_ms: body.timeout_ms,
        retries: body.retries,
        session: body.session,
        params: body.params,
    };
    check_dispatch(&plan_id, &task);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (content_type, expected) = CONTENT_TYPES[selector as usize % CONTENT_TYPES.len()];
    let headers = content_type.map(|ct| {
        let mut h = HeaderMap::new();
        h.insert(codec::CONTENT_TYPE, ct);
        h
    });
    let headers = headers.as_ref();
    let enc = match (Encoding::from_headers(headers), expected) {
        (Ok(enc), Some(expected)) => {
            assert_eq!(enc, expected, "{content_type:?}");
            enc
        }
        (Err(e), None) => {
            assert_eq!(e.code, ErrorCode::UnsupportedEncoding);
            let r = codec::decode_message::<SubmitRequest>(headers, body, usize::MAX);
            assert_eq!(r.unwrap_err().code, ErrorCode::UnsupportedEncoding);
            return;
        }
        (r, _) => panic!("{content_type:?} selects {r:?}"),
    };
    if !body.is_empty() {
        let too_big = codec::decode_message::<SubmitRequest>(headers, body, body.len() - 1);
        assert_eq!(too_big.unwrap_err().code, ErrorCode::PayloadTooLarge);
    }

    if let Some(req) = decode::<SubmitRequest>(headers, body, enc, "SubmitRequest") {
        check_plan(req.plan);
    }
    if let Some(p) = decode::<Plan>(headers, body, enc, "Plan") {
        check_plan(p);
    }
    if let Some(single) = decode::<SingleTask>(headers, body, enc, "SingleTask")
        && enc.is_map(body)
    {
        single_task(single);
    }
    decode::<Subtask>(headers, body, enc, "Subtask");
    let message = decode::<TaskMessage>(headers, body, enc, "TaskMessage");

    // What a worker does with a queue message it cannot decode.
    let ids = dlq::task_ids(headers, body);
    if let Some(m) = message {
        assert_eq!(ids, Some((m.plan_id, m.task.id)));
    }
});
