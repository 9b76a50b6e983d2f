//! Coordination state of epics: the epic itself (read from its plan record),
//! its live state (`epic.<id>` in `mesh_plans`, kept by the chief), bead
//! claims and file reservations (`mesh_coord`, leases that lapse unless their
//! holder renews them).
//!
//! **Invariant:** two reservations that conflict (overlapping patterns, one of
//! them exclusive) are never both granted. Every grant re-checks the live
//! reservations and then bumps `gen.<epic>` with compare-and-set; a grant
//! whose bump fails (another grant slipped in between) withdraws and checks
//! again.

use crate::globs::{self, Glob};
use crate::wire::{Claim, Epic, EpicState, Reservation};
use async_nats::jetstream::kv;
use jetmesh_shared::Mesh;
use jetmesh_shared::codec;
use jetmesh_shared::error::{Context, Error, ErrorCode, Result};
use jetmesh_shared::wire::PlanRecord;
use std::time::Duration;

/// The epic `id`, from its stored plan.
/// Errors: `not_found` when no epic has that id.
pub async fn load_epic(mesh: &Mesh, id: &str) -> Result<Epic> {
    jetmesh_shared::ids::validate("epic id", id)?;
    let record: Option<PlanRecord> = mesh.get_json(&mesh.plans, &mesh.names.plan_key(id)).await?;
    record
        .map(|r| crate::epic::of_plan(&r.plan))
        .transpose()?
        .flatten()
        .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("there is no epic {id}")))
}

/// The epic's live state and its revision.
pub async fn state(mesh: &Mesh, id: &str) -> Result<Option<(EpicState, u64)>> {
    let key = mesh.names.epic_state_key(id);
    match mesh
        .plans
        .entry(&key)
        .await
        .context("cannot read epic state")?
    {
        Some(e) if e.operation == kv::Operation::Put => {
            Ok(Some((codec::from_json(&e.value)?, e.revision)))
        }
        _ => Ok(None),
    }
}

/// Changes the epic's state with compare-and-set, retrying on a race.
/// `change` returns whether it changed anything.
pub async fn update_state(
    mesh: &Mesh,
    id: &str,
    mut change: impl FnMut(&mut EpicState) -> bool,
) -> Result<EpicState> {
    let key = mesh.names.epic_state_key(id);
    for _ in 0..20 {
        let (mut st, rev) = state(mesh, id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("epic {id} has no state")))?;
        if !change(&mut st) {
            return Ok(st);
        }
        match mesh.plans.update(&key, codec::to_json(&st)?, rev).await {
            Ok(_) => return Ok(st),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(Error::unavailable("cannot update epic state", e)),
        }
    }
    Err(Error::new(
        ErrorCode::Unavailable,
        "the epic state changes too fast to update",
    ))
}

/// A track's scope now: its globs plus what decisions granted.
pub fn scope(epic: &Epic, st: Option<&EpicState>, track: &str) -> Result<Vec<Glob>> {
    let t = epic.track(track).ok_or_else(|| {
        Error::new(
            ErrorCode::NotFound,
            format!("epic {} has no track {track}", epic.id),
        )
    })?;
    let mut globs = Glob::parse_all(&t.scope)?;
    if let Some(granted) = st.and_then(|s| s.grants.get(track)) {
        globs.extend(Glob::parse_all(granted)?);
    }
    Ok(globs)
}

/// The outcome of [`claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    Granted,
    /// Another worker holds the bead.
    HeldBy(Claim),
}

/// Claims a bead (KV create). A worker's own earlier claim (a redelivery to
/// it) counts as granted.
pub async fn claim(mesh: &Mesh, claim: &Claim) -> Result<Claimed> {
    let key = mesh.names.claim_key(&claim.epic, &claim.bead);
    let body = codec::to_json(claim)?;
    match mesh.coord.create(&key, body.clone()).await {
        Ok(_) => Ok(Claimed::Granted),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            match mesh.get_json::<Claim>(&mesh.coord, &key).await? {
                Some(held) if held.worker != claim.worker => Ok(Claimed::HeldBy(held)),
                // Ours, or gone in between: take it.
                _ => {
                    mesh.coord.put(&key, body).await.context("cannot claim")?;
                    Ok(Claimed::Granted)
                }
            }
        }
        Err(e) => Err(Error::unavailable("cannot claim a bead", e)),
    }
}

