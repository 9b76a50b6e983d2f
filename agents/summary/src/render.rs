//! Rendering a report: the JSON structure and its markdown for people.

use jetmesh_shared::wire::{
    PlanOutline, PlanRecord, PlanStatus, Report, ReportTask, TaskResult, TaskStatus,
};
use std::collections::HashMap;
use std::fmt::Write;

/// The report of a plan whose results are `results` (by task id).
pub fn report(
    record: &PlanRecord<PlanOutline>,
    results: &HashMap<String, TaskResult>,
    now: jiff::Timestamp,
) -> Report {
    let plan = &record.plan;
    let tasks: Vec<ReportTask> = plan
        .subtasks
        .iter()
        .map(|t| {
            let r = results.get(&t.id);
            ReportTask {
                id: t.id.clone(),
                capability: t.capability.clone(),
                action: t.action.clone(),
                status: match r {
                    Some(r) if r.is_success() => TaskStatus::Success,
                    Some(_) => TaskStatus::Error,
                    None => TaskStatus::Pending,
                },
                output: r.and_then(|r| r.output.clone()),
                error: r.and_then(|r| r.error.clone()),
                duration_ms: r.map(|r| r.duration_ms).unwrap_or(0),
                worker: r.and_then(|r| r.worker.clone()),
                attempt: r.map(|r| r.attempt).unwrap_or(0),
                depends_on: t.depends_on.clone(),
            }
        })
        .collect();
    let completed = tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Success)
        .count();
    let pending = tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Pending)
        .count();
    let failed = tasks.len() - completed - pending;
    let duration = now.duration_since(record.created_at);
    let mut report = Report {
        plan_id: plan.plan_id.clone(),
        goal: plan.goal.clone(),
        status: PlanStatus::Completed,
        total_tasks: tasks.len(),
        completed,
        failed,
        pending,
        duration_ms: duration.as_millis().max(0) as u64,
        created_at: record.created_at,
        finished_at: now,
        tasks,
        narrative: None,
        narrative_error: None,
        llm: jetmesh_shared::wire::LlmUsage::of(record.llm.clone()),
        markdown: String::new(),
        truncated: false,
    };
    report.markdown = markdown(&report);
    report
}

/// Title, goal and counts.
pub fn markdown_header(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Plan {}", r.plan_id);
    if let Some(goal) = &r.goal {
        let _ = writeln!(md, "\nGoal: {goal}");
    }
    let _ = writeln!(
        md,
        "\n{} tasks: {} succeeded, {} failed, {} pending — {} ms\n",
        r.total_tasks, r.completed, r.failed, r.pending, r.duration_ms
    );
    if let Some(n) = &r.narrative {
        let _ = writeln!(md, "## Summary\n\n{n}\n\n## Tasks\n");
    } else if let Some(e) = &r.narrative_error {
        let _ = writeln!(md, "_No narrative: {} ({})._\n", e.message, e.code);
    }
    if let Some(u) = &r.llm {
        let _ = writeln!(
            md,
            "LLM: {} calls, {} input and {} output tokens, ${:.6}\n",
            u.calls.iter().filter(|c| c.called()).count(),
            u.input_tokens,
            u.output_tokens,
            u.cost_usd
        );
    }
    md
}

/// The whole report as markdown: the header and one table row per task.
pub fn markdown(r: &Report) -> String {
    let mut md = markdown_header(r);
    md.push_str("| Task | Capability | Action | Status | Output or error | Duration |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    for t in &r.tasks {
        let (status, detail) = match (&t.status, &t.error, &t.output) {
            (TaskStatus::Success, _, output) => {
                ("success", output.as_ref().map(compact).unwrap_or_default())
            }
            (TaskStatus::Pending, _, _) => ("pending", String::new()),
            (_, Some(e), _) => ("failed", format!("{}: {}", e.code, e.message)),
            _ => ("failed", String::new()),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} ms |",
            t.id,
            t.capability,
            t.action,
            status,
            cell(&detail),
            t.duration_ms
        );
    }
    md
}

