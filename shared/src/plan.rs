//! Plan normalization and validation: ids, duplicates, unknown dependencies,
//! cycles and size, plus the registry check (every capability and action must be
//! served by some pool). Pure functions, so the planner, the chief and the CLI
//! agree on what a valid plan is.

use crate::error::{Error, ErrorCode, Result};
use crate::ids;
use crate::registry::Registered;
use crate::wire::Plan;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// When a plan accepted at `created_at` with `deadline_ms` runs out of time.
pub fn deadline(created_at: jiff::Timestamp, deadline_ms: Option<u64>) -> Option<jiff::Timestamp> {
    let ms = i64::try_from(deadline_ms?).unwrap_or(i64::MAX);
    created_at
        .checked_add(jiff::SignedDuration::from_millis(ms))
        .ok()
}

/// Fills defaults (plan id, task ids `t<n>`) and checks the plan's shape.
/// Registry-independent: see [`check_capabilities`] for that part.
pub fn normalize(plan: &mut Plan, max_subtasks: usize) -> Result<()> {
    if plan.plan_id.is_empty() {
        plan.plan_id = ids::generate();
    }
    ids::validate("plan id", &plan.plan_id)?;
    if plan.subtasks.is_empty() {
        return Err(Error::bad_request(
            "the plan has no subtasks (give \"subtasks\", or a \"goal\" for the planner)",
        ));
    }
    if plan.deadline_ms == Some(0) {
        return Err(Error::bad_request("deadline_ms must be greater than 0"));
    }
    if plan.subtasks.len() > max_subtasks {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the plan has {} subtasks; the maximum is {max_subtasks}",
                plan.subtasks.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(plan.subtasks.len());
    for (i, task) in plan.subtasks.iter_mut().enumerate() {
        if task.id.is_empty() {
            task.id = format!("t{}", i + 1);
        }
        ids::validate("task id", &task.id)?;
        ids::validate(
            format_args!("capability of task {}", task.id),
            &task.capability,
        )?;
        ids::validate(format_args!("action of task {}", task.id), &task.action)?;
        if let Some(session) = &task.session {
            ids::validate(format_args!("session of task {}", task.id), session)?;
        }
        if task.timeout_ms == Some(0) {
            return Err(Error::bad_request(format!(
                "task {}: timeout_ms must be greater than 0",
                task.id
            )));
        }
        if !seen.insert(task.id.clone()) {
            return Err(Error::new(
                ErrorCode::DuplicateTaskId,
                format!("task id {:?} appears more than once", task.id),
            ));
        }
    }
    for task in &plan.subtasks {
        for dep in &task.depends_on {
            if dep == &task.id {
                return Err(Error::new(
                    ErrorCode::DependencyCycle,
                    format!("task {} depends on itself", task.id),
                ));
            }
            if !seen.contains(dep) {
                return Err(Error::new(
                    ErrorCode::UnknownDependency,
                    format!(
                        "task {} depends on {dep:?}, which is not in the plan",
                        task.id
                    ),
                ));
            }
        }
        // An output a task uses must be stored before it runs.
        let uses = crate::refs::referenced(&task.params, &task.depends_on)
            .map_err(|e| Error::invalid_args(format!("task {}: {}", task.id, e.message)))?;
        if let Some(r) = uses.iter().find(|r| !task.depends_on.contains(r)) {
            return Err(Error::new(
                ErrorCode::UnknownDependency,
                format!(
                    "task {} uses the output of {r:?} (\"$ref\"), which is not in its depends_on",
                    task.id
                ),
            ));
        }
    }
    check_acyclic(plan)
}

/// Errors (`dependency_cycle`) when the dependencies form a cycle.
fn check_acyclic(plan: &Plan) -> Result<()> {
    topological_order(plan).map(|_| ())
}

/// The tasks' indexes in an order that respects the dependencies, each
/// task as early in plan order as they allow (Kahn's algorithm, taking the
/// lowest ready index first). On a cycle, names the tasks that are part of
/// or behind it.
fn topological_order(plan: &Plan) -> Result<Vec<usize>> {
    let index: HashMap<&str, usize> = plan
        .subtasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let mut indegree: Vec<usize> = plan.subtasks.iter().map(|t| t.depends_on.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); plan.subtasks.len()];
    for (i, t) in plan.subtasks.iter().enumerate() {
        for d in &t.depends_on {
            dependents[index[d.as_str()]].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..indegree.len())
        .filter(|&i| indegree[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(indegree.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(Reverse(j));
            }
        }
    }
    if order.len() == plan.subtasks.len() {
        return Ok(order);
    }
    let stuck: Vec<&str> = plan
        .subtasks
        .iter()
        .enumerate()
        .filter(|(i, _)| indegree[*i] > 0)
        .map(|(_, t)| t.id.as_str())
        .take(10)
        .collect();
    Err(Error::new(
        ErrorCode::DependencyCycle,
        format!(
            "the dependencies form a cycle among tasks {}",
            stuck.join(", ")
        ),
    ))
}

/// Orders the tasks of each session of a capability that keeps sessions
/// (`keeps(capability)`, e.g. `web`): each depends on the session's previous
/// task in dependency-respecting plan order, so they run one at a time on
/// the worker holding the session. A session is the task's `session`, or
/// else its plan. Adds no cycle (the edges follow a topological order).
/// Returns how many dependencies it added.
pub fn order_sessions(plan: &mut Plan, keeps: impl Fn(&str) -> bool) -> Result<usize> {
    if !plan.subtasks.iter().any(|t| keeps(&t.capability)) {
        return Ok(0);
    }
    let order = topological_order(plan)?;
    let mut added = 0;
    let mut last: HashMap<(String, String), String> = HashMap::new();
    for i in order {
        let t = &plan.subtasks[i];
        if !keeps(&t.capability) {
            continue;
        }
        let session = t.session.clone().unwrap_or_else(|| plan.plan_id.clone());
        let id = t.id.clone();
        if let Some(prev) = last.insert((t.capability.clone(), session), id)
            && !plan.subtasks[i].depends_on.contains(&prev)
        {
            plan.subtasks[i].depends_on.push(prev);
            added += 1;
        }
    }
    Ok(added)
}

/// Checks every subtask's capability, action and parameters against the
/// registry (the action's schema, where the entry has one). A task that uses
/// earlier outputs ([`crate::refs`]) meets its schema when the router has
/// put them in, before it is dispatched.
pub fn check_capabilities<'a>(
    plan: &Plan,
    lookup: impl Fn(&str) -> Option<&'a Registered>,
) -> Result<()> {
    for task in &plan.subtasks {
        let entry = check_one(&task.id, &task.capability, &task.action, &lookup)?;
        if !crate::refs::has_refs(&task.params, &task.depends_on) {
            entry.check_params(&task.id, &task.action, &task.params)?;
        }
    }
    Ok(())
}