/// The claim on a bead, if any.
pub async fn claim_of(mesh: &Mesh, epic: &str, bead: &str) -> Result<Option<Claim>> {
    mesh.get_json(&mesh.coord, &mesh.names.claim_key(epic, bead))
        .await
}

/// Another holder's reservation that stands in the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub mine: String,
    pub theirs: Reservation,
    pub pattern: String,
}

impl Conflict {
    pub fn holder(&self) -> String {
        let r = &self.theirs;
        match (&r.bead, &r.track) {
            (Some(b), Some(t)) => format!("{} (track {t}, bead {b})", r.agent),
            (None, Some(t)) => format!("{} (track {t})", r.agent),
            _ => r.agent.clone(),
        }
    }

    pub fn to_error(&self) -> Error {
        Error::new(
            ErrorCode::ReservationConflict,
            format!(
                "{} overlaps {}, reserved ({}) by {}",
                self.mine,
                self.pattern,
                if self.theirs.exclusive {
                    "exclusive"
                } else {
                    "shared"
                },
                self.holder()
            ),
        )
    }
}

/// The outcome of [`reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    Granted(Reservation),
    Conflict(Box<Conflict>),
}

/// Checks a reservation's patterns: valid globs, inside `scope` when given.
/// Errors: `invalid_glob`, `outside_scope`.
pub fn check_patterns(patterns: &[String], scope: Option<(&str, &[Glob])>) -> Result<Vec<Glob>> {
    if patterns.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidGlob,
            "a reservation needs at least one pattern",
        ));
    }
    let globs = Glob::parse_all(patterns)?;
    if let Some((track, scope)) = scope {
        for g in &globs {
            if !globs::covered_by(scope, g) {
                let shown: Vec<&str> = scope.iter().map(Glob::as_str).collect();
                return Err(Error::new(
                    ErrorCode::OutsideScope,
                    format!(
                        "{g} is outside track {track}'s file scope ({})",
                        shown.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(globs)
}

/// Every live reservation of an epic.
pub async fn reservations(mesh: &Mesh, epic: &str) -> Result<Vec<Reservation>> {
    let entries = mesh
        .scan(&mesh.coord, &mesh.names.reservation_keys(epic))
        .await?;
    Ok(entries
        .iter()
        .filter_map(|e| codec::from_json::<Reservation>(&e.value).ok())
        .collect())
}

fn conflict_with(
    mine: &[Glob],
    exclusive: bool,
    others: &[Reservation],
    id: &str,
) -> Option<Conflict> {
    for other in others.iter().filter(|o| o.id != id) {
        if !exclusive && !other.exclusive {
            continue;
        }
        for theirs in &other.patterns {
            let Ok(t) = Glob::parse(theirs) else { continue };
            if let Some(m) = mine.iter().find(|m| m.overlaps(&t)) {
                return Some(Conflict {
                    mine: m.to_string(),
                    theirs: other.clone(),
                    pattern: theirs.clone(),
                });
            }
        }
    }
    None
}

/// Grants (or renews, same id) a reservation unless another holder's
/// conflicts. Patterns must have been checked ([`check_patterns`]).
pub async fn reserve(mesh: &Mesh, r: &Reservation) -> Result<Reserved> {
    jetmesh_shared::ids::validate("reservation id", &r.id)?;
    let mine = Glob::parse_all(&r.patterns)?;
    let key = mesh.names.reservation_key(&r.epic, &r.id);
    let gen_key = mesh.names.reservation_gen_key(&r.epic);
    let body = codec::to_json(r)?;
    for _ in 0..50 {
        let gen_rev = match mesh
            .coord
            .entry(&gen_key)
            .await
            .context("cannot read reservations")?
        {
            Some(e) if e.operation == kv::Operation::Put => Some(e.revision),
            _ => None,
        };
        let others = reservations(mesh, &r.epic).await?;
        if let Some(c) = conflict_with(&mine, r.exclusive, &others, &r.id) {
            return Ok(Reserved::Conflict(Box::new(c)));
        }
        let renewal = others.iter().any(|o| o.id == r.id);
        mesh.coord
            .put(&key, body.clone())
            .await
            .context("cannot reserve")?;
        let bumped = match gen_rev {
            Some(rev) => mesh.coord.update(&gen_key, "".into(), rev).await.is_ok(),
            None => mesh.coord.create(&gen_key, "".into()).await.is_ok(),
        };
        if bumped {
            return Ok(Reserved::Granted(r.clone()));
        }
        // Another grant slipped in: withdraw (unless this was a renewal of
        // what we already held) and look again.
        if !renewal {
            let _ = mesh.coord.delete(&key).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(Error::new(
        ErrorCode::Unavailable,
        "reservations change too fast to grant one",
    ))
}

/// Renews leases held by a worker: puts their current values again, which
/// restarts their time to live.
pub async fn renew(mesh: &Mesh, key: &str, body: bytes::Bytes) -> Result<()> {
    mesh.coord.put(key, body).await.context("cannot renew")?;
    Ok(())
}

/// Releases a reservation.
pub async fn release(mesh: &Mesh, epic: &str, id: &str) -> Result<()> {
    mesh.coord
        .delete(mesh.names.reservation_key(epic, id))
        .await
        .context("cannot release a reservation")?;
    Ok(())
}

/// Releases a bead's claim.
pub async fn release_claim(mesh: &Mesh, epic: &str, bead: &str) -> Result<()> {
    mesh.coord
        .delete(mesh.names.claim_key(epic, bead))
        .await
        .context("cannot release a claim")?;
    Ok(())
}

/// Who holds files a set of changed paths falls in (for blockers).
pub fn holders_of<'a>(paths: &[String], others: &'a [Reservation]) -> Vec<&'a Reservation> {
    others
        .iter()
        .filter(|r| {
            let globs: Vec<Glob> = r
                .patterns
                .iter()
                .filter_map(|p| Glob::parse(p).ok())
                .collect();
            paths.iter().any(|p| globs::any_matches(&globs, p))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(id: &str, agent: &str, pats: &[&str], exclusive: bool) -> Reservation {
        Reservation {
            id: id.into(),
            epic: "E".into(),
            track: Some("1".into()),
            agent: agent.into(),
            worker: None,
            bead: Some("bd-1".into()),
            patterns: pats.iter().map(|s| s.to_string()).collect(),
            exclusive,
            at: jiff::Timestamp::now(),
        }
    }

    #[test]
    fn conflicts_follow_exclusivity() {
        let others = [res("a", "Blue", &["src/**"], true)];
        let mine = Glob::parse_all(&["src/x.rs"]).unwrap();
        let c = conflict_with(&mine, false, &others, "b").unwrap();
        assert!(c.to_error().message.contains("Blue (track 1, bead bd-1)"));
        assert_eq!(c.to_error().code, ErrorCode::ReservationConflict);
        assert!(
            conflict_with(&mine, true, &others, "a").is_none(),
            "own reservation"
        );
        let shared = [res("a", "Blue", &["src/**"], false)];
        assert!(
            conflict_with(&mine, false, &shared, "b").is_none(),
            "shared + shared"
        );
        assert!(
            conflict_with(&mine, true, &shared, "b").is_some(),
            "exclusive + shared"
        );
        let elsewhere = Glob::parse_all(&["docs/**"]).unwrap();
        assert!(conflict_with(&elsewhere, true, &others, "b").is_none());
    }

    #[test]
    fn patterns_stay_in_scope() {
        let scope = Glob::parse_all(&["sdk/**"]).unwrap();
        assert!(check_patterns(&["sdk/a.rs".into()], Some(("1", &scope))).is_ok());
        let e = check_patterns(&["server/a.rs".into()], Some(("1", &scope))).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutsideScope);
        assert!(e.message.contains("sdk/**"), "{}", e.message);
        let e = check_patterns(&["sdk/[".into()], Some(("1", &scope))).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidGlob);
        assert_eq!(
            check_patterns(&[], None).unwrap_err().code,
            ErrorCode::InvalidGlob
        );
    }
}
