//! Execution plans (seed 2): reading them (JSON, YAML, or the markdown
//! `execution-plan.md` layout that planning tools write), checking them, and
//! compiling them into an ordinary plan whose subtasks are `agent.bead` tasks.
//!
//! A track's beads run in order (each depends on the one before); tracks run
//! in parallel; a cross-track dependency makes a bead (or a track's first
//! bead) wait for a bead of another track. So the router, the aggregator and
//! the summary run an epic like any plan; what is particular to epics (claims,
//! reservations, mail, blockers) lives in the `agent` capability and the chief.
//!
//! Every error names where the problem is: `line 12: …` for markdown, a field
//! path (`tracks[1].scope[0]: …`) for JSON and YAML.

use crate::globs::{self, Glob};
use crate::wire::{Bead, BeadTask, Epic, Track, TrackDependency};
use jetmesh_shared::error::{Error, ErrorCode, Result};
use jetmesh_shared::ids;
use jetmesh_shared::wire::{Plan, SubmitRequest, Subtask};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// The capability and action every bead runs as.
pub const BEAD_CAPABILITY: &str = "agent";
pub const BEAD_ACTION: &str = "bead";
/// How often a bead may be handed back (a claim held elsewhere, `reassign`).
pub const BEAD_RETRIES: u32 = 10;

/// Where each part of an epic was read from, for messages.
#[derive(Debug, Default, Clone)]
pub struct Origin {
    tracks: HashMap<String, usize>,
    beads: HashMap<String, usize>,
    deps: Vec<usize>,
    table: usize,
}

impl Origin {
    fn track(&self, i: usize, t: &Track) -> String {
        match self.tracks.get(&t.id) {
            Some(line) => format!("line {line}"),
            None if self.table > 0 => format!("line {}", self.table),
            None => format!("tracks[{i}]"),
        }
    }

    fn bead(&self, ti: usize, bi: usize, b: &Bead) -> String {
        match self.beads.get(&b.id) {
            Some(line) => format!("line {line}"),
            None if self.table > 0 => format!("line {}", self.table),
            None => format!("tracks[{ti}].beads[{bi}]"),
        }
    }

    fn dep(&self, i: usize) -> String {
        match self.deps.get(i) {
            Some(line) => format!("line {line}"),
            None => format!("dependencies[{i}]"),
        }
    }
}

fn at(code: ErrorCode, place: impl std::fmt::Display, msg: impl std::fmt::Display) -> Error {
    Error::new(code, format!("{place}: {msg}"))
}

/// Reads an execution plan in any of its forms. `content_type` wins when
/// given; otherwise a body starting with `{` is JSON, one with a markdown
/// `## Tracks` section or an `Epic: <id>` line is markdown, and anything else YAML.
pub fn parse_any(text: &str, content_type: Option<&str>) -> Result<Epic> {
    let req = parse_submission(text, content_type)?;
    of_plan(&req.plan)?.ok_or_else(|| {
        Error::new(
            ErrorCode::InvalidPlan,
            "this plan has no epic (no \"epic\" with tracks)",
        )
    })
}

/// What a body's format is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    Markdown,
}

/// The format named by a `Content-Type`, if it is one of the text formats.
pub fn format_of(content_type: Option<&str>, text: &str) -> Format {
    let ct = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match ct.as_str() {
        "text/markdown" | "text/x-markdown" => return Format::Markdown,
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
            return Format::Yaml;
        }
        "application/json" => return Format::Json,
        _ => {}
    }
    let start = text.trim_start();
    if start.starts_with('{') {
        Format::Json
    } else if text.lines().any(|l| {
        let l = plain(l);
        let lower = l.to_ascii_lowercase();
        // `Epic: E1` (markdown), not the YAML key `epic:` with a block under it.
        lower
            .strip_prefix("epic:")
            .is_some_and(|v| !v.trim().is_empty() && !v.trim().starts_with('{'))
            || matches!(heading(&l), Some((2, h)) if h.to_ascii_lowercase().starts_with("tracks"))
    }) {
        Format::Markdown
    } else {
        Format::Yaml
    }
}