/// Checks one capability/action pair; `what` names the task in the message.
pub fn check_one<'a>(
    what: &str,
    capability: &str,
    action: &str,
    lookup: impl Fn(&str) -> Option<&'a Registered>,
) -> Result<&'a Registered> {
    let Some(entry) = lookup(capability) else {
        return Err(Error::new(
            ErrorCode::UnknownCapability,
            format!("task {what}: no pool serves capability {capability:?}"),
        ));
    };
    if !entry.actions.iter().any(|a| a == action) {
        return Err(Error::new(
            ErrorCode::UnknownAction,
            format!(
                "task {what}: capability {capability:?} has no action {action:?} (it has: {})",
                entry.actions.join(", ")
            ),
        ));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outputs_used_must_be_dependencies() {
        let mut ok: Plan = serde_json::from_value(json!({"subtasks": [
            {"id": "a", "type": "m", "action": "x"},
            {"id": "b", "type": "m", "action": "x", "depends_on": ["a"], "args": {"$ref": "a"}, "s": "{{a/rows/0}}"}
        ]}))
        .unwrap();
        normalize(&mut ok, 100).unwrap();
        let mut p: Plan = serde_json::from_value(json!({"subtasks": [
            {"id": "a", "type": "m", "action": "x"},
            {"id": "b", "type": "m", "action": "x", "args": {"$ref": "a"}}
        ]}))
        .unwrap();
        assert_eq!(
            normalize(&mut p, 100).unwrap_err().code,
            ErrorCode::UnknownDependency
        );
        // Without the dependency, {{a}} is text.
        let mut text: Plan = serde_json::from_value(json!({"subtasks": [
            {"id": "a", "type": "m", "action": "x"},
            {"id": "b", "type": "m", "action": "x", "s": "total: {{a}}"}
        ]}))
        .unwrap();
        normalize(&mut text, 100).unwrap();
    }

    #[test]
    fn a_deadline_counts_from_acceptance() {
        let at: jiff::Timestamp = "2026-11-21T12:00:00Z".parse().unwrap();
        assert_eq!(deadline(at, None), None);
        assert_eq!(
            deadline(at, Some(1500)),
            Some("2026-11-21T12:00:01.5Z".parse().unwrap())
        );
        assert_eq!(deadline(at, Some(u64::MAX)), None, "past the end of time");
    }

    fn plan(v: serde_json::Value) -> Plan {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn fills_ids_and_accepts_the_seed_plan() {
        let mut p = plan(json!({"subtasks":[
            {"type":"math","action":"sum","args":[1]},
            {"type":"math","action":"sum","args":[2],"depends_on":["t1"]}
        ]}));
        normalize(&mut p, 100).unwrap();
        assert_eq!(p.plan_id.len(), 32);
        assert_eq!(p.subtasks[0].id, "t1");
        assert_eq!(p.subtasks[1].id, "t2");
    }

    #[test]
    fn rejects_bad_shapes_with_stable_codes() {
        let cases = [
            (json!({"subtasks":[]}), ErrorCode::BadRequest),
            (
                json!({"plan_id":"a.b","subtasks":[{"type":"m","action":"a"}]}),
                ErrorCode::InvalidId,
            ),
            (
                json!({"subtasks":[{"id":"x y","type":"m","action":"a"}]}),
                ErrorCode::InvalidId,
            ),
            (
                json!({"subtasks":[{"id":"a","type":"m*","action":"a"}]}),
                ErrorCode::InvalidId,
            ),
            (
                json!({"subtasks":[{"id":"a","type":"m","action":"a"},{"id":"a","type":"m","action":"a"}]}),
                ErrorCode::DuplicateTaskId,
            ),
            (
                json!({"subtasks":[{"id":"a","type":"m","action":"a","depends_on":["zz"]}]}),
                ErrorCode::UnknownDependency,
            ),
            (
                json!({"subtasks":[{"id":"a","type":"m","action":"a","depends_on":["a"]}]}),
                ErrorCode::DependencyCycle,
            ),
            (
                json!({"subtasks":[
                    {"id":"a","type":"m","action":"x","depends_on":["c"]},
                    {"id":"b","type":"m","action":"x","depends_on":["a"]},
                    {"id":"c","type":"m","action":"x","depends_on":["b"]},
                    {"id":"d","type":"m","action":"x"}
                ]}),
                ErrorCode::DependencyCycle,
            ),
            (
                json!({"subtasks":[{"id":"a","type":"m","action":"a","timeout_ms":0}]}),
                ErrorCode::BadRequest,
            ),
        ];
        for (v, code) in cases {
            let mut p = plan(v.clone());
            assert_eq!(normalize(&mut p, 100).unwrap_err().code, code, "{v}");
        }
        let mut big =
            plan(json!({"subtasks":[{"type":"m","action":"a"},{"type":"m","action":"a"}]}));
        assert_eq!(
            normalize(&mut big, 1).unwrap_err().code,
            ErrorCode::PayloadTooLarge
        );
    }

    #[test]
    fn cycle_message_names_the_tasks() {
        let mut p = plan(json!({"subtasks":[
            {"id":"a","type":"m","action":"x","depends_on":["b"]},
            {"id":"b","type":"m","action":"x","depends_on":["a"]}
        ]}));
        let e = normalize(&mut p, 10).unwrap_err();
        assert!(e.message.contains("a, b"), "{}", e.message);
    }

    #[test]
    fn tasks_of_a_session_are_chained_in_plan_order() {
        let mut p = plan(json!({"plan_id":"p","subtasks":[
            {"id":"shot","type":"web","action":"screenshot","depends_on":["click"]},
            {"id":"nav","type":"web","action":"navigate","url":"http://x"},
            {"id":"m","type":"math","action":"sum","args":[1]},
            {"id":"click","type":"web","action":"click","selector":"a"},
            {"id":"other","type":"web","action":"navigate","url":"http://y","session":"s2"},
            {"id":"other2","type":"web","action":"extract","session":"s2"}
        ]}));
        normalize(&mut p, 100).unwrap();
        order_sessions(&mut p, |c| c == "web").unwrap();
        let deps = |id: &str| {
            p.subtasks
                .iter()
                .find(|t| t.id == id)
                .unwrap()
                .depends_on
                .clone()
        };
        assert_eq!(deps("nav"), Vec::<String>::new());
        assert_eq!(deps("click"), ["nav"]);
        assert_eq!(deps("shot"), ["click"]);
        assert_eq!(deps("m"), Vec::<String>::new());
        assert_eq!(deps("other"), Vec::<String>::new());
        assert_eq!(deps("other2"), ["other"]);
        check_acyclic(&p).unwrap();
    }

    #[test]
    fn registry_check() {
        let math = crate::registry::check(
            "cap.math",
            json!({"capability":"math","actions":["sum"],"pool":"math","schemas":{"sum":{
                "params":{"type":"object","required":["args"],
                          "properties":{"args":{"type":"array","items":{"type":"number"}}}}}}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let lookup = |c: &str| (c == "math").then_some(&math);
        let ok = plan(json!({"subtasks":[{"type":"math","action":"sum","args":[1]}]}));
        check_capabilities(&ok, lookup).unwrap();
        let bad =
            plan(json!({"subtasks":[{"id":"s","type":"math","action":"sum","args":[1,"x"]}]}));
        let e = check_capabilities(&bad, lookup).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgs);
        assert!(
            e.message.contains("task s") && e.message.contains("args[1]"),
            "{}",
            e.message
        );
        let bad = plan(json!({"subtasks":[{"type":"math","action":"sum"}]}));
        let e = check_capabilities(&bad, lookup).unwrap_err();
        assert!(e.message.contains("args is required"), "{}", e.message);
        let bad = plan(json!({"subtasks":[{"type":"email","action":"send"}]}));
        assert_eq!(
            check_capabilities(&bad, lookup).unwrap_err().code,
            ErrorCode::UnknownCapability
        );
        let bad = plan(json!({"subtasks":[{"type":"math","action":"pow"}]}));
        assert_eq!(
            check_capabilities(&bad, lookup).unwrap_err().code,
            ErrorCode::UnknownAction
        );
    }
}
