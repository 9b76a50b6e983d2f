//! The `sim` capability: simulated work for smoke tests, benchmarks and fault
//! drills. No pool serves it unless its config lists it
//! (`capabilities = ["sim"]`).
//!
//! | action  | params                         | result                          |
//! |---------|--------------------------------|---------------------------------|
//! | `sleep` | `ms`: 0 ..= 600000             | `{"slept_ms": ms}` after `ms`   |
//! | `echo`  | anything                       | the params, as given            |
//! | `fail`  | `retryable`: bool (false)      | an `unavailable` (retryable) or `invalid_args` error |
//!
//! `sleep` waits without holding a thread, like a task that waits on I/O.

use futures::future::BoxFuture;
use jetmesh_shared::capability::{Action, Call, Capability};
use jetmesh_shared::{Error, ErrorCode};
use serde_json::{Value, json};
use std::time::Duration;

const ACTIONS: &[Action] = &[
    Action {
        name: "sleep",
        description: "Waits ms milliseconds without holding a thread, like a task waiting on I/O.",
        params: r#"{"type":"object","required":["ms"],"properties":{
  "ms":{"type":"integer","minimum":0,"maximum":600000,"description":"How long to wait."}}}"#,
    },
    Action {
        name: "echo",
        description: "Returns its parameters as given.",
        params: r#"{"type":"object"}"#,
    },
    Action {
        name: "fail",
        description: "Fails: with unavailable (retryable) when retryable is true, else invalid_args.",
        params: r#"{"type":"object","properties":{
  "retryable":{"type":"boolean","description":"Whether the failure is retryable (default false)."}}}"#,
    },
];

/// The longest `sleep`, in milliseconds (ten minutes).
pub const MAX_SLEEP_MS: u64 = 600_000;

/// The built-in `sim` capability.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sim;

impl Capability for Sim {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn actions(&self) -> &'static [Action] {
        ACTIONS
    }

    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, Error>> {
        let params = call.params;
        Box::pin(async move {
            match call.action {
                "sleep" => {
                    let ms = params.get("ms").and_then(Value::as_u64).ok_or_else(|| {
                        Error::new(
                            ErrorCode::InvalidArgs,
                            "sleep needs \"ms\", a whole number of milliseconds",
                        )
                    })?;
                    if ms > MAX_SLEEP_MS {
                        return Err(Error::new(
                            ErrorCode::InvalidArgs,
                            format!("sleep is limited to {MAX_SLEEP_MS} ms; {ms} was asked"),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(json!({ "slept_ms": ms }))
                }
                "echo" => Ok(Value::Object(params.clone())),
                "fail" => {
                    if params.get("retryable").and_then(Value::as_bool) == Some(true) {
                        Err(Error::new(
                            ErrorCode::Unavailable,
                            "sim: a retryable failure, as asked",
                        ))
                    } else {
                        Err(Error::new(
                            ErrorCode::InvalidArgs,
                            "sim: a permanent failure, as asked",
                        ))
                    }
                }
                other => Err(Error::new(
                    ErrorCode::UnknownAction,
                    format!("sim has no action {other:?}"),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[tokio::test]
    async fn sleep_waits_and_bounds_its_argument() {
        let started = tokio::time::Instant::now();
        let out = Sim
            .execute(Call::bare("sleep", &params(json!({"ms": 20}))))
            .await
            .unwrap();
        assert_eq!(out, json!({"slept_ms": 20}));
        assert!(started.elapsed() >= Duration::from_millis(20));
        for bad in [
            json!({}),
            json!({"ms": -1}),
            json!({"ms": "5"}),
            json!({"ms": 600_001}),
        ] {
            let e = Sim
                .execute(Call::bare("sleep", &params(bad.clone())))
                .await
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgs, "{bad}");
        }
    }

    #[tokio::test]
    async fn echo_and_fail() {
        let p = params(json!({"a": [1, "x"]}));
        assert_eq!(
            Sim.execute(Call::bare("echo", &p)).await.unwrap(),
            json!({"a": [1, "x"]})
        );
        let e = Sim
            .execute(Call::bare("fail", &params(json!({"retryable": true}))))
            .await
            .unwrap_err();
        assert!(e.code.is_retryable());
        let e = Sim
            .execute(Call::bare("fail", &params(json!({}))))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgs);
    }
}
