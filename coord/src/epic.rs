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
//! Markdown is read as CommonMark with GFM tables, so code blocks are not part
//! of the plan and `\|` is a pipe inside a table cell.
//!
//! Every error names where the problem is: `line 12: …` for markdown, a field
//! path (`tracks[1].scope[0]: …`) for JSON and YAML.

use crate::globs::{self, Glob};
use crate::wire::{Bead, BeadTask, Epic, Track, TrackDependency};
use jetmesh_shared::error::{Error, ErrorCode, Result};
use jetmesh_shared::ids;
use jetmesh_shared::wire::{Plan, SubmitRequest, Subtask};
use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::ops::Range;

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
    } else if blocks(text).iter().any(is_markdown_sign) {
        Format::Markdown
    } else {
        Format::Yaml
    }
}

/// A `## Tracks` heading, or an `Epic: E1` line (not the YAML key `epic:`
/// with a block under it).
fn is_markdown_sign(block: &Block) -> bool {
    match block {
        Block::Heading { .. } => block.tracks_line().is_some(),
        Block::Lines { lines, .. } => lines.iter().any(|(_, l)| match field(l) {
            Some((key, value)) => key == "epic" && !value.is_empty() && !value.starts_with('{'),
            None => false,
        }),
        _ => false,
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

/// A block of the markdown, in document order. Values are taken from the
/// source text, not the rendered one: scopes and descriptions are not prose
/// (`src/**/*.rs` would render as bold, and a description keeps its backticks).
enum Block<'a> {
    Heading {
        level: usize,
        text: &'a str,
        line: usize,
    },
    /// A paragraph outside lists, or a list item's own text (a nested item
    /// is a block of its own): its non-empty lines, trimmed, with their numbers.
    Lines {
        item: bool,
        lines: Vec<(usize, &'a str)>,
    },
    Table {
        line: usize,
        head: Vec<String>,
        rows: Vec<(usize, Vec<String>)>,
    },
}

impl Block<'_> {
    /// The line of a `## Tracks` heading.
    fn tracks_line(&self) -> Option<usize> {
        match self {
            Block::Heading {
                level: 2,
                text,
                line,
            } if text.to_ascii_lowercase().starts_with("tracks") => Some(*line),
            _ => None,
        }
    }
}

/// The blocks of a markdown text; code blocks and HTML blocks are left out.
fn blocks(text: &str) -> Vec<Block<'_>> {
    let mut r = Reader {
        text,
        line_starts: std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect(),
        out: Vec::new(),
        items: Vec::new(),
        run: None,
    };
    let mut row = Vec::new();
    let mut in_code = false;
    let options = Options::ENABLE_TABLES | Options::ENABLE_TASKLISTS;
    for (event, range) in Parser::new_ext(text, options).into_offset_iter() {
        match event {
            Event::Start(Tag::CodeBlock(_) | Tag::HtmlBlock) => {
                r.end_run();
                in_code = true;
            }
            Event::End(TagEnd::CodeBlock | TagEnd::HtmlBlock) => in_code = false,
            _ if in_code => {}
            Event::Text(_)
            | Event::Code(_)
            | Event::InlineMath(_)
            | Event::DisplayMath(_)
            | Event::InlineHtml(_)
            | Event::FootnoteReference(_)
            | Event::SoftBreak
            | Event::HardBreak => r.extend_run(range),
            Event::Start(ref tag) if is_inline(tag.to_end()) => r.extend_run(range),
            Event::End(tag) if is_inline(tag) => {}
            // `- [ ] bd-10: …`: the checkbox is not part of the item's text.
            Event::TaskListMarker(_) => {}
            Event::Start(Tag::Item) => {
                r.end_run();
                r.items.push(r.out.len());
                r.out.push(Block::Lines {
                    item: true,
                    lines: Vec::new(),
                });
            }
            Event::End(TagEnd::Item) => {
                r.end_run();
                r.items.pop();
            }
            Event::End(TagEnd::Heading(level)) => {
                let heading = Block::Heading {
                    level: level as usize,
                    text: r.run.take().map_or("", |run| text[run].trim()),
                    line: r.line(range.start),
                };
                r.out.push(heading);
            }
            Event::Start(Tag::Table(_)) => {
                r.end_run();
                let table = Block::Table {
                    line: r.line(range.start),
                    head: Vec::new(),
                    rows: Vec::new(),
                };
                r.out.push(table);
            }
            // GFM: `\|` is a pipe inside the cell, code spans included.
            Event::End(TagEnd::TableCell) => {
                r.run = None;
                row.push(text[range].trim().replace("\\|", "|"));
            }
            Event::End(TagEnd::TableHead) => {
                if let Some(Block::Table { head, .. }) = r.out.last_mut() {
                    *head = std::mem::take(&mut row);
                }
            }
            Event::End(TagEnd::TableRow) => {
                let line = r.line(range.start);
                if let Some(Block::Table { rows, .. }) = r.out.last_mut() {
                    rows.push((line, std::mem::take(&mut row)));
                }
            }
            _ => r.end_run(),
        }
    }
    r.end_run();
    r.out
}

