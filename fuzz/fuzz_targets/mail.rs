//! Agent mail as clients send it (`mesh.mailbox.send|reply|ack`, bodies
//! `MailDraft`, `MailReply`, `MailAck`), as it is stored on `MESH_MAIL`
//! (`Mail`, which anyone may publish), with its structured `data`
//! (`Decision`, `Blocker`), and the file reservations of `mesh.coord.*`
//! (`ReserveRequest`, `ReleaseRequest`) with their globs.
//!
//! Each value that decodes comes back the same through JSON; thread names
//! and addresses print back to what was parsed; the globs a decision grants
//! or a reservation asks for are parsed and checked against a scope the way
//! the chief does, and the answers of the glob algebra are consistent.

#![no_main]

use jetmesh_coord::globs::{self, Glob};
use jetmesh_coord::state;
use jetmesh_coord::wire::{
    Blocker, Decision, Mail, MailAck, MailDraft, MailReply, ReleaseRequest, ReserveRequest,
};
use jetmesh_fuzz::{check_decode_error, round_trip};
use jetmesh_shared::codec::{self, Encoding};
use jetmesh_shared::error::ErrorCode;
use jetmesh_shared::ids;
use jetmesh_shared::names::{Names, Thread};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;

fn decode<T: Serialize + DeserializeOwned + Debug>(data: &[u8], what: &str) -> Option<T> {
    match codec::from_json::<T>(data) {
        Ok(v) => {
            round_trip(&v, Encoding::Json, what);
            Some(v)
        }
        Err(e) => {
            check_decode_error(&e, what);
            None
        }
    }
}

/// A thread name (`epic`, `track.<id>`, `inbox.<agent>`) prints back to itself.
fn thread(s: &str) {
    if let Some(t) = Thread::parse(s) {
        assert_eq!(t.to_string(), s);
        if let Thread::Track(id) | Thread::Inbox(id) = &t {
            assert!(ids::is_valid(id));
        }
        let names = Names::default();
        let subject = names.mail("E1", &t);
        assert_eq!(
            names.parse_mail_subject(&subject),
            Some(("E1".to_string(), t))
        );
    }
    if let Some((epic, t)) = Thread::parse_address(s) {
        assert!(ids::is_valid(&epic));
        let printed = match &t {
            Thread::Epic if s == epic => epic.clone(),
            _ => format!("{epic}.{t}"),
        };
        assert_eq!(printed, s);
    }
}

/// The glob algebra on globs from outside: a glob covers itself, overlap
/// is symmetric, a literal glob matches its own path, and whatever covers a
/// literal glob matches that path.
fn glob_laws(gs: &[Glob]) {
    for g in gs.iter().take(8) {
        assert!(g.covers(g), "{g} does not cover itself");
        let literal = !g.as_str().contains(['*', '?', '[', ']', '{', '}'])
            && !g.as_str().ends_with('/')
            && !g.as_str().starts_with("./")
            && g.as_str().split('/').all(|s| s != "." && !s.is_empty());
        if literal {
            assert!(g.matches(g.as_str()), "{g} does not match its own path");
        }
        for h in gs.iter().take(8) {
            assert_eq!(g.overlaps(h), h.overlaps(g), "overlap of {g} and {h}");
            if literal && h.covers(g) {
                assert!(
                    h.matches(g.as_str()),
                    "{h} covers {g} but does not match it"
                );
            }
        }
    }
}

/// The patterns of a reservation or a grant, as the chief checks them.
fn patterns(p: &[String]) {
    if let Ok(gs) = Glob::parse_all(p) {
        glob_laws(&gs);
    }
    match state::check_patterns(p, None) {
        Ok(gs) => assert_eq!(gs.len(), p.len()),
        Err(e) => assert_eq!(e.code, ErrorCode::InvalidGlob, "{e}"),
    }
    // The first pattern as a track's scope, the others reserved inside it.
    if p.len() >= 2
        && let Ok(scope) = Glob::parse_all(&p[..1])
    {
        match state::check_patterns(&p[1..], Some(("t", &scope))) {
            Ok(gs) => assert!(gs.iter().all(|g| globs::covered_by(&scope, g))),
            Err(e) => assert!(
                matches!(e.code, ErrorCode::InvalidGlob | ErrorCode::OutsideScope),
                "{e}"
            ),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(m) = decode::<Mail>(data, "Mail") {
        if let Some(t) = m.thread() {
            assert_eq!(t.to_string(), m.thread);
        }
        thread(&m.thread);
        if let Some(d) = m.data_as::<Decision>() {
            patterns(&d.grant);
        }
        m.data_as::<Blocker>();
    }
    if let Some(d) = decode::<MailDraft>(data, "MailDraft") {
        thread(&d.thread);
        if let Some(Ok(dec)) = d.data.clone().map(serde_json::from_value::<Decision>) {
            patterns(&dec.grant);
        }
    }
    decode::<MailReply>(data, "MailReply");
    decode::<MailAck>(data, "MailAck");
    if let Some(d) = decode::<Decision>(data, "Decision") {
        patterns(&d.grant);
    }
    decode::<Blocker>(data, "Blocker");
    if let Some(r) = decode::<ReserveRequest>(data, "ReserveRequest") {
        patterns(&r.patterns);
    }
    decode::<ReleaseRequest>(data, "ReleaseRequest");

    // Any string in the input as a thread name or address.
    if let Ok(serde_json::Value::String(s)) = serde_json::from_slice(data) {
        thread(&s);
    }
});
