//! Execution plans as people and planning tools write them: markdown
//! (`execution-plan.md`), YAML and JSON, as `jetmesh plan submit` and the
//! chief read them (`epic::parse_submission`), and the markdown reader alone
//! (`epic::parse_markdown`, then `check`).
//!
//! An epic that passed its checks must: check again in its JSON form (which
//! is how the plan carries it to the chief and the workers), come back equal
//! from that form, and compile into subtasks that `plan::normalize` accepts
//! (the planner validates them like any plan) and the router can hand to a
//! worker.

#![no_main]

use jetmesh_coord::epic::{self, Format};
use jetmesh_coord::wire::Epic;
use jetmesh_fuzz::{NORMALIZE_CODES, check_normalized};
use jetmesh_shared::error::ErrorCode;
use jetmesh_shared::wire::{Plan, SubmitRequest};
use libfuzzer_sys::fuzz_target;

const MAX_SUBTASKS: usize = 100_000;

/// What the chief does with a checked epic (`chief::epic::prepare`), then
/// the planner (`plan::normalize`).
fn compiles(e: &Epic) {
    let subtasks = epic::compile(e);
    assert_eq!(
        subtasks.len(),
        e.tracks.iter().map(|t| t.beads.len()).sum::<usize>()
    );
    let mut plan = Plan {
        plan_id: e.id.clone(),
        subtasks,
        epic: Some(epic::to_value(e).expect("an epic encodes")),
        ..Default::default()
    };
    if let Err(err) = jetmesh_shared::plan::normalize(&mut plan, MAX_SUBTASKS) {
        panic!("a checked epic compiles into a plan that normalize refuses: {err}\n{e:#?}");
    }
    check_normalized(&plan, MAX_SUBTASKS);
    for t in &e.tracks {
        for b in &t.beads {
            assert_eq!(e.bead(&b.id).map(|(t, _)| &t.id), Some(&t.id));
            assert_eq!(e.track_of(&b.id).map(|t| &t.id), Some(&t.id));
            e.unblocked_by(&b.id);
        }
        assert!(e.has_agent(&t.agent));
    }
    epic::describe(e);
}

/// A checked epic in the form a plan carries it.
fn carried(e: &Epic) {
    epic::validate(e).unwrap_or_else(|err| {
        panic!("an epic checked with its origin fails without it: {err}\n{e:#?}")
    });
    let value = epic::to_value(e).expect("an epic encodes");
    let plan = Plan {
        epic: Some(value.clone()),
        ..Default::default()
    };
    let back = epic::of_plan(&plan)
        .unwrap_or_else(|err| panic!("an epic does not read back from its JSON form: {err}"))
        .expect("the plan has its epic");
    assert_eq!(&back, e, "an epic changed through its JSON form");

    // Submitted again as JSON (`jetmesh plan submit plan.json`).
    let json = serde_json::to_string(&serde_json::json!({ "epic": value })).unwrap();
    let req = epic::parse_submission(&json, None).unwrap_or_else(|err| {
        panic!("a checked epic, resubmitted as JSON, is refused: {err}\n{json}")
    });
    assert_eq!(req.plan.plan_id, e.id);
    assert_eq!(epic::of_plan(&req.plan).unwrap().as_ref(), Some(e));
    compiles(e);
}

fn submission(req: &SubmitRequest) {
    match epic::of_plan(&req.plan) {
        Ok(Some(e)) => {
            assert!(!req.plan.plan_id.is_empty());
            carried(&e);
        }
        Ok(None) => {
            let mut p = req.plan.clone();
            match jetmesh_shared::plan::normalize(&mut p, MAX_SUBTASKS) {
                Ok(()) => check_normalized(&p, MAX_SUBTASKS),
                Err(e) => assert!(NORMALIZE_CODES.contains(&e.code), "{e}"),
            }
        }
        Err(e) => panic!("parse_submission returned an epic that of_plan refuses: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // As the CLI reads a file, and as the chief reads a body without a
    // Content-Type.
    let format = epic::format_of(None, text);
    match epic::parse_submission(text, None) {
        Ok(req) => submission(&req),
        Err(e) => assert_ne!(e.code, ErrorCode::Internal, "{e}"),
    }
    // Forced to YAML, as a body sent with `Content-Type: application/yaml`.
    if format != Format::Yaml {
        if let Ok(req) = epic::parse_submission(text, Some("application/yaml")) {
            submission(&req);
        }
    }

    // The markdown reader on anything. Its errors, and those of `check`
    // on what it read, name a line.
    match epic::parse_markdown(text) {
        Ok((e, origin)) => match epic::check(&e, &origin) {
            Ok(()) => carried(&e),
            Err(err) => assert!(err.message.starts_with("line "), "{err}"),
        },
        Err(err) => assert!(err.message.starts_with("line "), "{err}"),
    }
});
