//! Stored results, as foreign workers may write them (`task.<plan>.<task>`
//! in `mesh_results`), and the result bundles the aggregator hands to the
//! summary.
//!
//! `results::read` never fails and always says success, or error with a
//! well-formed code; `results::succeeded` agrees with it; what `read`
//! returns, stored again, reads back the same. A bundle part that decodes
//! is rebuilt byte for byte, and split parts decode to the same frames.

#![no_main]

use jetmesh_fuzz::same;
use jetmesh_shared::codec;
use jetmesh_shared::error::{ErrorCode, is_code};
use jetmesh_shared::results;
use jetmesh_shared::wire::{ResultBundle, TaskStatus};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = results::read(data);
    match r.status {
        TaskStatus::Success => assert!(r.error.is_none(), "a success with an error: {r:?}"),
        TaskStatus::Error => {
            let e = r.error.as_ref().expect("an error result names its error");
            assert!(is_code(&e.code), "an error result with code {:?}", e.code);
            assert!(ErrorCode::parse(&e.code).is_some());
            assert!(r.output.is_none(), "an error with an output: {r:?}");
        }
        other => panic!("read returned status {other:?}"),
    }
    assert_eq!(
        results::succeeded(data),
        r.is_success(),
        "succeeded and read disagree on {}",
        String::from_utf8_lossy(data)
    );

    // A reader may store or forward what it read (the summary's report,
    // `mesh.run`'s answer): it reads back the same.
    let stored = codec::to_json(&r).expect("a result read encodes");
    let again = results::read(&stored);
    assert!(
        same(&r, &again),
        "re-reading a result changed it\nfirst: {r:#?}\nthen: {again:#?}"
    );
    assert_eq!(results::succeeded(&stored), r.is_success());

    // The same bytes as a result bundle part.
    if let Ok(frames) = ResultBundle::decode(data) {
        let mut bundle = ResultBundle::default();
        for (id, value) in &frames {
            bundle.push(id, value);
        }
        assert_eq!(bundle.len(), frames.len());
        let whole = bundle.parts(usize::MAX).expect("everything fits");
        assert_eq!(whole.len(), 1);
        assert_eq!(
            &whole[0][..],
            data,
            "a bundle part is not rebuilt byte for byte"
        );
        let max = (data.len() / 3).max(1);
        match bundle.parts(max) {
            Some(parts) => {
                let mut back = Vec::new();
                for p in &parts {
                    assert!(p.len() <= max, "a part of {} bytes, max {max}", p.len());
                    back.extend(ResultBundle::decode(p).expect("a part decodes"));
                }
                assert_eq!(back, frames);
            }
            None => assert!(
                frames
                    .iter()
                    .any(|(id, v)| 1 + ResultBundle::frame_len(id, v) > max),
                "parts refused a bundle whose frames all fit"
            ),
        }
    }
});