struct Reader<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    out: Vec<Block<'a>>,
    /// Open list items, as indexes into `out`.
    items: Vec<usize>,
    /// The inline text read since the last block boundary.
    run: Option<Range<usize>>,
}

impl<'a> Reader<'a> {
    /// The 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset)
    }

    fn extend_run(&mut self, range: Range<usize>) {
        // An emphasis starts before, and ends after, the text inside it.
        self.run = Some(match self.run.take() {
            Some(run) => run.start..run.end.max(range.end),
            None => range,
        });
    }

    /// Adds the run's lines to the open list item, or as a paragraph.
    fn end_run(&mut self) {
        let Some(run) = self.run.take() else { return };
        let first = self.line(run.start);
        let lines = self.text[run]
            .lines()
            .enumerate()
            .map(|(i, l)| (first + i, l.trim()))
            .filter(|(_, l)| !l.is_empty());
        match self.items.last().map(|&i| &mut self.out[i]) {
            Some(Block::Lines { lines: own, .. }) => own.extend(lines),
            _ => self.out.push(Block::Lines {
                item: false,
                lines: lines.collect(),
            }),
        }
    }
}

fn is_inline(tag: TagEnd) -> bool {
    matches!(
        tag,
        TagEnd::Emphasis
            | TagEnd::Strong
            | TagEnd::Strikethrough
            | TagEnd::Superscript
            | TagEnd::Subscript
            | TagEnd::Link
            | TagEnd::Image
    )
}

