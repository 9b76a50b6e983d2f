//! Identifier rules. Ids become subject tokens and KV key parts, so anything
//! outside `[A-Za-z0-9_-]{1,64}` is refused before it gets near a subject.

use crate::error::{Error, ErrorCode, Result};

pub const MAX_ID_LEN: usize = 64;

/// The id rule, as error messages state it.
pub const RULE: &str = "must match [A-Za-z0-9_-]{1,64}";

thread_local! {
    static REFUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Notes, on this thread, that a decoder refused an id: serde's errors are
/// text, and [`crate::codec`] turns this note (never the text, which may
/// quote the input) into `invalid_id`.
pub fn refuse() {
    REFUSED.with(|r| r.set(true));
}

/// Whether an id was refused since the last call, and forgets it.
pub fn take_refused() -> bool {
    REFUSED.with(|r| r.replace(false))
}

/// Whether `id` matches `[A-Za-z0-9_-]{1,64}`.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks `id`; `what` names it in the error ("plan id", "capability", …).
pub fn validate(what: impl std::fmt::Display, id: &str) -> Result<()> {
    if is_valid(id) {
        Ok(())
    } else {
        let shown: String = id.chars().take(80).collect();
        Err(Error::new(
            ErrorCode::InvalidId,
            format!("{what} {shown:?} {RULE}"),
        ))
    }
}

/// A fresh id: 32 lowercase hex characters.
pub fn generate() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(is_valid("abc123"));
        assert!(is_valid("t-1_A"));
        assert!(is_valid(&"a".repeat(64)));
        assert!(!is_valid(""));
        assert!(!is_valid(&"a".repeat(65)));
        assert!(!is_valid("a.b"));
        assert!(!is_valid("a b"));
        assert!(!is_valid("a*"));
        assert!(!is_valid("a>"));
        assert!(!is_valid("é"));
        assert_eq!(
            validate("plan id", "x.y").unwrap_err().code,
            ErrorCode::InvalidId
        );
        assert!(is_valid(&generate()));
    }
}