/// Reads a `mesh.plans.submit` body that is markdown or YAML (or JSON), and
/// checks the epic in it, if any.
pub fn parse_submission(text: &str, content_type: Option<&str>) -> Result<SubmitRequest> {
    let mut req = match format_of(content_type, text) {
        Format::Markdown => {
            let (epic, origin) = parse_markdown(text)?;
            check(&epic, &origin)?;
            return Ok(SubmitRequest {
                plan: Plan {
                    plan_id: epic.id.clone(),
                    epic: Some(to_value(&epic)?),
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        Format::Yaml => serde_norway::from_str::<SubmitRequest>(text).map_err(|e| {
            Error::new(
                ErrorCode::BadRequest,
                format!("this YAML is not a plan: {e}"),
            )
        })?,
        Format::Json => jetmesh_shared::codec::from_json::<SubmitRequest>(text.as_bytes())?,
    };
    if let Some(epic) = of_plan(&req.plan)? {
        check(&epic, &Origin::default())?;
        if req.plan.plan_id.is_empty() {
            req.plan.plan_id = epic.id.clone();
        }
    }
    Ok(req)
}

/// The epic a plan carries, if any. A plan carries it as an opaque value
/// (`jetmesh_shared` does not know epics); this reads it strictly.
/// Errors: `invalid_plan` naming what does not fit.
pub fn of_plan(plan: &Plan) -> Result<Option<Epic>> {
    let Some(value) = &plan.epic else {
        return Ok(None);
    };
    serde_json::from_value(value.clone())
        .map(Some)
        .map_err(|e| Error::new(ErrorCode::InvalidPlan, format!("epic: {e}")))
}

/// An epic as a plan carries it.
pub fn to_value(epic: &Epic) -> Result<Value> {
    serde_json::to_value(epic).map_err(|e| Error::internal(format!("cannot encode an epic: {e}")))
}

/// Checks an epic as JSON or YAML carried it.
pub fn validate(epic: &Epic) -> Result<()> {
    check(epic, &Origin::default())
}

/// Strips a list marker (`- `, `* `, `1. `, `- [ ] `) from a markdown line.
fn plain(line: &str) -> String {
    let mut s = line.trim();
    for marker in ["- [ ] ", "- [x] ", "- [X] ", "* ", "- ", "+ "] {
        if let Some(rest) = s.strip_prefix(marker) {
            s = rest.trim_start();
            break;
        }
    }
    // `1. ` and `12) `
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 && matches!(s.as_bytes().get(digits), Some(b'.') | Some(b')')) {
        s = s[digits + 1..].trim_start();
    }
    s.trim().to_string()
}

/// Drops code ticks and `**bold**` markers (not the `**` of a glob).
fn unmark(s: &str) -> String {
    let s = s.replace('`', "");
    let t = s.trim();
    match t.strip_prefix("**").and_then(|x| x.strip_suffix("**")) {
        Some(inner) if !inner.contains('*') => inner.to_string(),
        _ => t.replace("**:", ":").trim_start_matches("**").to_string(),
    }
}

fn heading(line: &str) -> Option<(usize, &str)> {
    let t = line.trim_start();
    let level = t.bytes().take_while(|b| *b == b'#').count();
    (level > 0 && t.as_bytes().get(level) == Some(&b' ')).then(|| (level, t[level..].trim()))
}

fn split_row(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = t.strip_suffix('|').unwrap_or(t);
    t.split('|').map(|c| c.trim().to_string()).collect()
}

fn is_separator_row(cells: &[String]) -> bool {
    cells
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
}

/// `Track 1`, `1`, `**Track 2**` → `1`, `2`.
fn track_id(cell: &str) -> String {
    let c = unmark(cell);
    let c = c.trim();
    let c = c
        .strip_prefix("Track ")
        .or_else(|| c.strip_prefix("track "))
        .unwrap_or(c);
    c.trim().trim_end_matches(':').to_string()
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| c.is_whitespace() || matches!(c, ',' | '→' | ';'))
        .map(|w| {
            unmark(w)
                .trim_matches(|c: char| matches!(c, '(' | ')' | '.' | ':' | '"' | '\''))
                .to_string()
        })
        .filter(|w| !w.is_empty() && w != "->" && w != ">" && w != "=>")
        .collect()
}

/// Reads the markdown `execution-plan.md` layout. The epic is not checked
/// yet (see [`check`]); structural problems are reported with their line.
pub fn parse_markdown(text: &str) -> Result<(Epic, Origin)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut epic = Epic::default();
    let mut origin = Origin::default();
    let bad = |n: usize, msg: String| at(ErrorCode::InvalidPlan, format!("line {n}"), msg);

    // Header fields, before the first section.
    let mut epic_line = 0;
    let header_end = lines
        .iter()
        .position(|l| matches!(heading(l), Some((2, _))))
        .unwrap_or(lines.len());
    for (i, raw) in lines[..header_end].iter().enumerate() {
        let n = i + 1;
        if let Some((1, title)) = heading(raw)
            && epic.title.is_none()
        {
            let title = title
                .strip_prefix("Execution Plan:")
                .or_else(|| title.strip_prefix("Execution plan:"))
                .unwrap_or(title)
                .trim();
            epic.title = Some(title.to_string());
            continue;
        }
        let l = unmark(&plain(raw));
        let Some((key, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim().to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "epic" | "epic id" if epic_line == 0 => {
                let id = value.split_whitespace().next().unwrap_or("").to_string();
                ids::validate("epic id", &id).map_err(|e| bad(n, e.message))?;
                epic.id = id;
                epic_line = n;
            }
            "workdir" | "working directory" if epic.workdir.is_none() => epic.workdir = Some(value),
            "command" | "agent command" if epic.command.is_none() => epic.command = Some(value),
            _ => {}
        }
    }
    if epic_line == 0 {
        return Err(Error::new(
            ErrorCode::InvalidPlan,
            "line 1: no `Epic: <id>` line; the plan must name its epic",
        ));
    }

    // The tracks table.
    let tracks_at = lines
        .iter()
        .position(|l| matches!(heading(l), Some((2, h)) if h.to_ascii_lowercase().starts_with("tracks")))
        .ok_or_else(|| {
            bad(
                lines.len().max(1),
                "no `## Tracks` section with the table `| Track | Agent | Beads (in order) | File Scope |`".into(),
            )
        })?;
    let header_at = (tracks_at + 1..lines.len())
        .find(|&i| lines[i].trim_start().starts_with('|') || heading(lines[i]).is_some())
        .filter(|&i| lines[i].trim_start().starts_with('|'))
        .ok_or_else(|| {
            bad(
                tracks_at + 1,
                "`## Tracks` has no table; expected `| Track | Agent | Beads (in order) | File Scope |`".into(),
            )
        })?;
    origin.table = header_at + 1;
    let header: Vec<String> = split_row(lines[header_at])
        .iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let col = |name: &str| header.iter().position(|c| c.contains(name));
    let (Some(c_track), Some(c_agent), Some(c_beads), Some(c_scope)) =
        (col("track"), col("agent"), col("bead"), col("scope"))
    else {
        return Err(bad(
            header_at + 1,
            "the tracks table needs the columns Track, Agent, Beads (in order) and File Scope"
                .into(),
        ));
    };
    let mut i = header_at + 1;
    while i < lines.len() && lines[i].trim_start().starts_with('|') {
        let n = i + 1;
        let cells = split_row(lines[i]);
        i += 1;
        if is_separator_row(&cells) {
            continue;
        }
        let cell = |c: usize| cells.get(c).cloned().unwrap_or_default();
        let id = track_id(&cell(c_track));
        let agent = unmark(&cell(c_agent));
        let beads: Vec<Bead> = words(&cell(c_beads))
            .into_iter()
            .map(|id| Bead {
                id,
                ..Default::default()
            })
            .collect();
        let scope: Vec<String> = words(&cell(c_scope));
        if beads.is_empty() {
            return Err(bad(n, format!("track {id} lists no beads")));
        }
        for b in &beads {
            origin.beads.entry(b.id.clone()).or_insert(n);
        }
        origin.tracks.insert(id.clone(), n);
        epic.tracks.push(Track {
            id,
            agent,
            description: None,
            scope,
            beads,
        });
    }
    if epic.tracks.is_empty() {
        return Err(bad(header_at + 1, "the tracks table has no rows".into()));
    }

    // `### Track N: Agent - description` sections, with the beads' titles.
    let mut current: Option<usize> = None;
    let mut last_bead: Option<(usize, usize)> = None;
    let mut in_deps = false;
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        if let Some((level, h)) = heading(raw) {
            last_bead = None;
            if level <= 2 {
                current = None;
                in_deps = h.to_ascii_lowercase().contains("dependencies");
                continue;
            }
            if level == 3 && h.to_ascii_lowercase().starts_with("track") {
                let (name, rest) = h.split_once(':').unwrap_or((h, ""));
                let id = track_id(name);
                let Some(t) = epic.tracks.iter().position(|t| t.id == id) else {
                    return Err(bad(n, format!("track {id} is not in the tracks table")));
                };
                let rest = rest.trim();
                let (agent, description) = rest
                    .split_once(" - ")
                    .or_else(|| rest.split_once(" — "))
                    .or_else(|| rest.split_once(" – "))
                    .unwrap_or((rest, ""));
                let agent = unmark(agent);
                let agent = agent.trim();
                if !agent.is_empty() && agent != epic.tracks[t].agent {
                    return Err(bad(
                        n,
                        format!(
                            "track {id}'s agent is {} in the tracks table, not {agent}",
                            epic.tracks[t].agent
                        ),
                    ));
                }
                if !description.trim().is_empty() {
                    epic.tracks[t].description = Some(description.trim().to_string());
                }
                current = Some(t);
            } else {
                current = None;
            }
            continue;
        }
        if in_deps {
            let l = unmark(&plain(raw));
            let lower = l.to_ascii_lowercase();
            if l.is_empty() || raw.trim_start().starts_with('|') {
                continue;
            }
            if matches!(lower.as_str(), "none" | "none." | "n/a" | "-") {
                continue;
            }
            if !raw.trim_start().starts_with(['-', '*', '+'])
                && !raw.trim_start().starts_with(|c: char| c.is_ascii_digit())
            {
                continue;
            }
            let dep = parse_dependency(&l).ok_or_else(|| {
                bad(
                    n,
                    format!(
                        "cannot read this dependency ({l:?}); write `Track 2 starts after bd-11` or `bd-20 depends on bd-11`"
                    ),
                )
            })?;
            epic.dependencies.push(dep);
            origin.deps.push(n);
            continue;
        }
        let Some(t) = current else { continue };
        let is_item = {
            let t = raw.trim_start();
            t.starts_with(['-', '*', '+'])
                || (t.starts_with(|c: char| c.is_ascii_digit()) && t.contains(['.', ')']))
        };
        let l = plain(raw);
        if is_item {
            let first = words(&l).into_iter().next().unwrap_or_default();
            let looks_like_bead = first.contains('-')
                && ids::is_valid(&first)
                && first.chars().any(|c| c.is_ascii_digit());
            if let Some(b) = epic.tracks[t].beads.iter().position(|b| b.id == first) {
                let title = l[l.find(&first).map(|p| p + first.len()).unwrap_or(0)..]
                    .trim_start_matches(|c: char| {
                        c.is_whitespace() || matches!(c, ':' | '-' | '—' | '–' | '*' | '`')
                    })
                    .trim();
                if !title.is_empty() {
                    epic.tracks[t].beads[b].title = Some(title.to_string());
                }
                origin.beads.insert(first, n);
                last_bead = Some((t, b));
                continue;
            }
            if looks_like_bead
                && epic
                    .tracks
                    .iter()
                    .flat_map(|t| &t.beads)
                    .any(|b| b.id == first)
            {
                return Err(bad(
                    n,
                    format!(
                        "{first} is listed under track {} but belongs to another track in the tracks table",
                        epic.tracks[t].id
                    ),
                ));
            }
            if looks_like_bead && l.contains(':') {
                return Err(bad(
                    n,
                    format!(
                        "{first} is listed under track {} but is not in its beads in the tracks table",
                        epic.tracks[t].id
                    ),
                ));
            }
            last_bead = None;
        } else if let Some((t, b)) = last_bead
            && raw.starts_with("  ")
            && !l.is_empty()
        {
            let bead = &mut epic.tracks[t].beads[b];
            match &mut bead.description {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&l);
                }
                None => bead.description = Some(l),
            }
        }
    }
    Ok((epic, origin))
}

