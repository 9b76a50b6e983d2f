//! Dependency tracking for the plans a router dispatches. A plan's tasks are
//! `Waiting` until every `depends_on` succeeded, `Dispatched` once queued (or
//! once their failure is being recorded) and `Done` when their result arrived.
//! A failed dependency fails its dependents with `dependency_failed`, so every
//! task of a plan ends terminal and the plan completes.

use jetmesh_shared::wire::{Plan, Subtask};
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

    /// A task finished. Returns the dependents to dispatch or fail.
    pub fn on_result(&mut self, task_id: &str, success: bool) -> Vec<Action> {
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
        let mut out = Vec::new();
        for j in self.dependents[i].clone() {
            if self.state[j] != State::Waiting {
                continue;
            }
            if success {
                self.waiting_on[j] -= 1;
                if self.waiting_on[j] == 0 {
                    self.state[j] = State::Dispatched;
                    self.waiting -= 1;
                    out.push(Action::Dispatch(self.plan.subtasks[j].clone()));
                }
            } else {
                self.state[j] = State::Dispatched;
                self.waiting -= 1;
                out.push(Action::Fail {
                    task_id: self.plan.subtasks[j].id.clone(),
                    error: Error::new(
                        ErrorCode::DependencyFailed,
                        format!("dependency {task_id} failed, so this task was not run"),
                    ),
                });
            }
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
        assert!(p.on_result("t2", true).is_empty());
        assert_eq!(ids(&p.on_result("t1", true)), ["run:t4"]);
        assert!(p.on_result("t1", true).is_empty(), "duplicates are ignored");
        assert!(!p.is_done());
        assert!(!p.has_waiting(), "t4 is dispatched; nothing waits");
        p.on_result("t4", true);
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
        assert!(p.on_result("a", true).is_empty(), "c still waits for b");
        assert_eq!(ids(&p.on_result("b", false)), ["fail:c"]);
        assert_eq!(ids(&p.on_result("c", false)), ["fail:d"]);
        p.on_result("d", false);
        assert!(p.is_done());
    }
}
