//! File globs for track scopes and file reservations, and the two questions
//! coordination asks of them that a matcher alone cannot answer: can two globs
//! match the same path ([`Glob::overlaps`]), and does every path one glob
//! matches also match another ([`Glob::covers`]).
//!
//! Syntax (relative paths, `/` between segments): `*` (any run of characters
//! inside one segment), `?` (one character), `[abc]`, `[a-z]`, `[!a-z]`, a
//! whole segment `**` (any number of segments, none included), and `{a,b}`
//! alternatives. A trailing `/` means the whole directory (`src/` = `src/**`).
//! Absolute paths, `..`, empty segments and backslashes are refused: a scope
//! is always inside the working tree.
//!
//! Both questions are answered exactly for overlap (a search over pairs of
//! positions, as for the product of two automata) and soundly for cover: a
//! `yes` is always right; a `no` can be too strict for unusual patterns, and
//! the error then says which pattern was not covered.

use jetmesh_shared::error::{Error, ErrorCode, Result};
use std::fmt;

/// The longest glob accepted, in bytes.
pub const MAX_GLOB_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Any,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// `**`: zero or more whole segments.
    Globstar,
    Pattern(Vec<Tok>),
}

/// One alternative of a glob, after `{a,b}` expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alt(Vec<Seg>);

/// A parsed glob. Its text is kept as written, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    alts: Vec<Alt>,
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Glob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

fn invalid(glob: &str, why: impl fmt::Display) -> Error {
    Error::new(
        ErrorCode::InvalidGlob,
        format!("invalid glob {glob:?}: {why}"),
    )
}

impl Glob {
    /// Parses and checks a glob.
    /// Errors: `invalid_glob`, naming the glob and what is wrong with it.
    pub fn parse(text: &str) -> Result<Glob> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(invalid(text, "it is empty"));
        }
        if trimmed.len() > MAX_GLOB_LEN {
            // Cut by characters: byte 32 may fall inside one.
            let head: String = trimmed.chars().take(32).collect();
            return Err(invalid(&head, format!("longer than {MAX_GLOB_LEN} bytes")));
        }
        if trimmed.starts_with('/') {
            return Err(invalid(
                trimmed,
                "absolute paths are not allowed; write it relative to the working tree",
            ));
        }
        if trimmed.contains('\\') {
            return Err(invalid(
                trimmed,
                "use / between directories (backslashes are not allowed)",
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(invalid(trimmed, "control characters are not allowed"));
        }
        let mut full = trimmed.trim_start_matches("./").to_string();
        if full.ends_with('/') {
            full.push_str("**");
        }
        let expanded = expand_braces(&full).map_err(|why| invalid(trimmed, why))?;
        if expanded.len() > 64 {
            return Err(invalid(trimmed, "more than 64 alternatives"));
        }
        let mut alts = Vec::with_capacity(expanded.len());
        for alt in expanded {
            alts.push(parse_alt(&alt).map_err(|why| invalid(trimmed, why))?);
        }
        Ok(Glob {
            text: trimmed.to_string(),
            alts,
        })
    }

    /// Parses a list of globs, failing on the first invalid one.
    pub fn parse_all<S: AsRef<str>>(texts: &[S]) -> Result<Vec<Glob>> {
        texts.iter().map(|t| Glob::parse(t.as_ref())).collect()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the relative path `path` (`src/lib.rs`) matches.
    pub fn matches(&self, path: &str) -> bool {
        let segs: Vec<Seg> = path
            .trim_start_matches("./")
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| Seg::Pattern(s.chars().map(Tok::Lit).collect()))
            .collect();
        let lit = Alt(segs);
        self.alts.iter().any(|a| covers_segs(&a.0, &lit.0))
    }

    /// Whether some path matches both globs.
    pub fn overlaps(&self, other: &Glob) -> bool {
        self.alts
            .iter()
            .any(|a| other.alts.iter().any(|b| overlap_segs(&a.0, &b.0)))
    }

    /// Whether every path `inner` matches also matches `self` (sound: `true`
    /// is always right).
    pub fn covers(&self, inner: &Glob) -> bool {
        inner
            .alts
            .iter()
            .all(|n| self.alts.iter().any(|o| covers_segs(&o.0, &n.0)))
    }
}

/// Whether `inner` is covered by one of `scope`.
pub fn covered_by(scope: &[Glob], inner: &Glob) -> bool {
    // Each alternative may be covered by a different scope glob.
    inner.alts.iter().all(|n| {
        scope
            .iter()
            .any(|s| s.alts.iter().any(|o| covers_segs(&o.0, &n.0)))
    })
}

