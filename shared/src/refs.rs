//! Outputs of earlier tasks in a task's parameters: data flows through a
//! plan. Two forms, both public protocol:
//!
//! - a value `{"$ref": "t1"}` is replaced by task `t1`'s output, or with
//!   `"path": "/rows/*/amount"` by the part a JSON Pointer (RFC 6901)
//!   names; a `*` segment maps the rest of the path over an array;
//! - in a string, `{{t1}}` or `{{t1/rows/0/item}}` is replaced by that value:
//!   a string as it is, anything else as compact JSON. Only a task in the
//!   task's `depends_on` is taken this way: other `{{…}}` is text (a
//!   template the task writes, say).
//!
//! A `$ref` may only name a task in `depends_on` (checked when the plan is
//! accepted, `unknown_dependency`), so every output a task uses is stored,
//! and successful, when the router dispatches it; the router resolves the
//! references then and checks the result against the action's schema.

use crate::error::{Error, ErrorCode, Result};
use crate::ids;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The key of a reference object.
pub const REF: &str = "$ref";
/// The optional JSON Pointer of a reference object.
pub const PATH: &str = "path";

/// The tasks `params` uses: every `$ref`, and the `{{…}}` that name a task
/// of `deps` (the task's `depends_on`). Errors (`invalid_args`) on a
/// malformed reference object.
pub fn referenced(params: &Map<String, Value>, deps: &[String]) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for v in params.values() {
        collect(v, deps, &mut out)?;
    }
    Ok(out)
}

fn collect(v: &Value, deps: &[String], out: &mut BTreeSet<String>) -> Result<()> {
    match v {
        Value::Object(o) if o.contains_key(REF) => {
            let (task, _) = reference(o)?;
            out.insert(task.to_string());
        }
        Value::Object(o) => {
            for v in o.values() {
                collect(v, deps, out)?;
            }
        }
        Value::Array(a) => {
            for v in a {
                collect(v, deps, out)?;
            }
        }
        Value::String(s) => {
            for (_, task, _) in templates(s, deps) {
                out.insert(task.to_string());
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether `params` uses an earlier output (see [`referenced`]). Asked of
/// every task the router dispatches: it allocates nothing unless a value
/// holds `$ref` or `{{`.
pub fn has_refs(params: &Map<String, Value>, deps: &[String]) -> bool {
    fn any(v: &Value, deps: &[String]) -> bool {
        match v {
            Value::Object(o) => o.contains_key(REF) || o.values().any(|v| any(v, deps)),
            Value::Array(a) => a.iter().any(|v| any(v, deps)),
            Value::String(s) => s.contains("{{") && !templates(s, deps).is_empty(),
            _ => false,
        }
    }
    params.values().any(|v| any(v, deps))
}

/// `(task, pointer)` of a reference object.
fn reference(o: &Map<String, Value>) -> Result<(&str, &str)> {
    let task = o
        .get(REF)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid_args("\"$ref\" must name a task of the plan (a string)"))?;
    ids::validate("\"$ref\"", task)?;
    let path = match o.get(PATH) {
        None => "",
        Some(Value::String(p)) if p.is_empty() || p.starts_with('/') => p,
        Some(_) => {
            return Err(Error::invalid_args(format!(
                "the \"path\" of a \"$ref\" to {task} must be a JSON Pointer like /rows/0/amount"
            )));
        }
    };
    if let Some(k) = o.keys().find(|k| *k != REF && *k != PATH) {
        return Err(Error::invalid_args(format!(
            "a \"$ref\" object takes only \"$ref\" and \"path\", not {k:?}"
        )));
    }
    Ok((task, path))
}

/// The `{{task/pointer}}` templates of `s` whose task is in `deps`: (byte
/// range, task, pointer).
fn templates<'a>(s: &'a str, deps: &[String]) -> Vec<(std::ops::Range<usize>, &'a str, &'a str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = s[from..].find("{{").map(|i| from + i) {
        let Some(end) = s[start + 2..].find("}}").map(|i| start + 2 + i) else {
            break;
        };
        let inner = s[start + 2..end].trim();
        let (task, pointer) = match inner.find('/') {
            Some(i) => (&inner[..i], &inner[i..]),
            None => (inner, ""),
        };
        if deps.iter().any(|d| d == task) && !pointer.contains(char::is_whitespace) {
            out.push((start..end + 2, task, pointer));
            from = end + 2;
        } else {
            // Not a reference: `{{` that is just text.
            from = start + 2;
        }
    }
    out
}

/// `params` with every reference replaced, `output(task)` giving each
/// referenced task's output. Errors: `invalid_args` when a path names
/// nothing in the output; `payload_too_large` when what is put in comes to
/// more than `budget` bytes of JSON (counted before anything is copied, so a
/// large output used many times costs nothing).
pub fn resolve(
    params: &Map<String, Value>,
    deps: &[String],
    output: &dyn Fn(&str) -> Option<Value>,
    budget: usize,
) -> Result<Map<String, Value>> {
    let mut left = budget;
    params
        .iter()
        .map(|(k, v)| Ok((k.clone(), resolve_value(v, deps, output, &mut left)?)))
        .collect()
}

/// Takes `v`'s size as JSON out of `left`, or fails once it runs out
/// (serializing into a counter that stops at the limit: nothing is built).
fn spend(v: &Value, left: &mut usize, budget: usize) -> Result<()> {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if b.len() > self.0 {
                return Err(std::io::Error::other("over"));
            }
            self.0 -= b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(*left);
    serde_json::to_writer(&mut c, v).map_err(|_| {
        Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the outputs put into the parameters come to more than {budget} bytes (mesh.max_request_bytes); pass large outputs as object-store references"
            ),
        )
    })?;
    *left = c.0;
    Ok(())
}