/// One line of the "Cross-Track Dependencies" list.
fn parse_dependency(line: &str) -> Option<TrackDependency> {
    // Parenthesised asides (`(Track 1)`, `(GreenCastle)`) carry no meaning.
    let mut s = String::new();
    let mut depth = 0;
    for c in line.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = (depth - 1).max(0),
            _ if depth == 0 => s.push(c),
            _ => {}
        }
    }
    let w = words(&s.replace("->", " → "));
    let lower: Vec<String> = w.iter().map(|x| x.to_ascii_lowercase()).collect();
    let after_word = |from: usize| -> Option<String> {
        let k = lower[from..].iter().position(|x| x == "after")? + from;
        w.get(k + 1).cloned()
    };
    if lower.first().map(String::as_str) == Some("track") {
        let track = w.get(1)?.clone();
        let after = after_word(2)?;
        return Some(TrackDependency {
            track: Some(track),
            bead: None,
            after,
        });
    }
    let first = w.first()?.clone();
    let rest = lower.get(1..)?.join(" ");
    let second = |skip: usize| w.get(1 + skip).cloned();
    for (phrase, n) in [
        ("depends on ", 2),
        ("waits for ", 2),
        ("blocked by ", 2),
        ("needs ", 1),
        ("requires ", 1),
        ("after ", 1),
        ("starts after ", 2),
    ] {
        if rest.starts_with(phrase) {
            return Some(TrackDependency {
                track: None,
                bead: Some(first),
                after: second(n)?,
            });
        }
    }
    for (phrase, n) in [("blocks ", 1), ("before ", 1), ("unblocks ", 1)] {
        if rest.starts_with(phrase) {
            return Some(TrackDependency {
                track: None,
                bead: Some(second(n)?),
                after: first,
            });
        }
    }
    // `bd-11 → bd-20` (words() dropped the arrow): the left one first.
    if line.contains('→') || line.contains("->") {
        return Some(TrackDependency {
            track: None,
            bead: Some(second(0)?),
            after: first,
        });
    }
    None
}