/// Whether `path` matches one of `globs`.
pub fn any_matches(globs: &[Glob], path: &str) -> bool {
    globs.iter().any(|g| g.matches(path))
}

fn expand_braces(s: &str) -> std::result::Result<Vec<String>, String> {
    let Some(open) = s.find('{') else {
        if s.contains('}') {
            return Err("a } without its {".into());
        }
        return Ok(vec![s.to_string()]);
    };
    let mut depth = 0;
    let mut close = None;
    let mut commas = Vec::new();
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            ',' if depth == 1 => commas.push(open + i),
            _ => {}
        }
    }
    let close = close.ok_or("a { without its }")?;
    let (head, tail) = (&s[..open], &s[close + 1..]);
    let mut parts = Vec::new();
    let mut start = open + 1;
    for c in commas.into_iter().chain(std::iter::once(close)) {
        parts.push(&s[start..c]);
        start = c + 1;
    }
    let mut out = Vec::new();
    for p in parts {
        for rest in expand_braces(&format!("{head}{p}{tail}"))? {
            out.push(rest);
            if out.len() > 64 {
                return Err("more than 64 alternatives".into());
            }
        }
    }
    Ok(out)
}

fn parse_alt(s: &str) -> std::result::Result<Alt, String> {
    let mut segs = Vec::new();
    for seg in s.split('/') {
        match seg {
            "" => return Err("an empty directory name (//)".into()),
            "." => continue,
            ".." => return Err(".. is not allowed; a scope stays inside the working tree".into()),
            "**" => {
                // `a/**/**/b` is `a/**/b`.
                if segs.last() != Some(&Seg::Globstar) {
                    segs.push(Seg::Globstar);
                }
            }
            _ if seg.contains("**") => {
                return Err(format!(
                    "** must be a whole directory name (as in a/**/b), not part of {seg:?}"
                ));
            }
            _ => segs.push(Seg::Pattern(parse_seg(seg)?)),
        }
    }
    if segs.is_empty() {
        return Err("it names no file".into());
    }
    Ok(Alt(segs))
}

fn parse_seg(seg: &str) -> std::result::Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = seg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                if toks.last() != Some(&Tok::Star) {
                    toks.push(Tok::Star);
                }
            }
            '?' => toks.push(Tok::Any),
            '[' => {
                let negated = matches!(chars.peek(), Some('!') | Some('^'));
                if negated {
                    chars.next();
                }
                let mut ranges = Vec::new();
                let mut closed = false;
                let mut first = true;
                while let Some(c) = chars.next() {
                    if c == ']' && !first {
                        closed = true;
                        break;
                    }
                    first = false;
                    if chars.peek() == Some(&'-') {
                        chars.next();
                        match chars.next() {
                            Some(']') => {
                                ranges.push((c, c));
                                ranges.push(('-', '-'));
                                closed = true;
                                break;
                            }
                            Some(end) if end >= c => ranges.push((c, end)),
                            Some(end) => return Err(format!("the range {c}-{end} is backwards")),
                            None => break,
                        }
                    } else {
                        ranges.push((c, c));
                    }
                }
                if !closed {
                    return Err("a [ without its ]".into());
                }
                toks.push(Tok::Class { negated, ranges });
            }
            ']' => return Err("a ] without its [".into()),
            c => toks.push(Tok::Lit(c)),
        }
    }
    Ok(toks)
}

impl Tok {
    fn class_has(negated: bool, ranges: &[(char, char)], c: char) -> bool {
        ranges.iter().any(|&(a, b)| a <= c && c <= b) != negated
    }

    /// Whether some character matches both single-character tokens.
    fn compatible(&self, other: &Tok) -> bool {
        use Tok::*;
        match (self, other) {
            (Star, _) | (_, Star) => true,
            (Lit(a), Lit(b)) => a == b,
            (Lit(c), Any) | (Any, Lit(c)) => *c != '/',
            (Lit(c), Class { negated, ranges }) | (Class { negated, ranges }, Lit(c)) => {
                Tok::class_has(*negated, ranges, *c)
            }
            (Any, Class { negated, ranges }) | (Class { negated, ranges }, Any) => {
                *negated || !ranges.is_empty()
            }
            (
                Class {
                    negated: n1,
                    ranges: r1,
                },
                Class {
                    negated: n2,
                    ranges: r2,
                },
            ) => match (n1, n2) {
                (true, true) => true,
                (false, false) => r1
                    .iter()
                    .any(|&(a, b)| r2.iter().any(|&(c, d)| a <= d && c <= b)),
                (false, true) => some_outside(r1, r2),
                (true, false) => some_outside(r2, r1),
            },
            (Any, Any) => true,
        }
    }