fn resolve_value(
    v: &Value,
    deps: &[String],
    output: &dyn Fn(&str) -> Option<Value>,
    left: &mut usize,
) -> Result<Value> {
    Ok(match v {
        Value::Object(o) if o.contains_key(REF) => {
            let (task, path) = reference(o)?;
            let out = fetch(task, output)?;
            let picked = select_ref(&out, path, task)?;
            let budget = *left;
            spend(&picked, left, budget)?;
            picked
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), resolve_value(v, deps, output, left)?)))
                .collect::<Result<_>>()?,
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| resolve_value(v, deps, output, left))
                .collect::<Result<_>>()?,
        ),
        Value::String(s) => {
            let found = templates(s, deps);
            if found.is_empty() {
                return Ok(v.clone());
            }
            let mut text = String::with_capacity(s.len());
            let mut last = 0;
            for (range, task, path) in found {
                text.push_str(&s[last..range.start]);
                let out = fetch(task, output)?;
                let picked = select_ref(&out, path, task)?;
                let budget = *left;
                spend(&picked, left, budget)?;
                match picked {
                    Value::String(t) => text.push_str(&t),
                    other => text.push_str(&other.to_string()),
                }
                last = range.end;
            }
            text.push_str(&s[last..]);
            Value::String(text)
        }
        other => other.clone(),
    })
}

fn fetch(task: &str, output: &dyn Fn(&str) -> Option<Value>) -> Result<Value> {
    output(task).ok_or_else(|| {
        Error::new(
            ErrorCode::InvalidArgs,
            format!("the output of {task} is not there (is {task} in depends_on?)"),
        )
    })
}

/// The part of `v` that `pointer` names; `*` maps over an array.
fn select_ref(v: &Value, pointer: &str, task: &str) -> Result<Value> {
    if pointer.is_empty() {
        return Ok(v.clone());
    }
    let segments: Vec<String> = pointer[1..]
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    walk(v, &segments, pointer, task)
}

