//! SQL text, read the way the database reads it: strings, quoted
//! identifiers, comments and (PostgreSQL) dollar quotes are skipped, so a `;`
//! or a keyword inside them counts for nothing. [`check`] says what kind of
//! statement a task's SQL is, and refuses several statements in one string;
//! [`insert`], [`update`] and [`delete`] build statements from validated,
//! quoted identifiers with every value a placeholder.

use super::{
    DDL_REFUSED, INVALID_IDENTIFIER, MULTIPLE_STATEMENTS, STATEMENT_REFUSED, SYNTAX_ERROR,
};
use jetmesh_shared::Error;
use serde_json::{Map, Value};

/// Whose SQL it is: the two differ in quoting and placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// What a statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SELECT, VALUES, SHOW, EXPLAIN of a read.
    Read,
    /// INSERT, UPDATE, DELETE, MERGE, REPLACE, CALL.
    Write,
    /// CREATE, ALTER, DROP, TRUNCATE, GRANT, … (and `SELECT … INTO`).
    Ddl,
}

/// A word of the statement at parenthesis depth `depth`, upper-cased.
struct Word {
    text: String,
    depth: u32,
}

/// The words of `sql` outside strings, quoted identifiers, variables and
/// comments, read by the dialect's own rules, and whether anything but
/// blanks and comments follows the first `;` (at any depth: SQLite ends a
/// statement at any `;` its tokenizer sees). Text the database would not
/// read to its end (an unterminated string, quoted name or comment) is a
/// `syntax_error`: where it ends is where the two readings could differ.
fn words(sql: &str, dialect: Dialect) -> Result<(Vec<Word>, bool), Error> {
    let b = sql.as_bytes();
    let pg = dialect == Dialect::Postgres;
    let (mut i, mut depth) = (0usize, 0u32);
    let mut out = Vec::new();
    let mut ended = false;
    let unterminated = |what: &str| {
        Err(Error::new(
            SYNTAX_ERROR,
            format!("the sql has an unterminated {what}"),
        ))
    };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match c {
            // PostgreSQL ends a line comment at \n or \r, SQLite at \n.
            b'-' if next == Some(b'-') => {
                while i < b.len() && b[i] != b'\n' && !(pg && b[i] == b'\r') {
                    i += 1;
                }
                continue;
            }
            b'/' if next == Some(b'*') => {
                // PostgreSQL nests block comments; SQLite does not.
                let mut level = 0u32;
                loop {
                    if i >= b.len() {
                        return unterminated("comment");
                    }
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        if level == 0 || pg {
                            level += 1;
                        }
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        level -= 1;
                        i += 2;
                        if level == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            _ => {}
        }
        if ended {
            return Ok((out, true));
        }
        match c {
            b';' => {
                ended = true;
                i += 1;
            }
            b'\'' => {
                // E'…' strings take backslash escapes (PostgreSQL).
                let escapes = pg
                    && i > 0
                    && matches!(b[i - 1], b'e' | b'E')
                    && (i < 2 || !is_word_byte(b[i - 2], pg));
                match skip_quoted(b, i, b'\'', escapes) {
                    Some(end) => i = end,
                    None => return unterminated("string"),
                }
            }
            b'"' => match skip_quoted(b, i, b'"', false) {
                Some(end) => i = end,
                None => return unterminated("quoted name"),
            },
            b'`' if !pg => match skip_quoted(b, i, b'`', false) {
                Some(end) => i = end,
                None => return unterminated("quoted name"),
            },
            b'[' if !pg => match sql[i..].find(']') {
                Some(e) => i += e + 1,
                None => return unterminated("quoted name"),
            },
            b'$' if pg => match skip_dollar(sql, i) {
                Some(end) => i = end,
                None => return unterminated("dollar-quoted string"),
            },
            // SQLite's variables: `?NNN`, `:name`, `@name`, `#name`, and
            // Tcl-style `$name::name(anything up to a closing parenthesis)`.
            b'$' | b':' | b'@' | b'#' if !pg => i = skip_variable(b, i),
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            c if is_word_byte(c, pg) && !c.is_ascii_digit() && c != b'$' => {
                let start = i;
                while i < b.len() && is_word_byte(b[i], pg) {
                    i += 1;
                }
                // E'…' and U&'…' prefixes are read with their string.
                if b.get(i) == Some(&b'\'') && i - start == 1 {
                    continue;
                }
                out.push(Word {
                    text: sql[start..i].to_ascii_uppercase(),
                    depth,
                });
            }
            // A number: digits and what may follow them in one token.
            c if c.is_ascii_digit() => {
                while i < b.len() && is_word_byte(b[i], pg) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok((out, false))
}

/// Bytes of a name: letters, digits, `_`, `$` after the first, and every
/// byte of a non-ASCII character.
fn is_word_byte(c: u8, _pg: bool) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// The index after the quoted run starting at `i` (doubled quotes escape;
/// backslashes too when `escapes`); `None` when it never ends.
fn skip_quoted(b: &[u8], mut i: usize, q: u8, escapes: bool) -> Option<usize> {
    i += 1;
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
        } else if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return Some(i + 1);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// After a `$` (PostgreSQL): a dollar-quoted string (`$tag$ … $tag$`, the
/// tag an identifier without `$`), or a placeholder `$1`. `None` when a
/// dollar quote never ends.
fn skip_dollar(sql: &str, i: usize) -> Option<usize> {
    let b = sql.as_bytes();
    let tag_len = b[i + 1..]
        .iter()
        .take_while(|&&c| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80)
        .count();
    let after = i + 1 + tag_len;
    if b.get(after) != Some(&b'$') || b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return Some(after);
    }
    let delim = &sql[i..after + 1];
    let body = after + 1;
    sql[body..].find(delim).map(|e| body + e + delim.len())
}

/// After SQLite's `$`, `:`, `@` or `#`: the variable's name, with `::`
/// parts and, for any of them, a `(…)` suffix up to its `)` as SQLite's
/// tokenizer reads it.
fn skip_variable(b: &[u8], mut i: usize) -> usize {
    i += 1;
    loop {
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
            i += 1;
        }
        if b.get(i) == Some(&b':') && b.get(i + 1) == Some(&b':') {
            i += 2;
            continue;
        }
        break;
    }
    if b.get(i) == Some(&b'(') {
        while i < b.len() && b[i] != b')' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) == Some(&b')') {
            i += 1;
        }
    }
    i
}

/// What `sql` does, or why it may not run: empty, several statements
/// (`multiple_statements`), text that does not end (`syntax_error`), a
/// statement jetmesh never runs for a task (`statement_refused`:
/// transaction control, SET, COPY, ATTACH, …), or DDL where it is not
/// allowed (`ddl_refused`). This is a first line: read-only databases are
/// read-only in the database, and the database's role is what must not be
/// allowed what a pool should never do.
pub fn check(sql: &str, dialect: Dialect, allow_ddl: bool) -> Result<Kind, Error> {
    let (words, more) = words(sql, dialect)?;
    if more {
        return Err(Error::new(
            MULTIPLE_STATEMENTS,
            "sql holds more than one statement; send one statement per task",
        ));
    }
    let kind = classify(&words, dialect)?;
    if kind == Kind::Ddl && !allow_ddl {
        return Err(Error::new(
            DDL_REFUSED,
            format!(
                "{} changes the schema, and this database does not allow DDL (allow_ddl = false)",
                words.first().map_or("", |w| w.text.as_str())
            ),
        ));
    }
    Ok(kind)
}

fn classify(mut words: &[Word], dialect: Dialect) -> Result<Kind, Error> {
    let pg = dialect == Dialect::Postgres;
    let refused = |what: &str| {
        Err(Error::new(
            STATEMENT_REFUSED,
            format!(
                "{what} statements are not run for tasks (one statement runs per task, in a transaction jetmesh controls)"
            ),
        ))
    };
    // EXPLAIN and WITH lead to the statement that decides, in a loop: each
    // turn drops at least one word.
    loop {
        let Some(first) = words.first() else {
            return Err(Error::invalid_args("sql holds no statement"));
        };
        let at = |w: &Word| w.depth == first.depth;
        let kind = match first.text.as_str() {
            "SELECT" | "VALUES" | "TABLE" => {
                if pg && words.iter().any(|w| at(w) && w.text == "INTO") {
                    Kind::Ddl
                } else {
                    Kind::Read
                }
            }
            "SHOW" if pg => Kind::Read,
            "WITH" => {
                // The statement after the common table expressions decides.
                match words[1..].iter().position(|w| {
                    at(w)
                        && matches!(
                            w.text.as_str(),
                            "SELECT"
                                | "VALUES"
                                | "INSERT"
                                | "UPDATE"
                                | "DELETE"
                                | "MERGE"
                                | "REPLACE"
                                | "TABLE"
                        )
                }) {
                    Some(p) => {
                        words = &words[p + 1..];
                        continue;
                    }
                    None => return Err(Error::invalid_args("WITH is not followed by a statement")),
                }
            }
            "EXPLAIN" => {
                match words[1..].iter().position(|w| {
                    at(w)
                        && !matches!(
                            w.text.as_str(),
                            "ANALYZE" | "VERBOSE" | "QUERY" | "PLAN" | "COSTS" | "BUFFERS"
                        )
                }) {
                    Some(p) => {
                        words = &words[p + 1..];
                        continue;
                    }
                    None => {
                        return Err(Error::invalid_args(
                            "EXPLAIN is not followed by a statement",
                        ));
                    }
                }
            }
            "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "CALL" => Kind::Write,
            "REPLACE" if !pg => Kind::Write,
            "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "COMMENT" | "GRANT" | "REVOKE"
            | "REINDEX" | "ANALYZE" | "CLUSTER" | "REFRESH" => Kind::Ddl,
            // Settings that persist on the connection; never VACUUM INTO a file.
            "PRAGMA" if !pg => Kind::Ddl,
            "VACUUM" if !words.iter().any(|w| w.text == "INTO") => Kind::Ddl,
            other @ ("BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT"
            | "RELEASE" | "SET" | "RESET" | "COPY" | "DO" | "ATTACH" | "DETACH"
            | "LISTEN" | "UNLISTEN" | "NOTIFY" | "LOCK" | "PREPARE" | "EXECUTE"
            | "DEALLOCATE" | "DISCARD" | "LOAD" | "CHECKPOINT" | "SECURITY" | "IMPORT"
            | "VACUUM" | "PRAGMA" | "SHOW" | "REPLACE" | "FETCH" | "MOVE" | "CLOSE"
            | "DECLARE" | "REASSIGN") => {
                return refused(other);
            }
            other => {
                return Err(Error::new(
                    SYNTAX_ERROR,
                    format!("{other:?} does not begin an SQL statement"),
                ));
            }
        };
        return Ok(kind);
    }
}

/// `name` quoted as an identifier, after checking its form: letters, digits,
/// `_` and `$`, not starting with a digit or `$`, at most 63 bytes; a table
/// may be `schema.table`. Anything else is `invalid_identifier`.
pub fn ident(name: &str, what: &str, qualified: bool) -> Result<String, Error> {
    let parts: Vec<&str> = if qualified {
        name.splitn(2, '.').collect()
    } else {
        vec![name]
    };
    let valid = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    if !parts.iter().all(|p| valid(p)) {
        return Err(Error::new(
            INVALID_IDENTIFIER,
            format!(
                "{what} {:?} is not a plain identifier (letters, digits, _ and $, at most 63 bytes{})",
                truncate(name, 80),
                if qualified {
                    "; schema.table allowed"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A statement built from a task's fields, and the values it binds, in order.
#[derive(Debug, PartialEq)]
pub struct Built<'a> {
    pub sql: String,
    pub values: Vec<&'a Value>,
}

struct Placeholders(Dialect, usize);

impl Placeholders {
    fn next(&mut self) -> String {
        self.1 += 1;
        match self.0 {
            Dialect::Sqlite => "?".into(),
            Dialect::Postgres => format!("${}", self.1),
        }
    }
}

fn returning(cols: &[String]) -> Result<String, Error> {
    if cols.is_empty() {
        return Ok(String::new());
    }
    if cols.len() == 1 && cols[0] == "*" {
        return Ok(" RETURNING *".into());
    }
    let quoted: Result<Vec<String>, Error> = cols
        .iter()
        .map(|c| ident(c, "returning column", false))
        .collect();
    Ok(format!(" RETURNING {}", quoted?.join(", ")))
}

/// `INSERT INTO table (cols) VALUES (…), (…)`: every row names the same columns.
pub fn insert<'a>(
    dialect: Dialect,
    table: &str,
    rows: &[&'a Map<String, Value>],
    ret: &[String],
) -> Result<Built<'a>, Error> {
    let table = ident(table, "table", true)?;
    let first = rows
        .first()
        .ok_or_else(|| Error::invalid_args("values holds no row"))?;
    if first.is_empty() {
        return Err(Error::invalid_args("values names no column"));
    }
    let cols: Vec<&String> = first.keys().collect();
    let quoted: Result<Vec<String>, Error> =
        cols.iter().map(|c| ident(c, "column", false)).collect();
    let mut ph = Placeholders(dialect, 0);
    let mut values = Vec::with_capacity(rows.len() * cols.len());
    let mut tuples = Vec::with_capacity(rows.len());
    for (n, row) in rows.iter().enumerate() {
        if row.len() != cols.len() || !cols.iter().all(|c| row.contains_key(*c)) {
            return Err(Error::invalid_args(format!(
                "values[{n}] names other columns than values[0]; every row must name the same ones"
            )));
        }
        let marks: Vec<String> = cols
            .iter()
            .map(|c| {
                values.push(&row[*c]);
                ph.next()
            })
            .collect();
        tuples.push(format!("({})", marks.join(", ")));
    }
    Ok(Built {
        sql: format!(
            "INSERT INTO {table} ({}) VALUES {}{}",
            quoted?.join(", "),
            tuples.join(", "),
            returning(ret)?
        ),
        values,
    })
}

/// `"a" = $1 AND "b" IS NULL`: column equalities, `null` as IS NULL.
fn conditions<'a>(
    filter: &'a Map<String, Value>,
    ph: &mut Placeholders,
    values: &mut Vec<&'a Value>,
) -> Result<String, Error> {
    if filter.is_empty() {
        return Err(Error::invalid_args(
            "where names no column; give at least one equality",
        ));
    }
    let mut parts = Vec::with_capacity(filter.len());
    for (col, v) in filter {
        let col = ident(col, "where column", false)?;
        if v.is_null() {
            parts.push(format!("{col} IS NULL"));
        } else {
            values.push(v);
            parts.push(format!("{col} = {}", ph.next()));
        }
    }
    Ok(parts.join(" AND "))
}

/// `UPDATE table SET "a" = $1 WHERE "k" = $2`.
pub fn update<'a>(
    dialect: Dialect,
    table: &str,
    set: &'a Map<String, Value>,
    filter: &'a Map<String, Value>,
    ret: &[String],
) -> Result<Built<'a>, Error> {
    let table = ident(table, "table", true)?;
    if set.is_empty() {
        return Err(Error::invalid_args("values names no column"));
    }
    let mut ph = Placeholders(dialect, 0);
    let mut values = Vec::with_capacity(set.len() + filter.len());
    let mut assigns = Vec::with_capacity(set.len());
    for (col, v) in set {
        let col = ident(col, "column", false)?;
        values.push(v);
        assigns.push(format!("{col} = {}", ph.next()));
    }
    let cond = conditions(filter, &mut ph, &mut values)?;
    Ok(Built {
        sql: format!(
            "UPDATE {table} SET {} WHERE {cond}{}",
            assigns.join(", "),
            returning(ret)?
        ),
        values,
    })
}

/// `DELETE FROM table WHERE "k" = $1`.
pub fn delete<'a>(
    dialect: Dialect,
    table: &str,
    filter: &'a Map<String, Value>,
    ret: &[String],
) -> Result<Built<'a>, Error> {
    let table = ident(table, "table", true)?;
    let mut ph = Placeholders(dialect, 0);
    let mut values = Vec::with_capacity(filter.len());
    let cond = conditions(filter, &mut ph, &mut values)?;
    Ok(Built {
        sql: format!("DELETE FROM {table} WHERE {cond}{}", returning(ret)?),
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Dialect::{Postgres as Pg, Sqlite as Lite};
    use serde_json::json;

    fn kind(sql: &str, d: Dialect) -> Result<Kind, String> {
        check(sql, d, true).map_err(|e| e.code.to_string())
    }

    #[test]
    fn one_statement_only_wherever_the_semicolon_hides() {
        for d in [Lite, Pg] {
            assert_eq!(kind("SELECT 1;", d), Ok(Kind::Read));
            assert_eq!(kind("SELECT 1; -- done\n", d), Ok(Kind::Read));
            assert_eq!(kind("SELECT 1; /* x */  ", d), Ok(Kind::Read));
            assert_eq!(kind("SELECT ';' , \"a;b\" FROM t", d), Ok(Kind::Read));
            assert_eq!(kind("SELECT 1 -- ; DROP TABLE t\n", d), Ok(Kind::Read));
            assert_eq!(kind("SELECT 'it''s; fine'", d), Ok(Kind::Read));
            assert_eq!(
                kind("SELECT 1; DROP TABLE t", d),
                Err("multiple_statements".into())
            );
            assert_eq!(kind("SELECT 1;;", d), Err("multiple_statements".into()));
            assert_eq!(
                kind("INSERT INTO t VALUES ('a'); DELETE FROM t", d),
                Err("multiple_statements".into())
            );
        }
        // Dollar quotes and E'' strings (PostgreSQL).
        assert_eq!(kind("SELECT $$a;b$$", Pg), Ok(Kind::Read));
        assert_eq!(kind("SELECT $tag$ ; $$ ; $tag$", Pg), Ok(Kind::Read));
        assert_eq!(kind("SELECT E'\\'; x'", Pg), Ok(Kind::Read));
        assert_eq!(
            kind("SELECT E'\\''; DROP TABLE t", Pg),
            Err("multiple_statements".into())
        );
        assert_eq!(kind("SELECT $1, $2", Pg), Ok(Kind::Read));
        assert_eq!(
            kind("SELECT $1; DROP TABLE t", Pg),
            Err("multiple_statements".into())
        );
        // A backslash is no escape in a standard string.
        assert_eq!(
            kind("SELECT 'a\\'; DROP TABLE t", Pg),
            Err("multiple_statements".into())
        );
        // Nested block comments (PostgreSQL), flat ones (SQLite).
        assert_eq!(kind("SELECT 1 /* a /* b */ ; */", Pg), Ok(Kind::Read));
        assert_eq!(
            kind("SELECT 1 /* a /* b */ ; DROP TABLE t", Lite),
            Err("multiple_statements".into())
        );
        assert_eq!(kind("SELECT [a;b], `c;d` FROM t", Lite), Ok(Kind::Read));
        assert_eq!(kind("  ", Lite), Err("invalid_args".into()));
        // SQLite's Tcl variables may hold parentheses and brackets.
        assert_eq!(
            kind("SELECT $1(();DROP TABLE t", Lite),
            Err("multiple_statements".into())
        );
        assert_eq!(
            kind("SELECT $1([);DROP TABLE t;SELECT $1(])", Lite),
            Err("multiple_statements".into())
        );
        assert_eq!(
            kind("SELECT (1; DROP TABLE t", Lite),
            Err("multiple_statements".into())
        );
        // PostgreSQL: \r ends a line comment, $ may be inside a name, a
        // dollar tag may be non-ASCII.
        assert_eq!(kind("SELECT 1 AS a --\rINTO t2", Pg), Ok(Kind::Ddl));
        assert_eq!(
            kind("SELECT 1 AS a$x$ INTO t2 FROM t AS b$x$", Pg),
            Ok(Kind::Ddl)
        );
        assert_eq!(kind("SELECT $é$'$é$ AS a INTO t2 --'", Pg), Ok(Kind::Ddl));
        assert_eq!(kind("(SELECT 1 AS a INTO t2)", Pg), Ok(Kind::Ddl));
        assert_eq!(
            kind("--\rCOPY (--\nSELECT 1) TO PROGRAM 'id'", Pg),
            Err("statement_refused".into())
        );
        // Text that does not end is refused, not guessed at.
        for open in ["SELECT 'a", "SELECT \"a", "SELECT /* a", "SELECT $$ a"] {
            assert_eq!(kind(open, Pg), Err("syntax_error".into()), "{open}");
        }
        // A thousand EXPLAINs are a loop, not a deep recursion.
        let deep = format!("{}SELECT 1", "EXPLAIN ".repeat(200_000));
        assert_eq!(kind(&deep, Pg), Ok(Kind::Read));
        assert_eq!(kind("-- nothing", Pg), Err("invalid_args".into()));
    }

    #[test]
    fn statements_are_classified_and_some_refused() {
        assert_eq!(kind("select * from t", Lite), Ok(Kind::Read));
        assert_eq!(kind("(SELECT 1) UNION (SELECT 2)", Pg), Ok(Kind::Read));
        assert_eq!(
            kind("WITH x AS (SELECT 1) SELECT * FROM x", Pg),
            Ok(Kind::Read)
        );
        assert_eq!(
            kind("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", Pg),
            Ok(Kind::Write)
        );
        assert_eq!(kind("EXPLAIN ANALYZE DELETE FROM t", Pg), Ok(Kind::Write));
        assert_eq!(kind("EXPLAIN QUERY PLAN SELECT 1", Lite), Ok(Kind::Read));
        assert_eq!(kind("insert into t values (1)", Pg), Ok(Kind::Write));
        assert_eq!(kind("REPLACE INTO t VALUES (1)", Lite), Ok(Kind::Write));
        assert_eq!(kind("create table t (a int)", Lite), Ok(Kind::Ddl));
        assert_eq!(kind("SELECT * INTO t2 FROM t", Pg), Ok(Kind::Ddl));
        assert_eq!(kind("SELECT (SELECT 1) AS into_x", Pg), Ok(Kind::Read));
        assert_eq!(kind("PRAGMA journal_mode", Lite), Ok(Kind::Ddl));
        for refused in [
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
            "SET statement_timeout = 0",
            "RESET ALL",
            "COPY t TO PROGRAM 'sh'",
            "DO $$ BEGIN END $$",
            "ATTACH DATABASE '/etc/x' AS x",
            "DETACH x",
            "LISTEN x",
            "VACUUM INTO '/tmp/copy.db'",
            "PRAGMA x",
        ] {
            let d = if refused.starts_with("PRAGMA") {
                Pg
            } else {
                Lite
            };
            let pg = kind(refused, Pg);
            let lite = kind(refused, d);
            assert!(
                pg == Err("statement_refused".into()) || lite == Err("statement_refused".into()),
                "{refused}: {pg:?} {lite:?}"
            );
        }
        assert_eq!(kind("SELEC 1", Pg), Err("syntax_error".into()));
        assert_eq!(
            check("DROP TABLE t", Lite, false)
                .unwrap_err()
                .code
                .to_string(),
            "ddl_refused"
        );
        assert_eq!(check("SELECT 1", Lite, false).unwrap(), Kind::Read);
    }

    #[test]
    fn any_text_is_read_without_panicking_and_a_second_statement_is_seen() {
        // Pieces that open and close every kind of quoting, with multi-byte
        // characters between them, glued at random (a fixed-seed LCG).
        const PIECES: [&str; 22] = [
            "SELECT ",
            "'",
            "''",
            "\"",
            "`",
            "[",
            "]",
            "$$",
            "$t$",
            "$1",
            "E'",
            "\\",
            "--",
            "\n",
            "/*",
            "*/",
            "(",
            ")",
            ";",
            "é€😀",
            " x ",
            "U&'",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut sql = String::new();
            for _ in 0..(seed % 12) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                sql.push_str(PIECES[(seed >> 33) as usize % PIECES.len()]);
            }
            for d in [Lite, Pg] {
                // A panic here fails the test; any answer is fine.
                let _ = check(&sql, d, true);
            }
        }
        for d in [Lite, Pg] {
            assert_eq!(
                kind("SELECT 'é€😀;' ; DROP TABLE t", d),
                Err("multiple_statements".into())
            );
            assert_eq!(kind("SELECT \"😀;\" FROM t", d), Ok(Kind::Read));
        }
    }

    #[test]
    fn identifiers_are_checked_and_quoted() {
        assert_eq!(ident("users", "table", true).unwrap(), "\"users\"");
        assert_eq!(
            ident("public.users", "table", true).unwrap(),
            "\"public\".\"users\""
        );
        for bad in [
            "",
            "users; DROP TABLE x",
            "a\"b",
            "1abc",
            "a b",
            "a.b.c",
            "x--",
            &"a".repeat(64),
        ] {
            assert_eq!(
                ident(bad, "table", true).unwrap_err().code.to_string(),
                "invalid_identifier",
                "{bad}"
            );
        }
        assert!(ident("public.users", "column", false).is_err());
    }

    #[test]
    fn statements_are_built_with_placeholders_only() {
        let row = json!({"name": "x'); DROP TABLE t; --", "n": 1});
        let row = row.as_object().unwrap();
        let b = insert(Pg, "t", &[row, row], &["id".into()]).unwrap();
        assert_eq!(
            b.sql,
            "INSERT INTO \"t\" (\"name\", \"n\") VALUES ($1, $2), ($3, $4) RETURNING \"id\""
        );
        assert_eq!(b.values.len(), 4);
        let set = json!({"n": 2});
        let filter = json!({"name": "a", "gone": null});
        let b = update(
            Lite,
            "t",
            set.as_object().unwrap(),
            filter.as_object().unwrap(),
            &[],
        )
        .unwrap();
        assert_eq!(
            b.sql,
            "UPDATE \"t\" SET \"n\" = ? WHERE \"name\" = ? AND \"gone\" IS NULL"
        );
        assert_eq!(b.values, vec![&json!(2), &json!("a")]);
        let b = delete(Pg, "t", filter.as_object().unwrap(), &["*".into()]).unwrap();
        assert_eq!(
            b.sql,
            "DELETE FROM \"t\" WHERE \"name\" = $1 AND \"gone\" IS NULL RETURNING *"
        );
        let empty = Map::new();
        assert!(delete(Pg, "t", &empty, &[]).is_err());
        let other = json!({"zzz": 1, "n": 2});
        assert!(insert(Pg, "t", &[row, other.as_object().unwrap()], &[]).is_err());
        let evil = json!({"a\" = 1 OR 1=1 --": 1});
        assert_eq!(
            delete(Pg, "t", evil.as_object().unwrap(), &[])
                .unwrap_err()
                .code
                .to_string(),
            "invalid_identifier"
        );
    }
}