    /// Whether every character `inner` matches also matches `self`.
    fn covers(&self, inner: &Tok) -> bool {
        use Tok::*;
        match (self, inner) {
            (Star, _) => true,
            (_, Star) => false,
            (Any, _) => true,
            (Lit(a), Lit(b)) => a == b,
            (Lit(_), _) => false,
            (Class { negated, ranges }, Lit(c)) => Tok::class_has(*negated, ranges, *c),
            (Class { .. }, Any) => false,
            (
                Class {
                    negated: false,
                    ranges: outer,
                },
                Class {
                    negated: false,
                    ranges: inner,
                },
            ) => inner
                .iter()
                .all(|&(a, b)| (a..=b).all(|c| Tok::class_has(false, outer, c))),
            (
                Class {
                    negated: true,
                    ranges: outer,
                },
                Class {
                    negated: false,
                    ranges: inner,
                },
            ) => !inner
                .iter()
                .any(|&(a, b)| outer.iter().any(|&(c, d)| a <= d && c <= b)),
            (
                Class {
                    negated: true,
                    ranges: outer,
                },
                Class {
                    negated: true,
                    ranges: inner,
                },
            ) => outer
                .iter()
                .all(|&(a, b)| (a..=b).all(|c| Tok::class_has(false, inner, c))),
            (Class { negated: false, .. }, Class { negated: true, .. }) => false,
        }
    }
}

/// Whether some character of the ranges `pos` lies outside every range of `neg`.
fn some_outside(pos: &[(char, char)], neg: &[(char, char)]) -> bool {
    pos.iter().any(|&(a, b)| {
        std::iter::once(a)
            .chain(
                neg.iter()
                    .filter_map(|&(_, d)| char::from_u32(d as u32 + 1)),
            )
            .filter(|c| a <= *c && *c <= b)
            .any(|c| !Tok::class_has(false, neg, c))
    })
}

/// A search over pairs of positions: `step(i, j)` lists the pairs reachable
/// from `(i, j)`; the answer is whether `(la, lb)` is reachable from `(0, 0)`.
fn reachable(la: usize, lb: usize, step: impl Fn(usize, usize, &mut Vec<(usize, usize)>)) -> bool {
    let mut seen = vec![false; (la + 1) * (lb + 1)];
    let mut todo = vec![(0, 0)];
    let mut next = Vec::new();
    while let Some((i, j)) = todo.pop() {
        let k = i * (lb + 1) + j;
        if seen[k] {
            continue;
        }
        seen[k] = true;
        if (i, j) == (la, lb) {
            return true;
        }
        next.clear();
        step(i, j, &mut next);
        todo.extend(next.iter().filter(|&&(i, j)| i <= la && j <= lb));
    }
    false
}

fn overlap_toks(a: &[Tok], b: &[Tok]) -> bool {
    reachable(a.len(), b.len(), |i, j, out| {
        let (x, y) = (a.get(i), b.get(j));
        if x == Some(&Tok::Star) {
            out.push((i + 1, j));
            if y.is_some() {
                out.push((i, j + 1));
            }
        }
        if y == Some(&Tok::Star) {
            out.push((i, j + 1));
            if x.is_some() {
                out.push((i + 1, j));
            }
        }
        if let (Some(x), Some(y)) = (x, y)
            && x != &Tok::Star
            && y != &Tok::Star
            && x.compatible(y)
        {
            out.push((i + 1, j + 1));
        }
    })
}

fn covers_toks(outer: &[Tok], inner: &[Tok]) -> bool {
    reachable(outer.len(), inner.len(), |i, j, out| {
        match (outer.get(i), inner.get(j)) {
            (Some(Tok::Star), n) => {
                out.push((i + 1, j));
                if n.is_some() {
                    out.push((i, j + 1));
                }
            }
            (Some(o), Some(n)) if o.covers(n) => out.push((i + 1, j + 1)),
            _ => {}
        }
    })
}

fn overlap_segs(a: &[Seg], b: &[Seg]) -> bool {
    reachable(a.len(), b.len(), |i, j, out| {
        let (x, y) = (a.get(i), b.get(j));
        if x == Some(&Seg::Globstar) {
            out.push((i + 1, j));
            if y.is_some() {
                out.push((i, j + 1));
            }
        }
        if y == Some(&Seg::Globstar) {
            out.push((i, j + 1));
            if x.is_some() {
                out.push((i + 1, j));
            }
        }
        if let (Some(Seg::Pattern(x)), Some(Seg::Pattern(y))) = (x, y)
            && overlap_toks(x, y)
        {
            out.push((i + 1, j + 1));
        }
    })
}

