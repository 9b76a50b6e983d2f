//! Replies a client or a role reads back (`wire::decode_reply`: the value,
//! or an error reply `{"status":"error","error":{...}}`), and error codes
//! (`ErrorCode`, `Error`) as they arrive from the outside.
//!
//! Input: one selector byte (even: JSON, odd: MessagePack), then the body.
//! An error reply always becomes an error with a well-formed code, its
//! message and retry hint; every error code that decodes is one that
//! `ErrorCode::parse` gives back, prints back to itself and round-trips.

#![no_main]

use jetmesh_fuzz::round_trip;
use jetmesh_shared::codec::Encoding;
use jetmesh_shared::error::{Error, ErrorCode, is_code};
use jetmesh_shared::wire::{
    self, ErrorReply, PlanView, PlannerReply, Report, SubmitReply, TaskResult, TaskStatus,
};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;

fn code_ok(code: &ErrorCode) {
    let s = code.as_str();
    assert!(is_code(s), "code {s:?}");
    assert_eq!(ErrorCode::parse(s).as_ref(), Some(code));
    assert_eq!(code.is_protocol(), ErrorCode::PROTOCOL.contains(code));
    for enc in [Encoding::Json, Encoding::Msgpack] {
        let bytes = enc.encode(code).unwrap();
        assert_eq!(&enc.decode::<ErrorCode>(&bytes).unwrap(), code);
    }
}

fn reply<T: Serialize + DeserializeOwned + Debug>(
    enc: Encoding,
    body: &[u8],
    error_reply: Option<&ErrorReply>,
) {
    match wire::decode_reply::<T>(enc, body) {
        Ok(v) => {
            assert!(
                error_reply.is_none(),
                "an error reply decoded as a value: {v:?}"
            );
            round_trip(&v, enc, std::any::type_name::<T>());
        }
        Err(e) => {
            code_ok(&e.code);
            if let Some(r) = error_reply {
                let expected = ErrorCode::parse(&r.error.code).unwrap_or(ErrorCode::Internal);
                assert_eq!(e.code, expected);
                assert_eq!(e.message, r.error.message);
                assert_eq!(e.retry_after_ms, r.error.retry_after_ms);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let enc = if selector % 2 == 0 {
        Encoding::Json
    } else {
        Encoding::Msgpack
    };

    // Replies are maps (`rmp_serde::to_vec_named`); rmp-serde also reads a
    // struct from an array, which `decode_reply`'s probe does not follow.
    let error_reply = enc
        .decode::<ErrorReply>(body)
        .ok()
        .filter(|r| r.status == TaskStatus::Error && enc.is_map(body));
    let error_reply = error_reply.as_ref();
    reply::<SubmitReply>(enc, body, error_reply);
    reply::<PlanView>(enc, body, error_reply);
    reply::<Report>(enc, body, error_reply);
    reply::<PlannerReply>(enc, body, error_reply);
    reply::<TaskResult>(enc, body, error_reply);
    reply::<serde_json::Value>(enc, body, error_reply);

    if let Ok(code) = enc.decode::<ErrorCode>(body) {
        code_ok(&code);
    }
    if let Ok(e) = enc.decode::<Error>(body) {
        code_ok(&e.code);
    }
});