/// One output in a cell: a string as is; a page (url and title) as its
/// title, URL and status; an object-store reference as where to fetch it;
/// anything else as JSON.
fn compact(v: &serde_json::Value) -> String {
    use serde_json::Value;
    if let Value::String(s) = v {
        return s.clone();
    }
    if let Some(o) = v.get("object").filter(|o| o.get("key").is_some()) {
        let mut s = format!(
            "object {} in {} ({} bytes",
            o["key"].as_str().unwrap_or(""),
            o["bucket"].as_str().unwrap_or(""),
            o["size"]
        );
        if let (Some(w), Some(h)) = (v["width"].as_u64(), v["height"].as_u64()) {
            let _ = write!(s, ", {w}×{h}");
        }
        if let Some(t) = o["content_type"].as_str() {
            let _ = write!(s, ", {t}");
        }
        s.push(')');
        return s;
    }
    if let (Some(url), Some(title)) = (v["url"].as_str(), v["title"].as_str()) {
        return match v["status"].as_u64() {
            Some(status) => format!("\"{title}\" {url} ({status})"),
            None => format!("\"{title}\" {url}"),
        };
    }
    v.to_string()
}

/// One table cell: no pipes or newlines, at most 120 characters.
fn cell(s: &str) -> String {
    let flat: String = s.replace('|', "\\|").replace(['\n', '\r'], " ");
    if flat.chars().count() > 120 {
        let cut: String = flat.chars().take(117).collect();
        format!("{cut}...")
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetmesh_shared::{Error, ErrorCode};
    use serde_json::json;

    #[test]
    fn report_lists_every_task_with_output_error_and_duration() {
        // The outline skips the parameters of a stored subtask.
        let plan: PlanOutline =
            serde_json::from_value(json!({"plan_id":"abc","goal":"demo","subtasks":[
                {"id":"t1","type":"math","action":"sum","args":[1,2,3]},
                {"id":"t2","type":"math","action":"divide","args":[1,0]},
                {"id":"t3","type":"date","action":"today"}
            ]}))
            .unwrap();
        let created = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let record = PlanRecord {
            v: 1,
            plan,
            status: PlanStatus::Running,
            created_at: created,
            finished_at: None,
            accepted_by: None,
            term: None,
            llm: Vec::new(),
            trace: None,
        };
        let mut results = HashMap::new();
        let mut ok = TaskResult::success(json!(6));
        ok.duration_ms = 3;
        results.insert("t1".to_string(), ok);
        results.insert(
            "t2".to_string(),
            TaskResult::failure(&Error::new(
                ErrorCode::capability("division_by_zero"),
                "cannot divide | by zero",
            )),
        );
        let r = report(
            &record,
            &results,
            created + jiff::SignedDuration::from_millis(42),
        );
        assert_eq!(
            (r.total_tasks, r.completed, r.failed, r.pending),
            (3, 1, 1, 1)
        );
        assert_eq!(r.duration_ms, 42);
        assert!(
            r.markdown
                .contains("| t1 | math | sum | success | 6 | 3 ms |"),
            "{}",
            r.markdown
        );
        assert!(
            r.markdown
                .contains("division_by_zero: cannot divide \\| by zero"),
            "{}",
            r.markdown
        );
        assert!(
            r.markdown.contains("| t3 | date | today | pending |"),
            "{}",
            r.markdown
        );
        assert!(r.markdown.contains("Goal: demo"));
    }

    #[test]
    fn pages_and_objects_read_well() {
        assert_eq!(
            compact(&json!({"url": "http://a/", "title": "Shop", "status": 200, "text": "long"})),
            "\"Shop\" http://a/ (200)"
        );
        assert_eq!(
            compact(
                &json!({"object": {"bucket": "mesh_objects", "key": "p/t/screenshot.png",
                "size": 1234, "sha256": "ab", "content_type": "image/png"}, "width": 1280, "height": 800})
            ),
            "object p/t/screenshot.png in mesh_objects (1234 bytes, 1280×800, image/png)"
        );
    }
}
