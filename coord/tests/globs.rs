//! `Glob::overlaps` and `Glob::covers` against brute force: small globs over
//! the letters `a` and `b`, and every path of a bounded universe, matched by
//! a matcher written here from the syntax (not by `Glob::matches`, which
//! shares its search with `covers`).
//!
//! Why the universe holds a witness of every overlap of the generated globs:
//! - Characters: every generated token (`a`, `b`, `?`, `[ab]`, `[a-b]`,
//!   `[!a]`, `[!ab]`) treats all characters other than `a` and `b` alike, so
//!   `c` stands for all of them and `{a, b, c}` is enough.
//! - Within a segment: a generated segment (after brace expansion) has at
//!   most two tokens. A witness of two segment patterns needs one character
//!   per non-`*` token matched, on one side or both at once, so a shortest one
//!   has at most two characters if both sides have a `*` (each then has at
//!   most one other token), and exactly the length of a side without one.
//! - Segments: each segment of a shortest witness is matched by a pattern
//!   segment of at least one side (a `**` on both sides can match nothing
//!   instead), and a generated alternative has at most two pattern segments,
//!   so a shortest witness has at most four segments.
//!
//! So the universe is every path of one to four segments of one or two
//! characters from `{a, b, c}`, and there `overlaps` must be exact; `covers`
//! is only sound, so a `true` must hold on every path.

use jetmesh_coord::globs::Glob;
use proptest::prelude::*;
use std::sync::OnceLock;

/// The names a path segment takes in the universe: one or two characters
/// from `{a, b, c}`.
const NAMES: [&str; 12] = [
    "a", "b", "c", "aa", "ab", "ac", "ba", "bb", "bc", "ca", "cb", "cc",
];

/// Every path of 1..=4 segments, as indexes into [`NAMES`], shorter paths first.
fn universe() -> &'static [Vec<usize>] {
    static PATHS: OnceLock<Vec<Vec<usize>>> = OnceLock::new();
    PATHS.get_or_init(|| {
        let mut paths: Vec<Vec<usize>> = Vec::new();
        let mut last: Vec<Vec<usize>> = vec![Vec::new()];
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|p| (0..NAMES.len()).map(move |n| [p.as_slice(), &[n]].concat()))
                .collect();
            paths.extend(last.iter().cloned());
        }
        paths
    })
}

fn path_text(path: &[usize]) -> String {
    path.iter().map(|&n| NAMES[n]).collect::<Vec<_>>().join("/")
}

/// `x{a,b}y` → `xay`, `xby` (nested braces too).
fn expand(s: &str) -> Vec<String> {
    let Some(open) = s.find('{') else {
        return vec![s.to_string()];
    };
    let (mut depth, mut parts, mut start) = (0, Vec::new(), open + 1);
    for (i, c) in s.char_indices().skip_while(|&(i, _)| i < open) {
        match c {
            '{' => depth += 1,
            ',' if depth == 1 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    parts.push(&s[start..i]);
                    let (head, tail) = (&s[..open], &s[i + 1..]);
                    return parts
                        .into_iter()
                        .flat_map(|p| expand(&format!("{head}{p}{tail}")))
                        .collect();
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces in {s:?}")
}

fn class_has(class: &str, c: char) -> bool {
    let (negated, body) = match class.strip_prefix('!') {
        Some(body) => (true, body),
        None => (false, class),
    };
    let chars: Vec<char> = body.chars().collect();
    let mut i = 0;
    let mut hit = false;
    while i < chars.len() {
        if i + 2 < chars.len() && chars[i + 1] == '-' {
            hit |= chars[i] <= c && c <= chars[i + 2];
            i += 3;
        } else {
            hit |= chars[i] == c;
            i += 1;
        }
    }
    hit != negated
}

fn segment_matches(pattern: &str, name: &str) -> bool {
    let Some(p) = pattern.chars().next() else {
        return name.is_empty();
    };
    let rest = &pattern[p.len_utf8()..];
    if p == '*' {
        return (0..=name.len())
            .filter(|&i| name.is_char_boundary(i))
            .any(|i| segment_matches(rest, &name[i..]));
    }
    let Some(c) = name.chars().next() else {
        return false;
    };
    let name_rest = &name[c.len_utf8()..];
    match p {
        '?' => segment_matches(rest, name_rest),
        '[' => {
            let close = rest.find(']').expect("a closed class");
            class_has(&rest[..close], c) && segment_matches(&rest[close + 1..], name_rest)
        }
        _ => p == c && segment_matches(rest, name_rest),
    }
}

/// A segment of a glob: `**`, or the names of [`NAMES`] it matches.
enum Seg {
    Globstar,
    Names([bool; NAMES.len()]),
}

fn segments_match(pattern: &[Seg], path: &[usize]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((Seg::Globstar, rest)) => {
            segments_match(rest, path) || (!path.is_empty() && segments_match(pattern, &path[1..]))
        }
        Some((Seg::Names(names), rest)) => {
            !path.is_empty() && names[path[0]] && segments_match(rest, &path[1..])
        }
    }
}

/// Which of `paths` the glob `text` matches.
fn brute(text: &str, paths: &[Vec<usize>]) -> Vec<bool> {
    let mut text = text.to_string();
    if text.ends_with('/') {
        text.push_str("**");
    }
    let alts: Vec<Vec<Seg>> = expand(&text)
        .iter()
        .map(|alt| {
            alt.split('/')
                .map(|seg| match seg {
                    "**" => Seg::Globstar,
                    _ => Seg::Names(NAMES.map(|name| segment_matches(seg, name))),
                })
                .collect()
        })
        .collect();
    paths
        .iter()
        .map(|path| alts.iter().any(|a| segments_match(a, path)))
        .collect()
}

/// One token of a segment, or braces whose alternatives are single tokens.
fn atom() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "b", "?", "*", "[ab]", "[a-b]", "[!a]", "[!ab]", "{a,b}", "{a,*}", "{?,b}",
    ])
}

