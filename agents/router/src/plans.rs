//! Dependency tracking for the plans a router dispatches. A plan's tasks are
//! `Waiting` until every `depends_on` succeeded, `Dispatched` once queued (or
//! once their failure is being recorded) and `Done` when their result arrived.
//! A failed task fails every task that depends on it, directly or through
//! others, at once, each with `dependency_failed` naming the task that failed
//! first (the root cause): one step, not one KV round trip per level. So
//! every task of a plan ends terminal and the plan completes.

use jetmesh_shared::wire::{ErrorBody, Plan, Subtask};
use jetmesh_shared::{Error, ErrorCode};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Dispatched,
    Done,
}

/// What the router must do next for a plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Dispatch(Subtask),
    Fail { task_id: String, error: Error },
}

pub struct PlanRun {
    plan: Arc<Plan>,
    /// The plan's deadline, passed on to workers with each task.
    pub deadline: Option<jiff::Timestamp>,
    /// The plan's trace context (`PlanRecord::trace`), the parent of each
    /// `plan.dispatch` span.
    pub trace: Option<String>,
    index: HashMap<String, usize>,
    dependents: Vec<Vec<usize>>,
    waiting_on: Vec<usize>,
    state: Vec<State>,
    done: usize,
    waiting: usize,
}

impl PlanRun {
    pub fn new(plan: Arc<Plan>) -> PlanRun {
        let index: HashMap<String, usize> = plan
            .subtasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        let mut dependents = vec![Vec::new(); plan.subtasks.len()];
        let mut waiting_on = vec![0; plan.subtasks.len()];
        for (i, t) in plan.subtasks.iter().enumerate() {
            for d in &t.depends_on {
                if let Some(&j) = index.get(d) {
                    dependents[j].push(i);
                    waiting_on[i] += 1;
                }
            }
        }
        PlanRun {
            deadline: None,
            trace: None,
            waiting: plan.subtasks.len(),
            state: vec![State::Waiting; plan.subtasks.len()],
            plan,
            index,
            dependents,
            waiting_on,
            done: 0,
        }
    }

    /// Tasks that can go now (no pending dependencies).
    pub fn start(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        for i in 0..self.state.len() {
            if self.state[i] == State::Waiting && self.waiting_on[i] == 0 {
                self.state[i] = State::Dispatched;
                self.waiting -= 1;
                out.push(Action::Dispatch(self.plan.subtasks[i].clone()));
            }
        }
        out
    }

    /// A task finished: `failure` is `None` for a success, else its error
    /// (code and message). Returns the dependents to dispatch or fail.
    pub fn on_result(&mut self, task_id: &str, failure: Option<&ErrorBody>) -> Vec<Action> {
        let Some(&i) = self.index.get(task_id) else {
            return Vec::new();
        };
        if self.state[i] == State::Done {
            return Vec::new();
        }
        if self.state[i] == State::Waiting {
            // A result for a task not dispatched by us (recovery, another router).
            self.waiting -= 1;
        }
        self.state[i] = State::Done;
        self.done += 1;
        let Some(failure) = failure else {
            let mut out = Vec::new();
            for j in self.dependents[i].clone() {
                if self.state[j] != State::Waiting {
                    continue;
                }
                self.waiting_on[j] -= 1;
                if self.waiting_on[j] == 0 {
                    self.state[j] = State::Dispatched;
                    self.waiting -= 1;
                    out.push(Action::Dispatch(self.plan.subtasks[j].clone()));
                }
            }
            return out;
        };
        // Every task that waits on this one, directly or through others,
        // fails now, naming this one. A failure that is itself
        // `dependency_failed` (read back after a restart) already names its
        // root cause, which is passed on.
        let cause = if failure.code == ErrorCode::DependencyFailed.as_str() {
            failure.message.clone()
        } else {
            format!(
                "task {task_id} failed ({}: {}), and this task depends on it",
                failure.code, failure.message
            )
        };
        let mut out = Vec::new();
        let mut stack = self.dependents[i].clone();
        while let Some(j) = stack.pop() {
            if self.state[j] != State::Waiting {
                continue;
            }
            self.state[j] = State::Dispatched;
            self.waiting -= 1;
            stack.extend(self.dependents[j].iter().copied());
            out.push(Action::Fail {
                task_id: self.plan.subtasks[j].id.clone(),
                error: Error::new(ErrorCode::DependencyFailed, format!("not run: {cause}")),
            });
        }
        out
    }