fn covers_segs(outer: &[Seg], inner: &[Seg]) -> bool {
    reachable(outer.len(), inner.len(), |i, j, out| {
        match (outer.get(i), inner.get(j)) {
            (Some(Seg::Globstar), n) => {
                out.push((i + 1, j));
                if n.is_some() {
                    out.push((i, j + 1));
                }
            }
            (Some(Seg::Pattern(o)), Some(Seg::Pattern(n))) if covers_toks(o, n) => {
                out.push((i + 1, j + 1))
            }
            _ => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Glob {
        Glob::parse(s).unwrap()
    }

    #[test]
    fn matching() {
        assert!(g("src/**").matches("src/a/b.rs"));
        assert!(g("src/**").matches("src"), "** matches no segment too");
        assert!(g("src/").matches("src/x"));
        assert!(g("src/*.rs").matches("src/lib.rs"));
        assert!(
            !g("src/*.rs").matches("src/a/lib.rs"),
            "* stays in one segment"
        );
        assert!(g("**/*.md").matches("README.md"));
        assert!(g("**/*.md").matches("docs/a/b.md"));
        assert!(g("lib/{a,b}.rs").matches("lib/b.rs"));
        assert!(!g("lib/{a,b}.rs").matches("lib/c.rs"));
        assert!(g("x/[a-c]?.txt").matches("x/bz.txt"));
        assert!(!g("x/[!a-c]?.txt").matches("x/bz.txt"));
        assert!(g("./docs/*").matches("docs/x"));
    }

    #[test]
    fn overlaps() {
        let yes = [
            ("src/**", "src/lib.rs"),
            ("src/**", "**/*.rs"),
            ("*.md", "README*"),
            ("a/*/c", "a/b/*"),
            ("a/**/c", "a/x/y/c"),
            ("lib/{a,b}.rs", "lib/b*"),
            ("x/[a-c]", "x/[b-z]"),
            ("x/[!a]", "x/b"),
            ("docs/", "docs/api/x.md"),
        ];
        for (a, b) in yes {
            assert!(g(a).overlaps(&g(b)), "{a} ∩ {b}");
            assert!(g(b).overlaps(&g(a)), "{b} ∩ {a}");
        }
        let no = [
            ("src/**", "tests/**"),
            ("*.md", "*.rs"),
            ("a/*/c", "a/b"),
            ("a/*", "a/b/c"),
            ("lib/{a,b}.rs", "lib/c*"),
            ("x/[a-c]", "x/[d-z]"),
            ("x/[!a-z]", "x/b"),
            ("packages/sdk/**", "packages/server/**"),
        ];
        for (a, b) in no {
            assert!(!g(a).overlaps(&g(b)), "{a} ∩ {b}");
            assert!(!g(b).overlaps(&g(a)), "{b} ∩ {a}");
        }
    }

    #[test]
    fn covers() {
        let yes = [
            ("src/**", "src/lib.rs"),
            ("src/**", "src/a/**"),
            ("src/**", "src/*.rs"),
            ("**", "anything/**"),
            ("*.rs", "lib.rs"),
            ("*", "a*b"),
            ("src/*.{rs,md}", "src/x.md"),
            ("x/[a-z]", "x/[b-c]"),
            ("x/?", "x/[ab]"),
        ];
        for (o, i) in yes {
            assert!(g(o).covers(&g(i)), "{o} ⊇ {i}");
        }
        let no = [
            ("src/*.rs", "src/**"),
            ("src/**", "tests/x"),
            ("*.rs", "*"),
            ("x/[b-c]", "x/[a-z]"),
            ("x/a", "x/?"),
        ];
        for (o, i) in no {
            assert!(!g(o).covers(&g(i)), "{o} ⊉ {i}");
        }
        assert!(covered_by(&[g("a/**"), g("b/**")], &g("{a,b}/x")));
    }

    #[test]
    fn bad_globs_name_the_problem() {
        for (bad, says) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", ".."),
            ("a/../b", ".."),
            ("a//b", "empty directory"),
            ("a/b**", "whole directory"),
            ("x/[ab", "without its ]"),
            ("x/{a,b", "without its }"),
            ("x/a}", "without its {"),
            ("x/[z-a]", "backwards"),
            ("a\\b", "backslashes"),
        ] {
            let e = Glob::parse(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidGlob, "{bad}");
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn a_long_glob_is_refused_without_cutting_a_character() {
        let long = format!("a{}", "é".repeat(MAX_GLOB_LEN));
        let e = Glob::parse(&long).unwrap_err();
        assert!(e.message.contains("longer than"), "{}", e.message);
        assert!(e.message.contains(&"é".repeat(31)), "{}", e.message);
    }
}
