//! Helpers the fuzz targets share: comparisons that tolerate JSON's
//! best-effort float parsing, round trips through both encodings, and the
//! invariants of a normalized plan.

use jetmesh_shared::codec::Encoding;
use jetmesh_shared::error::ErrorCode;
use jetmesh_shared::ids;
use jetmesh_shared::wire::{Plan, Subtask, TaskMessage, TaskMessageRef};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::OnceLock;

/// Known bugs whose checks are skipped while they are being fixed: the
/// names in `JETMESH_FUZZ_ALLOW` (comma-separated). Empty by default, so
/// every invariant holds unless a run says otherwise. The names, and the
/// bugs, are in fuzz/regressions/README.md.
pub fn allowed(name: &str) -> bool {
    static ALLOW: OnceLock<Vec<String>> = OnceLock::new();
    ALLOW
        .get_or_init(|| {
            std::env::var("JETMESH_FUZZ_ALLOW")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|a| a == name)
}

/// Whether two floats are equal up to the last bits: serde_json parses
/// floats best-effort (without its `float_roundtrip` feature, which the
/// workspace does not enable), so a float may come back one ulp away.
pub fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 8.0 * f64::EPSILON * a.abs().max(b.abs()) || (a - b).abs() < 1e-300
}

/// Structural equality of two JSON values, floats compared with [`close`].
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) if x.is_f64() && y.is_f64() => close(p, q),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && same_value(v1, v2))
        }
        _ => a == b,
    }
}

/// Equality of two values of a wire type, through their JSON form.
pub fn same<T: Serialize>(a: &T, b: &T) -> bool {
    let a = serde_json::to_value(a).expect("a decoded value encodes as JSON");
    let b = serde_json::to_value(b).expect("a decoded value encodes as JSON");
    same_value(&a, &b)
}

/// Encodes `value` in `enc` and decodes it again; the result must be the
/// same value. This is what every relay of a decoded message relies on
/// (chief → planner, router → worker, results re-read by the summary).
pub fn round_trip<T>(value: &T, enc: Encoding, what: &str)
where
    T: Serialize + DeserializeOwned + Debug,
{
    let bytes = enc.encode(value).unwrap_or_else(|e| {
        panic!("{what}: a decoded value does not encode as {enc:?}: {e}\n{value:#?}")
    });
    let back: T = match enc.decode(&bytes) {
        Ok(back) => back,
        Err(e) => panic!(
            "{what}: a decoded value, encoded as {enc:?}, does not decode again: {e}\nvalue: {value:#?}\nencoded: {}",
            String::from_utf8_lossy(&bytes)
        ),
    };
    assert!(
        same(value, &back),
        "{what}: {enc:?} round trip changed the value\nbefore: {value:#?}\nafter: {back:#?}"
    );
}

/// What a decoding error must say: `bad_request` with the decoder's
/// reason, or `invalid_id` when an id breaks the id rule — which, at
/// decode time, only an empty id does (`""` where an id may be left out).
pub fn check_decode_error(e: &jetmesh_shared::Error, what: &str) {
    match e.code {
        ErrorCode::BadRequest => {}
        ErrorCode::InvalidId => assert!(
            e.message.contains("\"\" must match"),
            "{what}: invalid_id for something that is not an empty id: {e}"
        ),
        _ => panic!("{what}: a decoding error with code {}: {e}", e.code),
    }
}

/// The codes `plan::normalize` may fail with.
pub const NORMALIZE_CODES: [ErrorCode; 6] = [
    ErrorCode::BadRequest,
    ErrorCode::InvalidId,
    ErrorCode::PayloadTooLarge,
    ErrorCode::DuplicateTaskId,
    ErrorCode::UnknownDependency,
    ErrorCode::DependencyCycle,
];

/// What `plan::normalize` promises about a plan it accepted, checked
/// independently of it; then that a second `normalize` changes nothing,
/// and that the router can hand each task to a worker: the queue message
/// it encodes (`TaskMessageRef`) decodes as the worker reads it
/// (`TaskMessage`), in both encodings, to the same task.
pub fn check_normalized(plan: &Plan, max_subtasks: usize) {
    assert!(ids::is_valid(&plan.plan_id), "plan id {:?}", plan.plan_id);
    assert!(!plan.subtasks.is_empty() && plan.subtasks.len() <= max_subtasks);
    assert_ne!(plan.deadline_ms, Some(0));
    let mut index = HashMap::new();
    for (i, t) in plan.subtasks.iter().enumerate() {
        assert!(ids::is_valid(&t.id), "task id {:?}", t.id);
        assert!(
            ids::is_valid(&t.capability),
            "capability {:?}",
            t.capability
        );
        assert!(ids::is_valid(&t.action), "action {:?}", t.action);
        assert_ne!(t.timeout_ms, Some(0));
        assert!(
            index.insert(t.id.as_str(), i).is_none(),
            "duplicate id {}",
            t.id
        );
    }
    for t in &plan.subtasks {
        for d in &t.depends_on {
            assert_ne!(d, &t.id, "self dependency");
            assert!(index.contains_key(d.as_str()), "unknown dependency {d}");
        }
    }
    // Acyclic: a depth-first search finds no back edge.
    fn visit(i: usize, p: &Plan, ix: &HashMap<&str, usize>, state: &mut [u8]) {
        match state[i] {
            1 => panic!("normalize accepted a cycle through {}", p.subtasks[i].id),
            2 => return,
            _ => {}
        }
        state[i] = 1;
        for d in &p.subtasks[i].depends_on {
            visit(ix[d.as_str()], p, ix, state);
        }
        state[i] = 2;
    }
    let mut state = vec![0u8; plan.subtasks.len()];
    if plan.subtasks.len() <= 4096 {
        for i in 0..plan.subtasks.len() {
            visit(i, plan, &index, &mut state);
        }
    }

    let mut again = plan.clone();
    jetmesh_shared::plan::normalize(&mut again, max_subtasks)
        .expect("a normalized plan normalizes again");
    assert_eq!(&again, plan, "normalize is not idempotent");

    for t in &plan.subtasks {
        check_dispatch(&plan.plan_id, t);
    }
}

/// The router → worker hand-off of one task of a valid plan.
pub fn check_dispatch(plan_id: &str, task: &Subtask) {
    let message = TaskMessageRef {
        plan_id,
        task,
        attempt: 1,
        deadline: None,
    };
    for enc in [Encoding::Json, Encoding::Msgpack] {
        let bytes = enc.encode(&message).expect("a task message encodes");
        let back: TaskMessage = match enc.decode(&bytes) {
            Ok(back) => back,
            Err(e) => panic!(
                "task {} (plan {plan_id}), accepted for dispatch: the queue message the router sends ({enc:?}) does not decode as the worker reads it: {}\nencoded: {}",
                task.id,
                e,
                String::from_utf8_lossy(&bytes)
            ),
        };
        assert_eq!(back.plan_id, plan_id);
        assert_eq!(back.attempt, 1);
        assert_eq!(back.deadline, None);
        assert!(
            same(&back.task, task),
            "the worker reads another task than the router sent\nsent: {task:#?}\nread: {:#?}",
            back.task
        );
    }
}
