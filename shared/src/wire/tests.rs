//! Unit tests that pin the wire shapes.

use super::*;
use crate::codec::Encoding;
use serde_json::json;

#[test]
fn result_bundle_splits_on_whole_frames_and_decodes() {
    let mut bundle = ResultBundle::default();
    let values: Vec<(String, String)> = (0..50)
        .map(|i| {
            (
                format!("t{i}"),
                format!(r#"{{"status":"success","output":{i}}}"#),
            )
        })
        .collect();
    for (id, v) in &values {
        bundle.push(id, v.as_bytes());
    }
    assert_eq!(bundle.len(), 50);
    let one = bundle.parts(1 << 20).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].len(), 1 + bundle.size());
    let parts = bundle.parts(200).unwrap();
    assert!(parts.len() > 5, "{} parts", parts.len());
    assert!(parts.iter().all(|p| p.len() <= 200));
    let decoded: Vec<(String, String)> = parts
        .iter()
        .flat_map(|p| ResultBundle::decode(p).unwrap())
        .map(|(id, v)| (id.to_string(), String::from_utf8(v.to_vec()).unwrap()))
        .collect();
    assert_eq!(decoded, values);
    // A frame that fits no part: no bundle.
    assert_eq!(bundle.parts(20), None);
    // An empty bundle is one part with no frames.
    let empty = ResultBundle::default().parts(100).unwrap();
    assert_eq!(ResultBundle::decode(&empty[0]).unwrap(), vec![]);
}

#[test]
fn malformed_result_bundle_parts_are_refused() {
    let mut bundle = ResultBundle::default();
    bundle.push("t1", b"{}");
    let part = bundle.parts(100).unwrap().remove(0);
    for bad in [
        &b""[..],
        &[2u8, 0, 0][..],
        &part[..part.len() - 1],
        &part[..3],
        &[1u8, 2, 0, 0xff, 0xfe, 0, 0, 0, 0][..],
    ] {
        let e = ResultBundle::decode(bad).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{bad:?}");
    }
}

#[test]
fn seed_plan_parses_with_params_kept() {
    let plan: Plan = serde_json::from_value(json!({
        "plan_id": "abc123",
        "subtasks": [
            {"id": "t1", "type": "math", "action": "sum", "args": [1, 2, 3]},
            {"id": "t2", "type": "date", "action": "today"},
            {"id": "t3", "type": "web", "action": "navigate", "url": "https://x"},
            {"id": "t4", "type": "math", "action": "multiply", "args": [5, 6],
             "depends_on": ["t1"], "priority": "high", "timeout_ms": 5000}
        ]
    }))
    .unwrap();
    assert_eq!(plan.subtasks.len(), 4);
    assert_eq!(plan.subtasks[0].params["args"], json!([1, 2, 3]));
    assert_eq!(plan.subtasks[2].params["url"], json!("https://x"));
    assert_eq!(plan.subtasks[3].depends_on, vec!["t1"]);
    assert_eq!(plan.subtasks[3].priority, Priority::High);
    assert!(!plan.subtasks[3].params.contains_key("priority"));
}

#[test]
fn task_message_is_subtask_plus_plan_in_both_encodings() {
    let msg: TaskMessage = serde_json::from_value(json!({
        "plan_id":"abc123","id":"t1","type":"math","action":"sum","args":[1,2,3],"attempt":1
    }))
    .unwrap();
    assert_eq!(msg.task.capability, "math");
    assert_eq!(msg.task.params.len(), 1);
    for enc in [Encoding::Json, Encoding::Msgpack] {
        let back: TaskMessage = enc.decode(&enc.encode(&msg).unwrap()).unwrap();
        assert_eq!(back, msg);
    }
    let v = serde_json::to_value(&msg).unwrap();
    assert_eq!(
        v,
        json!({"plan_id":"abc123","id":"t1","type":"math","action":"sum","args":[1,2,3],"attempt":1})
    );
}