/// A segment: `**`, or one or two atoms.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("**".to_string()),
        4 => prop::collection::vec(atom(), 1..=2).prop_map(|a| a.concat()),
    ]
}

/// One to three segments, at most two of them patterns (see the module doc).
fn alternative() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 1..=3)
        .prop_filter("at most two pattern segments", |segs| {
            segs.iter().filter(|s| *s != "**").count() <= 2
        })
        .prop_map(|segs| segs.join("/"))
}

/// A glob: an alternative, braces around two of them, or a directory (`a/`).
fn glob() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => alternative(),
        1 => (alternative(), alternative()).prop_map(|(x, y)| format!("{{{x},{y}}}")),
        1 => alternative().prop_map(|x| format!("{x}/")),
    ]
    .prop_filter("a glob the parser takes", |g| Glob::parse(g).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    // Checks the matcher above as much as `matches`; the paths of up to
    // three segments are enough for that.
    #[test]
    fn matches_agrees_with_brute_force(text in glob()) {
        let g = Glob::parse(&text).unwrap();
        let short: Vec<Vec<usize>> = universe().iter().take_while(|p| p.len() < 4).cloned().collect();
        for (path, expected) in short.iter().zip(brute(&text, &short)) {
            let path = path_text(path);
            prop_assert_eq!(g.matches(&path), expected, "{} on {}", text, path);
        }
    }

    /// Anything a plan may carry: an error or a glob, never a panic.
    #[test]
    fn parse_takes_any_text(pieces in prop::collection::vec(
        prop::sample::select(vec!["a", "é", "*", "**", "?", "/", "[", "]", "!", "-", "{", "}", ",", ".", ".."]),
        0..800,
    )) {
        if let Ok(g) = Glob::parse(&pieces.concat()) {
            g.matches("a/é/b");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn overlaps_is_exact_and_covers_is_sound(a in glob(), b in glob()) {
        let (ga, gb) = (Glob::parse(&a).unwrap(), Glob::parse(&b).unwrap());
        let (ma, mb) = (brute(&a, universe()), brute(&b, universe()));
        let witness = (0..ma.len()).find(|&i| ma[i] && mb[i]).map(|i| path_text(&universe()[i]));
        prop_assert_eq!(
            ga.overlaps(&gb),
            witness.is_some(),
            "{} ∩ {}: witness {:?}", a, b, witness
        );
        prop_assert_eq!(ga.overlaps(&gb), gb.overlaps(&ga), "{} ∩ {} is symmetric", a, b);
        for (outer, inner, m_outer, m_inner) in [(&ga, &gb, &ma, &mb), (&gb, &ga, &mb, &ma)] {
            if outer.covers(inner) {
                let outside = (0..ma.len())
                    .find(|&i| m_inner[i] && !m_outer[i])
                    .map(|i| path_text(&universe()[i]));
                prop_assert!(
                    outside.is_none(),
                    "{} ⊇ {}, but {:?} matches only the inner one", outer, inner, outside
                );
            }
        }
    }
}
