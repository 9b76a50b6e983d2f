//! Registry entries (`cap.<capability>` and `cap.<capability>.<pool>` in
//! `mesh_registry`): anyone who may write the bucket can put anything there.
//!
//! Input: the key, a newline, the value. `registry::check` fails with
//! `bad_registration`, or returns an entry whose ids are valid, whose
//! actions number 1 to `MAX_ACTIONS`, and that matches its key; the entry,
//! written again, checks again to the same entry.

#![no_main]

use jetmesh_shared::codec;
use jetmesh_shared::error::ErrorCode;
use jetmesh_shared::ids::is_valid;
use jetmesh_shared::registry::{self, MAX_ACTIONS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, value) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"cap.math"[..], data),
    };
    let key = String::from_utf8_lossy(key);
    match registry::check(&key, value) {
        Ok(entry) => {
            assert!(is_valid(&entry.capability), "{entry:?}");
            assert!(is_valid(&entry.pool), "{entry:?}");
            assert!(!entry.actions.is_empty() && entry.actions.len() <= MAX_ACTIONS);
            assert!(entry.actions.iter().all(|a| is_valid(a)), "{entry:?}");
            let v1 = format!("cap.{}", entry.capability);
            let v2 = format!("cap.{}.{}", entry.capability, entry.pool);
            assert!(*key == v1 || *key == v2, "key {key:?} for {entry:?}");
            let again = codec::to_json(&entry.entry).expect("an entry encodes");
            assert_eq!(
                registry::check(&key, &again)
                    .expect("a checked entry checks again")
                    .entry,
                entry.entry
            );
            // Its schemas (outside input too) check parameters without
            // panicking, and refuse only with invalid_args.
            for action in &entry.actions {
                let params = serde_json::Map::new();
                if let Err(e) = entry.check_params("t1", action, &params) {
                    assert_eq!(e.code, ErrorCode::InvalidArgs, "{e}");
                }
            }
        }
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadRegistration, "{e}");
            assert!(e.message.starts_with(&*key), "{e}");
        }
    }
});