/// Checks an epic: ids, beads, scopes, dependencies, cycles and overlapping
/// scopes of tracks that may run at the same time.
pub fn check(epic: &Epic, origin: &Origin) -> Result<()> {
    let ctx = |what: &str| {
        if origin.table > 0 {
            format!("line {}", origin.table)
        } else {
            what.to_string()
        }
    };
    ids::validate("epic id", &epic.id).map_err(|e| at(e.code, ctx("id"), e.message))?;
    if epic.tracks.is_empty() {
        return Err(at(
            ErrorCode::InvalidPlan,
            ctx("tracks"),
            "the epic has no tracks",
        ));
    }
    let mut track_ids = HashSet::new();
    let mut agents = HashSet::new();
    let mut bead_track: HashMap<&str, usize> = HashMap::new();
    let mut scopes: Vec<Vec<Glob>> = Vec::new();
    for (ti, t) in epic.tracks.iter().enumerate() {
        let place = origin.track(ti, t);
        ids::validate("track id", &t.id).map_err(|e| at(e.code, &place, e.message))?;
        ids::validate("agent name", &t.agent).map_err(|e| at(e.code, &place, e.message))?;
        if !track_ids.insert(t.id.as_str()) {
            return Err(at(
                ErrorCode::InvalidPlan,
                &place,
                format!("track {} appears twice", t.id),
            ));
        }
        if !agents.insert(t.agent.as_str()) {
            return Err(at(
                ErrorCode::InvalidPlan,
                &place,
                format!(
                    "agent {} works on two tracks; give each track its own agent",
                    t.agent
                ),
            ));
        }
        if t.scope.is_empty() {
            return Err(at(
                ErrorCode::InvalidPlan,
                &place,
                format!("track {} has no file scope", t.id),
            ));
        }
        let scope = Glob::parse_all(&t.scope).map_err(|e| at(e.code, &place, e.message))?;
        if t.beads.is_empty() {
            return Err(at(
                ErrorCode::InvalidPlan,
                &place,
                format!("track {} has no beads", t.id),
            ));
        }
        for (bi, b) in t.beads.iter().enumerate() {
            let place = origin.bead(ti, bi, b);
            ids::validate("bead id", &b.id).map_err(|e| at(e.code, &place, e.message))?;
            if let Some(other) = bead_track.insert(&b.id, ti) {
                return Err(at(
                    ErrorCode::DuplicateTaskId,
                    &place,
                    format!(
                        "bead {} appears twice (tracks {} and {})",
                        b.id, epic.tracks[other].id, t.id
                    ),
                ));
            }
            for f in &b.files {
                let g = Glob::parse(f).map_err(|e| at(e.code, &place, e.message))?;
                if !globs::covered_by(&scope, &g) {
                    return Err(at(
                        ErrorCode::OutsideScope,
                        &place,
                        format!(
                            "bead {} reserves {g}, which is outside track {}'s scope ({})",
                            b.id,
                            t.id,
                            t.scope.join(", ")
                        ),
                    ));
                }
            }
        }
        scopes.push(scope);
    }

    // Dependencies: what each bead waits for.
    let mut waits: HashMap<&str, Vec<(&str, Option<usize>)>> = HashMap::new();
    for t in &epic.tracks {
        for pair in t.beads.windows(2) {
            waits
                .entry(&pair[1].id)
                .or_default()
                .push((&pair[0].id, None));
        }
    }
    for (di, d) in epic.dependencies.iter().enumerate() {
        let place = origin.dep(di);
        let waiter = match (&d.track, &d.bead) {
            (Some(track), None) => {
                let t = epic.tracks.iter().find(|t| &t.id == track).ok_or_else(|| {
                    at(
                        ErrorCode::UnknownDependency,
                        &place,
                        format!("there is no track {track}"),
                    )
                })?;
                t.beads[0].id.as_str()
            }
            (None, Some(bead)) => {
                if !bead_track.contains_key(bead.as_str()) {
                    return Err(at(
                        ErrorCode::UnknownDependency,
                        &place,
                        format!("{bead} is not a bead of any track"),
                    ));
                }
                bead.as_str()
            }
            _ => {
                return Err(at(
                    ErrorCode::InvalidPlan,
                    &place,
                    "a dependency names either a track or a bead that waits, and the bead it waits for (\"after\")",
                ));
            }
        };
        if !bead_track.contains_key(d.after.as_str()) {
            return Err(at(
                ErrorCode::UnknownDependency,
                &place,
                format!("{} is not a bead of any track", d.after),
            ));
        }
        waits.entry(waiter).or_default().push((&d.after, Some(di)));
    }
    if let Some((cycle, dep)) = find_cycle(epic, &waits) {
        let place = match dep {
            Some(di) => origin.dep(di),
            None => ctx("dependencies"),
        };
        return Err(at(
            ErrorCode::DependencyCycle,
            place,
            format!("the dependencies form a cycle: {}", cycle.join(" → ")),
        ));
    }

    // Tracks that may run at the same time must not share files.
    let ancestors = |bead: &str| -> HashSet<String> {
        let mut seen = HashSet::new();
        let mut todo = vec![bead.to_string()];
        while let Some(b) = todo.pop() {
            for (w, _) in waits.get(b.as_str()).into_iter().flatten() {
                if seen.insert(w.to_string()) {
                    todo.push(w.to_string());
                }
            }
        }
        seen
    };
    for a in 0..epic.tracks.len() {
        for b in a + 1..epic.tracks.len() {
            let (ta, tb) = (&epic.tracks[a], &epic.tracks[b]);
            let Some((ga, gb)) = scopes[a]
                .iter()
                .flat_map(|x| scopes[b].iter().map(move |y| (x, y)))
                .find(|(x, y)| x.overlaps(y))
            else {
                continue;
            };
            let a_last = &ta.beads[ta.beads.len() - 1].id;
            let b_last = &tb.beads[tb.beads.len() - 1].id;
            let ordered = ancestors(&tb.beads[0].id).contains(a_last)
                || ancestors(&ta.beads[0].id).contains(b_last);
            if !ordered {
                return Err(at(
                    ErrorCode::ScopeOverlap,
                    origin.track(b, tb),
                    format!(
                        "tracks {} ({}) and {} ({}) may change the same files: {ga} overlaps {gb}; \
                         give them disjoint scopes, or order them (`Track {} starts after {a_last}`)",
                        ta.id, ta.agent, tb.id, tb.agent, tb.id
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A cycle in the waits graph, and the dependency (by index) on it, if any.
fn find_cycle<'a>(
    epic: &'a Epic,
    waits: &HashMap<&'a str, Vec<(&'a str, Option<usize>)>>,
) -> Option<(Vec<String>, Option<usize>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let all: Vec<&str> = epic
        .tracks
        .iter()
        .flat_map(|t| t.beads.iter().map(|b| b.id.as_str()))
        .collect();
    let mut mark: HashMap<&str, Mark> = all.iter().map(|b| (*b, Mark::New)).collect();
    for &start in &all {
        if mark[start] != Mark::New {
            continue;
        }
        // Iterative depth-first search; the stack holds (bead, next edge, via).
        let mut stack: Vec<(&str, usize, Option<usize>)> = vec![(start, 0, None)];
        mark.insert(start, Mark::Open);
        while let Some(&mut (node, ref mut next, _)) = stack.last_mut() {
            let edges = waits.get(node).map(Vec::as_slice).unwrap_or(&[]);
            if *next < edges.len() {
                let (to, dep) = edges[*next];
                *next += 1;
                match mark.get(to).copied() {
                    Some(Mark::New) => {
                        mark.insert(to, Mark::Open);
                        stack.push((to, 0, dep));
                    }
                    Some(Mark::Open) => {
                        let from = stack.iter().position(|(n, _, _)| *n == to).unwrap_or(0);
                        let dep = std::iter::once(dep)
                            .chain(stack[from + 1..].iter().map(|(_, _, d)| *d))
                            .flatten()
                            .next();
                        // Edges point from a bead to what it waits for; show
                        // the order of work instead.
                        let mut cycle: Vec<String> = stack[from..]
                            .iter()
                            .map(|(n, _, _)| n.to_string())
                            .collect();
                        cycle.push(to.to_string());
                        cycle.reverse();
                        return Some((cycle, dep));
                    }
                    _ => {}
                }
            } else {
                mark.insert(node, Mark::Done);
                stack.pop();
            }
        }
    }
    None
}

/// The plan's subtasks for a checked epic: one `agent.bead` task per bead,
/// waiting for the bead before it in its track and for its cross-track
/// dependencies.
pub fn compile(epic: &Epic) -> Vec<Subtask> {
    let mut out = Vec::new();
    for t in &epic.tracks {
        for (i, b) in t.beads.iter().enumerate() {
            let mut depends_on: Vec<String> = Vec::new();
            if i > 0 {
                depends_on.push(t.beads[i - 1].id.clone());
            }
            for d in &epic.dependencies {
                let waits = match (&d.track, &d.bead) {
                    (Some(track), _) => i == 0 && track == &t.id,
                    (None, Some(bead)) => bead == &b.id,
                    _ => false,
                };
                if waits && !depends_on.contains(&d.after) {
                    depends_on.push(d.after.clone());
                }
            }
            let params = serde_json::to_value(BeadTask {
                epic: epic.id.clone(),
                track: t.id.clone(),
                bead: b.id.clone(),
            })
            .ok()
            .and_then(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .unwrap_or_default();
            out.push(Subtask {
                id: b.id.clone(),
                capability: BEAD_CAPABILITY.to_string(),
                action: BEAD_ACTION.to_string(),
                depends_on,
                priority: Default::default(),
                timeout_ms: None,
                retries: Some(BEAD_RETRIES),
                params,
            });
        }
    }
    out
}

impl Epic {
    pub fn track(&self, id: &str) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// The track a bead belongs to.
    pub fn track_of(&self, bead: &str) -> Option<&Track> {
        self.tracks
            .iter()
            .find(|t| t.beads.iter().any(|b| b.id == bead))
    }

    pub fn bead(&self, id: &str) -> Option<(&Track, &Bead)> {
        self.tracks
            .iter()
            .find_map(|t| t.beads.iter().find(|b| b.id == id).map(|b| (t, b)))
    }

    /// Whether `agent` works on one of the tracks.
    pub fn has_agent(&self, agent: &str) -> bool {
        self.tracks.iter().any(|t| t.agent == agent)
    }

    /// The tracks whose first bead waits (directly) for `bead`.
    pub fn unblocked_by(&self, bead: &str) -> Vec<&Track> {
        self.tracks
            .iter()
            .filter(|t| {
                self.dependencies.iter().any(|d| {
                    d.after == bead
                        && (d.track.as_deref() == Some(t.id.as_str())
                            || d.bead.as_deref() == Some(t.beads[0].id.as_str()))
                })
            })
            .collect()
    }
}

/// A readable outline of an epic (`jetmesh plan check`).
pub fn describe(epic: &Epic) -> String {
    let mut s = format!("Epic {}", epic.id);
    if let Some(t) = &epic.title {
        s.push_str(&format!(": {t}"));
    }
    s.push('\n');
    for t in &epic.tracks {
        s.push_str(&format!(
            "\nTrack {} — {}{}\n  scope: {}\n",
            t.id,
            t.agent,
            t.description
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default(),
            t.scope.join(", ")
        ));
        for b in &t.beads {
            s.push_str(&format!(
                "  {} {}\n",
                b.id,
                b.title.as_deref().unwrap_or("")
            ));
        }
    }
    if !epic.dependencies.is_empty() {
        s.push_str("\nCross-track dependencies\n");
        for d in &epic.dependencies {
            match (&d.track, &d.bead) {
                (Some(t), _) => s.push_str(&format!("  track {t} starts after {}\n", d.after)),
                (None, Some(b)) => s.push_str(&format!("  {b} starts after {}\n", d.after)),
                _ => {}
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub const PLAN_MD: &str = include_str!("../../examples/execution-plan.md");

    fn md_err(text: &str) -> Error {
        match parse_markdown(text) {
            Ok((e, o)) => check(&e, &o).unwrap_err(),
            Err(e) => e,
        }
    }

    #[test]
    fn markdown_parses_to_the_json_form() {
        let (epic, origin) = parse_markdown(PLAN_MD).unwrap();
        check(&epic, &origin).unwrap();
        let json: Epic = serde_json::from_str(include_str!("../../examples/execution-plan.json"))
            .map(|v: Value| serde_json::from_value(v["epic"].clone()).unwrap())
            .unwrap();
        assert_eq!(epic, json);
        let yaml = parse_any(include_str!("../../examples/execution-plan.yaml"), None).unwrap();
        assert_eq!(yaml, json);
    }

    #[test]
    fn compiles_to_ordered_beads() {
        let (epic, _) = parse_markdown(PLAN_MD).unwrap();
        let tasks = compile(&epic);
        let deps = |id: &str| {
            tasks
                .iter()
                .find(|t| t.id == id)
                .unwrap()
                .depends_on
                .clone()
        };
        assert_eq!(deps("bd-10"), Vec::<String>::new());
        assert_eq!(deps("bd-11"), vec!["bd-10"]);
        assert_eq!(deps("bd-20"), vec!["bd-11"], "track 2 starts after bd-11");
        assert_eq!(deps("bd-30"), Vec::<String>::new());
        let t = &tasks[0];
        assert_eq!(
            (t.capability.as_str(), t.action.as_str()),
            ("agent", "bead")
        );
        assert_eq!(t.params["epic"], json!("E1"));
        assert_eq!(t.params["track"], json!("1"));
    }

    #[test]
    fn dependency_lines_read() {
        let d = |s: &str| parse_dependency(s).unwrap();
        assert_eq!(
            d("Track 2 (GreenCastle) starts after bd-11 (Track 1)"),
            TrackDependency {
                track: Some("2".into()),
                bead: None,
                after: "bd-11".into()
            }
        );
        assert_eq!(
            d("`bd-20` depends on `bd-11`"),
            TrackDependency {
                track: None,
                bead: Some("bd-20".into()),
                after: "bd-11".into()
            }
        );
        assert_eq!(d("bd-11 blocks bd-20").bead.as_deref(), Some("bd-20"));
        assert_eq!(d("bd-11 → bd-20").after, "bd-11");
        assert_eq!(d("bd-11 -> bd-20").bead.as_deref(), Some("bd-20"));
        assert!(parse_dependency("something vague").is_none());
    }

    #[test]
    fn bad_markdown_names_the_line() {
        let no_table = PLAN_MD.replace("## Tracks", "## Something else");
        let e = md_err(&no_table);
        assert_eq!(e.code, ErrorCode::InvalidPlan);
        assert!(e.message.contains("## Tracks"), "{}", e.message);
        assert!(e.message.starts_with("line "), "{}", e.message);

        let unknown = PLAN_MD.replace("Track 2 starts after bd-11", "Track 2 starts after bd-99");
        let e = md_err(&unknown);
        assert_eq!(e.code, ErrorCode::UnknownDependency);
        let line = PLAN_MD
            .lines()
            .position(|l| l.contains("Track 2 starts after bd-11"))
            .unwrap()
            + 1;
        assert!(
            e.message.starts_with(&format!("line {line}:")),
            "{}",
            e.message
        );
        assert!(e.message.contains("bd-99"), "{}", e.message);

        let cycle = PLAN_MD.replace(
            "- Track 2 starts after bd-11",
            "- Track 2 starts after bd-11\n- bd-10 depends on bd-21",
        );
        let e = md_err(&cycle);
        assert_eq!(e.code, ErrorCode::DependencyCycle, "{}", e.message);
        assert!(
            e.message.starts_with(&format!("line {}:", line + 1)),
            "{}",
            e.message
        );
        assert!(e.message.contains("bd-21 → bd-10"), "{}", e.message);

        let vague = PLAN_MD.replace("Track 2 starts after bd-11", "whenever it suits");
        let e = md_err(&vague);
        assert!(
            e.message.starts_with(&format!("line {line}:")),
            "{}",
            e.message
        );

        let no_epic = PLAN_MD.replace("Epic: E1", "");
        assert!(md_err(&no_epic).message.contains("Epic"));

        let bad_glob = PLAN_MD.replace("`docs/**`", "`../docs/**`");
        let e = md_err(&bad_glob);
        assert_eq!(e.code, ErrorCode::InvalidGlob);
        assert!(e.message.starts_with("line "), "{}", e.message);

        let stray = PLAN_MD.replace("- bd-30: Write the guide", "- bd-77: Write the guide");
        let e = md_err(&stray);
        assert!(e.message.contains("bd-77"), "{}", e.message);
    }

    #[test]
    fn overlapping_scopes_are_refused_unless_ordered() {
        let (mut epic, _) = parse_markdown(PLAN_MD).unwrap();
        epic.tracks[2].scope = vec!["docs/**".into(), "sdk/README.md".into()];
        let e = check(&epic, &Origin::default()).unwrap_err();
        assert_eq!(e.code, ErrorCode::ScopeOverlap);
        assert!(
            e.message.contains("sdk/**") && e.message.contains("sdk/README.md"),
            "{}",
            e.message
        );
        assert!(e.message.starts_with("tracks[2]"), "{}", e.message);
        // Ordered after track 1's last bead: allowed.
        epic.dependencies.push(TrackDependency {
            track: Some("3".into()),
            bead: None,
            after: "bd-11".into(),
        });
        check(&epic, &Origin::default()).unwrap();
    }

    #[test]
    fn json_errors_name_the_field() {
        let mut epic: Epic = serde_json::from_value(
            serde_json::from_str::<Value>(include_str!("../../examples/execution-plan.json"))
                .unwrap()["epic"]
                .clone(),
        )
        .unwrap();
        epic.tracks[1].beads[0].files = vec!["sdk/x.rs".into()];
        let e = validate(&epic).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutsideScope);
        assert!(e.message.starts_with("tracks[1].beads[0]"), "{}", e.message);
        epic.tracks[1].beads[0].files.clear();
        epic.tracks[1].agent = "has space".into();
        assert_eq!(validate(&epic).unwrap_err().code, ErrorCode::InvalidId);
    }

    #[test]
    fn formats_are_told_apart() {
        assert_eq!(format_of(None, "  {\"epic\":{}}"), Format::Json);
        assert_eq!(format_of(None, PLAN_MD), Format::Markdown);
        assert_eq!(format_of(None, "epic:\n  id: E1\n"), Format::Yaml);
        assert_eq!(format_of(Some("text/markdown"), "{"), Format::Markdown);
    }
}