/// A `Key: value` line (`**Epic**: E1`), its key lowercased.
fn field(line: &str) -> Option<(String, String)> {
    let l = unmark(line);
    let (key, value) = l.split_once(':')?;
    Some((key.trim().to_ascii_lowercase(), value.trim().to_string()))
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
    // A separator inside `{…}` or `[…]` belongs to a glob (`src/{a,b}/**`).
    let mut depth = 0usize;
    s.split(|c: char| {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        depth == 0 && (c.is_whitespace() || matches!(c, ',' | '→' | ';'))
    })
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
    let blocks = blocks(text);
    let mut epic = Epic::default();
    let mut origin = Origin::default();
    let bad = |n: usize, msg: String| at(ErrorCode::InvalidPlan, format!("line {n}"), msg);

    // Header fields, before the first section.
    let mut epic_line = 0;
    for block in blocks
        .iter()
        .take_while(|b| !matches!(b, Block::Heading { level: 2, .. }))
    {
        match block {
            Block::Heading {
                level: 1, text: h, ..
            } if epic.title.is_none() => {
                let title = h
                    .strip_prefix("Execution Plan:")
                    .or_else(|| h.strip_prefix("Execution plan:"))
                    .unwrap_or(h)
                    .trim();
                epic.title = Some(title.to_string());
            }
            Block::Lines { lines, .. } => {
                for &(n, line) in lines {
                    let Some((key, value)) = field(line) else {
                        continue;
                    };
                    match key.as_str() {
                        "epic" | "epic id" if epic_line == 0 => {
                            let id = value.split_whitespace().next().unwrap_or("").to_string();
                            ids::validate("epic id", &id).map_err(|e| bad(n, e.message))?;
                            epic.id = id;
                            epic_line = n;
                        }
                        "workdir" | "working directory" if epic.workdir.is_none() => {
                            epic.workdir = Some(value)
                        }
                        "command" | "agent command" if epic.command.is_none() => {
                            epic.command = Some(value)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if epic_line == 0 {
        return Err(Error::new(
            ErrorCode::InvalidPlan,
            "line 1: no `Epic: <id>` line; the plan must name its epic",
        ));
    }

    // The tracks table: the first table after `## Tracks`, before any other heading.
    let (tracks_at, tracks_line) = blocks
        .iter()
        .enumerate()
        .find_map(|(i, b)| Some((i, b.tracks_line()?)))
        .ok_or_else(|| {
            bad(
                text.lines().count().max(1),
                "no `## Tracks` section with the table `| Track | Agent | Beads (in order) | File Scope |`".into(),
            )
        })?;
    let Some(Block::Table {
        line: table_line,
        head,
        rows,
    }) = blocks[tracks_at + 1..]
        .iter()
        .find(|b| matches!(b, Block::Table { .. } | Block::Heading { .. }))
    else {
        return Err(bad(
            tracks_line,
            "`## Tracks` has no table; expected `| Track | Agent | Beads (in order) | File Scope |`"
                .into(),
        ));
    };
    origin.table = *table_line;
    let header: Vec<String> = head.iter().map(|c| c.to_ascii_lowercase()).collect();
    let col = |name: &str| header.iter().position(|c| c.contains(name));
    let (Some(c_track), Some(c_agent), Some(c_beads), Some(c_scope)) =
        (col("track"), col("agent"), col("bead"), col("scope"))
    else {
        return Err(bad(
            *table_line,
            "the tracks table needs the columns Track, Agent, Beads (in order) and File Scope"
                .into(),
        ));
    };
    for &(n, ref cells) in rows {
        let cell = |c: usize| cells.get(c).map(String::as_str).unwrap_or_default();
        let id = track_id(cell(c_track));
        let agent = unmark(cell(c_agent));
        let beads: Vec<Bead> = words(cell(c_beads))
            .into_iter()
            .map(|id| Bead {
                id,
                ..Default::default()
            })
            .collect();
        let scope: Vec<String> = words(cell(c_scope));
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
        return Err(bad(*table_line, "the tracks table has no rows".into()));
    }

    // `### Track N: Agent - description` sections, with the beads' titles,
    // and the cross-track dependency list.
    let mut current: Option<usize> = None;
    let mut in_deps = false;
    for block in &blocks {
        let lines = match block {
            Block::Heading {
                level,
                text: h,
                line: n,
            } => {
                current = None;
                if *level <= 2 {
                    in_deps = h.to_ascii_lowercase().contains("dependencies");
                } else if *level == 3 && h.to_ascii_lowercase().starts_with("track") {
                    current = Some(track_section(&mut epic, h, *n)?);
                }
                continue;
            }
            Block::Lines { item: true, lines } => lines,
            _ => continue,
        };
        let Some((&(n, first_line), rest)) = lines.split_first() else {
            continue;
        };
        if in_deps {
            // An item may wrap onto several lines.
            let l = unmark(&lines.iter().map(|(_, l)| *l).collect::<Vec<_>>().join(" "));
            if matches!(
                l.to_ascii_lowercase().as_str(),
                "" | "none" | "none." | "n/a" | "-"
            ) {
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
        let first = words(first_line).into_iter().next().unwrap_or_default();
        if let Some(b) = epic.tracks[t].beads.iter().position(|b| b.id == first) {
            let after_id = first_line.find(&first).map_or(0, |p| p + first.len());
            let title = first_line[after_id..]
                .trim_start_matches(|c: char| {
                    c.is_whitespace() || matches!(c, ':' | '-' | '—' | '–' | '*' | '`')
                })
                .trim();
            let bead = &mut epic.tracks[t].beads[b];
            if !title.is_empty() {
                bead.title = Some(title.to_string());
            }
            // The item's other lines (indented under its first) describe the bead.
            if !rest.is_empty() {
                let description: Vec<&str> = rest.iter().map(|(_, l)| *l).collect();
                bead.description = Some(description.join("\n"));
            }
            origin.beads.insert(first, n);
            continue;
        }
        let looks_like_bead = first.contains('-')
            && ids::is_valid(&first)
            && first.chars().any(|c| c.is_ascii_digit());
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
        if looks_like_bead && first_line.contains(':') {
            return Err(bad(
                n,
                format!(
                    "{first} is listed under track {} but is not in its beads in the tracks table",
                    epic.tracks[t].id
                ),
            ));
        }
    }
    Ok((epic, origin))
}

/// Reads a `### Track N: Agent - description` heading at line `n` into its
/// track, and returns the track's index.
fn track_section(epic: &mut Epic, h: &str, n: usize) -> Result<usize> {
    let bad = |msg: String| at(ErrorCode::InvalidPlan, format!("line {n}"), msg);
    let (name, rest) = h.split_once(':').unwrap_or((h, ""));
    let id = track_id(name);
    let Some(t) = epic.tracks.iter().position(|t| t.id == id) else {
        return Err(bad(format!("track {id} is not in the tracks table")));
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
        return Err(bad(format!(
            "track {id}'s agent is {} in the tracks table, not {agent}",
            epic.tracks[t].agent
        )));
    }
    if !description.trim().is_empty() {
        epic.tracks[t].description = Some(description.trim().to_string());
    }
    Ok(t)
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
                session: None,
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

    /// The 1-based line of the first line of `text` that contains `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    fn json_epic(text: &str) -> Epic {
        let v: Value = serde_json::from_str(text).unwrap();
        serde_json::from_value(v["epic"].clone()).unwrap()
    }

    #[test]
    fn every_example_plan_reads_as_its_json_twin() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut read = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("md") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let (epic, origin) =
                parse_markdown(&text).unwrap_or_else(|e| panic!("{path:?}: {e:?}"));
            check(&epic, &origin).unwrap_or_else(|e| panic!("{path:?}: {e:?}"));
            let twin = path.with_extension("json");
            if let Ok(json) = std::fs::read_to_string(&twin) {
                assert_eq!(epic, json_epic(&json), "{path:?} and {twin:?}");
            }
            read += 1;
        }
        assert!(read > 0, "no markdown plan in {dir:?}");
    }

    #[test]
    fn code_blocks_are_not_part_of_the_plan() {
        let example = "\
An example of the layout:

```markdown
Epic: E9

## Tracks

| Track | Agent | Beads (in order) | File Scope |
|-------|-------|------------------|------------|
| 9 | Ghost | bd-90 | `ghost/**` |
```
";
        let expected = parse_markdown(PLAN_MD).unwrap().0;
        let text = PLAN_MD.replace("## Tracks", &format!("{example}\n## Tracks"));
        assert_eq!(parse_markdown(&text).unwrap().0, expected);

        let in_section = PLAN_MD.replace(
            "- bd-30: Write the guide",
            "- bd-30: Write the guide\n\n```\n- bd-31: not a bead\n### Track 9\n```",
        );
        assert_eq!(parse_markdown(&in_section).unwrap().0, expected);

        let in_deps = PLAN_MD.replace(
            "- Track 2 starts after bd-11 (Track 1)",
            "- Track 2 starts after bd-11 (Track 1)\n\n~~~\n- whenever it suits\n~~~",
        );
        assert_eq!(parse_markdown(&in_deps).unwrap().0, expected);

        // The only tracks table is inside a fence: there is none.
        let table = PLAN_MD
            .lines()
            .filter(|l| l.starts_with('|'))
            .collect::<Vec<_>>()
            .join("\n");
        let fenced = PLAN_MD.replace(&table, &format!("```\n{table}\n```"));
        let e = md_err(&fenced);
        assert!(
            e.message.starts_with(&format!(
                "line {}: `## Tracks` has no table",
                line_of(PLAN_MD, "## Tracks")
            )),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_comma_inside_braces_belongs_to_its_glob() {
        let md = "Epic: E1\n\n## Tracks\n\n| Track | Agent | Beads (in order) | File Scope |\n|---|---|---|---|\n| 1 | BlueLake | bd-1 | `src/{a,b}/**`, docs/** |\n";
        let (e, _) = parse_markdown(md).unwrap();
        assert_eq!(e.tracks[0].scope, ["src/{a,b}/**", "docs/**"]);
    }

    #[test]
    fn an_escaped_pipe_belongs_to_its_cell() {
        let text = PLAN_MD.replace("`docs/**`", r"`docs/{a\|b}/**`, docs/x\|y.md");
        let (epic, origin) = parse_markdown(&text).unwrap();
        check(&epic, &origin).unwrap();
        // The glob is read as written, less the escape: `{a|b}` is one
        // alternative, a directory named `a|b`.
        assert_eq!(epic.tracks[2].scope, ["docs/{a|b}/**", "docs/x|y.md"]);
        let glob = Glob::parse(&epic.tracks[2].scope[0]).unwrap();
        assert!(glob.matches("docs/a|b/guide.md"));
        assert!(!glob.matches("docs/a/guide.md"));
        assert_eq!(
            epic.tracks[2].agent, "RedStone",
            "the columns stay in place"
        );
    }

    #[test]
    fn cells_and_descriptions_are_read_as_written() {
        let text = PLAN_MD
            .replace("`sdk/**`", "sdk/**/*.rs, sdk/**/*.md")
            .replace("- bd-11: Refresh", "- [ ] bd-11: Refresh")
            .replace(
                "  A `Token` with its expiry, in sdk/token.txt.",
                "  A `Token` with *its* expiry,\n  in sdk/token.txt.\n\n  See __notes__.",
            );
        let (epic, _) = parse_markdown(&text).unwrap();
        assert_eq!(epic.tracks[0].scope, ["sdk/**/*.rs", "sdk/**/*.md"]);
        let beads = &epic.tracks[0].beads;
        assert_eq!(
            beads[0].description.as_deref(),
            Some("A `Token` with *its* expiry,\nin sdk/token.txt.\nSee __notes__.")
        );
        assert_eq!(
            beads[1].title.as_deref(),
            Some("Refresh tokens before they expire")
        );
    }

    #[test]
    fn a_missing_tracks_table_names_a_line() {
        let no_section = PLAN_MD.replace("## Tracks", "## Overview");
        let e = md_err(&no_section);
        assert!(
            e.message.starts_with(&format!(
                "line {}: no `## Tracks` section",
                PLAN_MD.lines().count()
            )),
            "{}",
            e.message
        );

        let heading = line_of(PLAN_MD, "## Tracks");
        let table = PLAN_MD
            .lines()
            .filter(|l| l.starts_with('|'))
            .collect::<Vec<_>>()
            .join("\n");
        let no_table = PLAN_MD.replace(&table, "The tracks are to be decided.");
        let e = md_err(&no_table);
        assert!(
            e.message
                .starts_with(&format!("line {heading}: `## Tracks` has no table")),
            "{}",
            e.message
        );

        // A table after the next heading is not the tracks table.
        let later = PLAN_MD.replace(&table, &format!("## Later\n\n{table}"));
        let e = md_err(&later);
        assert!(
            e.message.starts_with(&format!("line {heading}:")),
            "{}",
            e.message
        );

        let columns = PLAN_MD.replace("| File Scope |", "| Files |");
        let e = md_err(&columns);
        assert!(
            e.message
                .starts_with(&format!("line {}: the tracks table needs", heading + 2)),
            "{}",
            e.message
        );
    }

    #[test]
    fn bad_dependency_lines_name_their_line() {
        let deps = "- Track 2 starts after bd-11 (Track 1)";
        let at_line = line_of(PLAN_MD, deps);
        let err_line = |list: &str| {
            let e = md_err(&PLAN_MD.replace(deps, list));
            assert_eq!(e.code, ErrorCode::InvalidPlan, "{}", e.message);
            assert!(
                e.message.contains("cannot read this dependency"),
                "{}",
                e.message
            );
            e.message.split(':').next().unwrap().to_string()
        };
        assert_eq!(
            err_line("- Track 2 starts after bd-11\n- whenever it suits\n- bd-30 needs bd-21"),
            format!("line {}", at_line + 1)
        );
        assert_eq!(
            err_line("1. Track 2 starts after bd-11\n\n2. bd-30 needs bd-21\n\n3. soon"),
            format!("line {}", at_line + 4)
        );
        assert_eq!(
            err_line("- Track 2 starts after bd-11\n  - because"),
            format!("line {}", at_line + 1)
        );

        // Paragraphs around the list are prose; `None`, and an item that
        // wraps, are read.
        let text = PLAN_MD.replace(
            deps,
            "Track 2 waits for the SDK.\n\n- Track 2 starts\n  after bd-11\n- None",
        );
        let (epic, origin) = parse_markdown(&text).unwrap();
        assert_eq!(
            epic.dependencies,
            parse_markdown(PLAN_MD).unwrap().0.dependencies
        );
        assert_eq!(origin.deps, [at_line + 2]);
    }

    #[test]
    fn formats_are_told_apart() {
        assert_eq!(format_of(None, "  {\"epic\":{}}"), Format::Json);
        assert_eq!(format_of(None, PLAN_MD), Format::Markdown);
        assert_eq!(format_of(None, "epic:\n  id: E1\n"), Format::Yaml);
        assert_eq!(format_of(Some("text/markdown"), "{"), Format::Markdown);
        assert_eq!(format_of(None, "Intro\n\n**Epic**: E1\n"), Format::Markdown);
        assert_eq!(format_of(None, "```\nEpic: E1\n```\n"), Format::Yaml);
    }
}