    pub fn is_done(&self) -> bool {
        self.done == self.state.len()
    }

    /// Whether some task still waits for its dependencies. When none does, the
    /// router has nothing left to release and need not follow the plan.
    pub fn has_waiting(&self) -> bool {
        self.waiting > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(v: serde_json::Value) -> PlanRun {
        PlanRun::new(Arc::new(serde_json::from_value(v).unwrap()))
    }

    fn failed(code: &str) -> ErrorBody {
        ErrorBody {
            code: code.into(),
            message: "it broke".into(),
            retry_after_ms: None,
            details: None,
        }
    }

    fn ids(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Dispatch(t) => format!("run:{}", t.id),
                Action::Fail { task_id, .. } => format!("fail:{task_id}"),
            })
            .collect()
    }

    #[test]
    fn dependencies_hold_and_release() {
        let mut p = run(json!({"plan_id":"p","subtasks":[
            {"id":"t1","type":"math","action":"sum"},
            {"id":"t2","type":"date","action":"today"},
            {"id":"t4","type":"math","action":"multiply","depends_on":["t1"]}
        ]}));
        assert_eq!(ids(&p.start()), ["run:t1", "run:t2"]);
        assert!(p.on_result("t2", None).is_empty());
        assert_eq!(ids(&p.on_result("t1", None)), ["run:t4"]);
        assert!(p.on_result("t1", None).is_empty(), "duplicates are ignored");
        assert!(!p.is_done());
        assert!(!p.has_waiting(), "t4 is dispatched; nothing waits");
        p.on_result("t4", None);
        assert!(p.is_done());
    }

    #[test]
    fn failure_cascades_and_diamonds_wait_for_both() {
        let mut p = run(json!({"plan_id":"p","subtasks":[
            {"id":"a","type":"m","action":"x"},
            {"id":"b","type":"m","action":"x"},
            {"id":"c","type":"m","action":"x","depends_on":["a","b"]},
            {"id":"d","type":"m","action":"x","depends_on":["c"]}
        ]}));
        assert_eq!(ids(&p.start()), ["run:a", "run:b"]);
        assert!(p.has_waiting());
        assert!(p.on_result("a", None).is_empty(), "c still waits for b");
        let failed_now = p.on_result("b", Some(&failed("division_by_zero")));
        assert_eq!(
            ids(&failed_now),
            ["fail:c", "fail:d"],
            "at once, not level by level"
        );
        for a in &failed_now {
            let Action::Fail { error, .. } = a else {
                panic!()
            };
            assert_eq!(error.code, ErrorCode::DependencyFailed);
            assert!(
                error.message.contains("task b failed (division_by_zero"),
                "{}",
                error.message
            );
        }
        assert!(!p.has_waiting());
        // Their results come back: nothing more to do.
        assert!(
            p.on_result("c", Some(&failed("dependency_failed")))
                .is_empty()
        );
        assert!(
            p.on_result("d", Some(&failed("dependency_failed")))
                .is_empty()
        );
        assert!(p.is_done());
    }

    #[test]
    fn a_root_cause_read_back_after_a_restart_is_passed_on() {
        // A previous router failed b because a failed, and died before it
        // failed c: b's stored message names a, and so does c's.
        let b = ErrorBody {
            code: "dependency_failed".into(),
            message: "not run: task a failed (timeout: slow), and this task depends on it".into(),
            retry_after_ms: None,
            details: None,
        };
        let mut p = run(json!({"plan_id":"p","subtasks":[
            {"id":"b","type":"m","action":"x"},
            {"id":"c","type":"m","action":"x","depends_on":["b"]}
        ]}));
        let out = p.on_result("b", Some(&b));
        let Some(Action::Fail { task_id, error }) = out.first() else {
            panic!("{out:?}")
        };
        assert_eq!(task_id, "c");
        assert!(
            error.message.contains("task a failed (timeout"),
            "{}",
            error.message
        );
    }
}