#[test]
fn an_id_left_out_is_not_written_back_as_an_empty_one() {
    let plan: Plan =
        serde_json::from_value(json!({"subtasks":[{"type":"m","action":"a"}]})).unwrap();
    let again = serde_json::to_value(&plan).unwrap();
    assert_eq!(again, json!({"subtasks":[{"type":"m","action":"a"}]}));
    // and so it reads back
    let _: Plan = serde_json::from_value(again).unwrap();
    let e = Encoding::Json
        .decode::<SubmitRequest>(br#"{"plan_id":"","subtasks":[]}"#)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidId, "{e}");
    // A message that merely quotes the id rule is no invalid id.
    let e = Encoding::Json
        .decode::<SubmitRequest>(br#"{"plan_id":"p","wait":"must match [A-Za-z0-9_-]{1,64}"}"#)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
}

#[test]
fn parameters_may_not_take_the_task_messages_own_names() {
    let mut params = Map::new();
    params.insert("args".into(), json!([1]));
    assert!(check_params(&params).is_ok());
    for name in RESERVED {
        let mut p = params.clone();
        p.insert(name.into(), json!(1));
        let e = check_params(&p).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains(name), "{e}");
    }
}

#[test]
fn hand_written_decoding_matches_the_wire_shape() {
    // plan_id, attempt and deadline are fields of a queue message: as
    // parameters of a subtask they would be written twice into its task
    // message, which no worker could then read.
    for field in ["plan_id", "attempt", "deadline"] {
        let e = serde_json::from_value::<Subtask>(json!({
            "type":"m","action":"a", field: "x"
        }))
        .unwrap_err();
        assert!(e.to_string().contains(field), "{e}");
    }
    let t: Subtask =
        serde_json::from_value(json!({"type":"m","action":"a","timeout_ms":null})).unwrap();
    assert_eq!(t.timeout_ms, None);
    let m: TaskMessage =
        serde_json::from_value(json!({"plan_id":"p","id":"t","type":"m","action":"a"})).unwrap();
    assert_eq!((m.plan_id.as_str(), m.attempt, m.deadline), ("p", 1, None));
    assert!(m.task.params.is_empty());
    // A queue message's deadline is a field, in both encodings; a subtask
    // may not have one (see above).
    let m: TaskMessage = serde_json::from_value(json!({
        "plan_id":"p","id":"t","type":"m","action":"a","deadline":"2026-11-21T12:00:00Z"
    }))
    .unwrap();
    assert_eq!(m.deadline, Some("2026-11-21T12:00:00Z".parse().unwrap()));
    for enc in [Encoding::Json, Encoding::Msgpack] {
        assert_eq!(
            enc.decode::<TaskMessage>(&enc.encode(&m).unwrap()).unwrap(),
            m
        );
    }
    let e = serde_json::from_value::<TaskMessage>(json!({"id":"t","type":"m","action":"a"}))
        .unwrap_err();
    assert!(e.to_string().contains("plan_id"), "{e}");
    let e = serde_json::from_str::<Subtask>(r#"{"type":"m","type":"n","action":"a"}"#).unwrap_err();
    assert!(e.to_string().contains("duplicate"), "{e}");
    let e = serde_json::from_value::<Subtask>(json!({"type":"m","action":"a","retries":-1}))
        .unwrap_err();
    assert!(e.to_string().contains("invalid value"), "{e}");
    // Escaped keys (owned, not borrowed) work too.
    let t: Subtask =
        serde_json::from_str(r#"{"t\u0079pe":"m","action":"a","\u0061rgs":[1]}"#).unwrap();
    assert_eq!(
        (t.capability.as_str(), &t.params["args"]),
        ("m", &json!([1]))
    );
}

#[test]
fn minimal_foreign_results_parse() {
    let r: TaskResult = serde_json::from_str(r#"{"status":"success","output":6}"#).unwrap();
    assert!(r.is_success());
    assert_eq!(r.attempt, 1);
    let r: TaskResult =
        serde_json::from_str(r#"{"status":"failed","error":{"code":"smtp_down"}}"#).unwrap();
    assert_eq!(r.status, TaskStatus::Unknown);
    assert!(r.is_terminal() && !r.is_success());
}

#[test]
fn wrong_types_are_rejected() {
    assert!(serde_json::from_value::<Plan>(json!({"subtasks": "t1"})).is_err());
    assert!(
        serde_json::from_value::<Plan>(json!({"subtasks":[{"id":"t1","type":"math"}]})).is_err()
    );
    assert!(
        serde_json::from_value::<Plan>(
            json!({"subtasks":[{"id":"t1","type":"math","action":"sum","depends_on":"t0"}]})
        )
        .is_err()
    );
}

#[test]
fn error_replies_decode_to_errors() {
    let body = serde_json::to_vec(&ErrorReply::new(&Error::new(
        ErrorCode::UnknownCapability,
        "no pool serves x",
    )))
    .unwrap();
    let err = decode_reply::<SubmitReply>(Encoding::Json, &body).unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownCapability);
    let ok = serde_json::to_vec(&json!({"plan_id":"p","status":"accepted"})).unwrap();
    assert_eq!(
        decode_reply::<SubmitReply>(Encoding::Json, &ok)
            .unwrap()
            .plan_id,
        "p"
    );
}