fn walk(v: &Value, segments: &[String], pointer: &str, task: &str) -> Result<Value> {
    let Some((first, rest)) = segments.split_first() else {
        return Ok(v.clone());
    };
    let missing = || {
        Error::invalid_args(format!(
            "{task}{pointer} names nothing in the output of {task}"
        ))
    };
    match v {
        Value::Array(a) if first == "*" => Ok(Value::Array(
            a.iter()
                .map(|e| walk(e, rest, pointer, task))
                .collect::<Result<_>>()?,
        )),
        Value::Array(a) => {
            let i: usize = first.parse().map_err(|_| missing())?;
            walk(a.get(i).ok_or_else(missing)?, rest, pointer, task)
        }
        Value::Object(o) => walk(o.get(first).ok_or_else(missing)?, rest, pointer, task),
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn outputs(task: &str) -> Option<Value> {
        match task {
            "rows" => Some(
                json!({"rows": [{"item": "pen", "amount": 1.5}, {"item": "ink", "amount": 2.25}], "row_count": 2}),
            ),
            "total" => Some(json!(3.75)),
            "name" => Some(json!("Ada")),
            _ => None,
        }
    }

    #[test]
    fn references_and_templates_are_found_and_resolved() {
        let p = json!({
            "args": {"$ref": "rows", "path": "/rows/*/amount"},
            "first": {"$ref": "rows", "path": "/rows/0/item"},
            "all": {"$ref": "total"},
            "nested": [{"x": {"$ref": "name"}}],
            "body": "Dear {{name}}, the total is {{total}} ({{ rows/row_count }} rows). {{not a ref}} {{}}",
        });
        let p = p.as_object().unwrap();
        let deps = ["rows".to_string(), "total".to_string(), "name".to_string()];
        assert_eq!(
            referenced(p, &deps)
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            ["name", "rows", "total"]
        );
        let r = resolve(p, &deps, &outputs, 1 << 20).unwrap();
        assert_eq!(r["args"], json!([1.5, 2.25]));
        assert_eq!(r["first"], "pen");
        assert_eq!(r["all"], 3.75);
        assert_eq!(r["nested"], json!([{"x": "Ada"}]));
        assert_eq!(
            r["body"],
            "Dear Ada, the total is 3.75 (2 rows). {{not a ref}} {{}}"
        );
    }

    #[test]
    fn bad_references_are_named() {
        let deps = ["rows".to_string()];
        let missing = json!({"a": {"$ref": "rows", "path": "/rows/5/item"}});
        let e = resolve(missing.as_object().unwrap(), &deps, &outputs, 1 << 20).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgs);
        assert!(e.message.contains("rows/rows/5/item"), "{e}");
        for bad in [
            json!({"a": {"$ref": 5}}),
            json!({"a": {"$ref": "t 1"}}),
            json!({"a": {"$ref": "t1", "path": "rows"}}),
            json!({"a": {"$ref": "t1", "extra": 1}}),
        ] {
            assert!(
                referenced(bad.as_object().unwrap(), &deps).is_err(),
                "{bad}"
            );
        }
        // {{…}} naming no dependency is text, left as it is.
        let text = json!({"a": "Hello {{name}}, {{ rows/row_count }}"});
        let text = text.as_object().unwrap();
        assert!(has_refs(text, &deps));
        assert_eq!(referenced(text, &deps).unwrap().len(), 1);
        let r = resolve(text, &deps, &outputs, 1 << 20).unwrap();
        assert_eq!(r["a"], "Hello {{name}}, 2");
        // Many uses of one output stop at the budget, before copying.
        let many: Vec<Value> = (0..10_000).map(|_| json!({"$ref": "rows"})).collect();
        let many = json!({"a": many, "b": "{{rows}}".repeat(10_000)});
        let e = resolve(many.as_object().unwrap(), &deps, &outputs, 64 * 1024).unwrap_err();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
        let none = json!({"a": "{{ not one }}", "b": [1]});
        assert!(!has_refs(none.as_object().unwrap(), &deps));
    }
}
