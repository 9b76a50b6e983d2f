//! Epics (seed 2) on a real mesh: a scripted agent (examples/agents/
//! scripted_agent.py) edits files in a temporary git repository while the
//! chief orchestrates tracks, beads, reservations, mail and blockers.

use jetmesh_coord::wire::{EpicState, Mail, MailKind};
use jetmesh_coord::{mail, state};
use jetmesh_shared::config::PoolConfig;
use jetmesh_shared::names::Thread;
use jetmesh_shared::{Config, Mesh};
use jetmesh_tests::{InProcessMesh, NatsServer, Proc, python, request_json, root, test_config};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git runs")
        .success();
    assert!(ok, "git {args:?}");
}

/// A git repository with one commit.
fn repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("README.md"), "# project\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(
        &repo,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "init",
        ],
    );
    repo
}

fn epic_config(url: &str, repo: &Path) -> Config {
    let mut c = test_config(url);
    let mut agent = PoolConfig::new("agent", 4);
    agent.max_deliver = 20;
    agent.ack_wait_secs = 4;
    c.pools.insert("agent".into(), agent);
    c.agent.commands.insert(
        "scripted".into(),
        vec![
            python().display().to_string(),
            root()
                .join("examples/agents/scripted_agent.py")
                .display()
                .to_string(),
        ],
    );
    c.agent.default_command = "scripted".into();
    c.agent.roots = vec![repo.parent().unwrap().to_path_buf()];
    c.agent.workdir = repo.to_path_buf();
    c.coord.lease_ttl_secs = 3;
    c.coord.reserve_wait_secs = 5;
    c.chief.wait_timeout_ms = 60_000;
    c
}

async fn thread(mesh: &Mesh, epic: &str, t: Thread) -> Vec<Mail> {
    mail::read(mesh, &mesh.names.mail(epic, &t), None)
        .await
        .unwrap()
}

fn seq_of(mails: &[Mail], kind: MailKind, bead: &str) -> u64 {
    mails
        .iter()
        .find(|m| m.kind == kind && m.data.as_ref().is_some_and(|d| d["bead"] == bead))
        .and_then(|m| m.seq)
        .unwrap_or_else(|| panic!("no {kind:?} for {bead} in {:#?}", subjects(mails)))
}

fn subjects(mails: &[Mail]) -> Vec<String> {
    mails
        .iter()
        .map(|m| {
            format!(
                "#{} {:?} {} {}",
                m.seq.unwrap_or(0),
                m.kind,
                m.from,
                m.subject
            )
        })
        .collect()
}

/// Waits until the epic thread holds a message `pred` accepts.
async fn wait_mail(
    mesh: &Mesh,
    epic: &str,
    within: Duration,
    pred: impl Fn(&Mail) -> bool,
) -> Mail {
    let start = Instant::now();
    loop {
        let mails = thread(mesh, epic, Thread::Epic).await;
        if let Some(m) = mails.iter().find(|m| pred(m)) {
            return m.clone();
        }
        assert!(
            start.elapsed() < within,
            "not on the epic thread in time: {:#?}",
            subjects(&mails)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const PLAN: &str = "# Execution Plan: token refresh

Epic: E1
Workdir: {REPO}

## Tracks

| Track | Agent | Beads (in order) | File Scope |
|-------|-------|------------------|------------|
| 1 | BlueLake | bd-10 → bd-11 | `sdk/**` |
| 2 | GreenCastle | bd-20 → bd-21 | `server/**` |
| 3 | RedStone | bd-30 | `docs/**` |

### Track 1: BlueLake - SDK

- bd-10: Add the token type
  write sdk/token.txt token v1
  sleep 1.5
  learn tokens live in sdk/token.txt
- bd-11: Refresh tokens
  expect-learning tokens live in sdk/token.txt
  write sdk/refresh.txt refresh

### Track 2: GreenCastle - Server

- bd-20: Refresh endpoint
  write server/refresh.txt endpoint
- bd-21: Reject expired tokens
  write server/expiry.txt expiry

### Track 3: RedStone - Docs

- bd-30: Write the guide
  write docs/guide.md guide
  sleep 1.5

## Cross-Track Dependencies

- Track 2 starts after bd-11 (Track 1)
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_track_epic_runs_tracks_in_parallel_and_holds_its_dependency() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let m = InProcessMesh::start(epic_config(&server.url(), &repo)).await;
    let mesh = m.mesh.clone();

    // The markdown plan, as `nats req mesh.plans.submit "$(cat execution-plan.md)"` sends it.
    let plan = PLAN.replace("{REPO}", &repo.display().to_string());
    let reply = mesh
        .client
        .send_request(
            mesh.names.plans_submit(),
            async_nats::Request::new()
                .payload(plan.into())
                .timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let accepted: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(accepted["status"], "accepted", "{accepted}");
    assert_eq!(accepted["plan_id"], "E1");
    assert_eq!(accepted["total_tasks"], 5);

    let done = wait_mail(&mesh, "E1", Duration::from_secs(60), |m| {
        m.kind == MailKind::EpicComplete
    })
    .await;
    assert!(
        done.subject
            .starts_with("EPIC COMPLETE: E1 (5 done, 0 skipped, 0 failed)"),
        "{}",
        done.subject
    );
    assert_eq!(done.from, "chief");

    // Every bead did its work in the repository.
    let read = |p: &str| std::fs::read_to_string(repo.join(p)).unwrap_or_default();
    assert_eq!(read("sdk/token.txt"), "token v1\n");
    assert_eq!(read("sdk/refresh.txt"), "refresh\n");
    assert_eq!(read("server/refresh.txt"), "endpoint\n");
    assert_eq!(read("server/expiry.txt"), "expiry\n");
    assert_eq!(read("docs/guide.md"), "guide\n");

    let epic = thread(&mesh, "E1", Thread::Epic).await;
    for bead in ["bd-10", "bd-11", "bd-20", "bd-21", "bd-30"] {
        assert!(
            seq_of(&epic, MailKind::BeadStarted, bead)
                < seq_of(&epic, MailKind::BeadCompleted, bead)
        );
    }
    // Tracks 1 and 3 ran at the same time.
    assert!(
        seq_of(&epic, MailKind::BeadStarted, "bd-30")
            < seq_of(&epic, MailKind::BeadCompleted, "bd-10")
    );
    assert!(
        seq_of(&epic, MailKind::BeadStarted, "bd-10")
            < seq_of(&epic, MailKind::BeadCompleted, "bd-30")
    );
    // Track 2 waited for bd-11; beads of a track ran in order.
    assert!(
        seq_of(&epic, MailKind::BeadStarted, "bd-20")
            > seq_of(&epic, MailKind::BeadCompleted, "bd-11")
    );
    assert!(
        seq_of(&epic, MailKind::BeadStarted, "bd-11")
            > seq_of(&epic, MailKind::BeadCompleted, "bd-10")
    );
    assert!(
        seq_of(&epic, MailKind::BeadStarted, "bd-21")
            > seq_of(&epic, MailKind::BeadCompleted, "bd-20")
    );
    // The chief's progress reports and the unblocking of track 2.
    let progress: Vec<&Mail> = epic
        .iter()
        .filter(|m| m.kind == MailKind::Progress)
        .collect();
    assert!(
        progress
            .iter()
            .any(|m| m.subject.starts_with("Epic E1 started: 3 tracks, 5 beads"))
    );
    assert!(
        progress
            .iter()
            .any(|m| m.subject.starts_with("Progress: 5/5 beads done")),
        "{:#?}",
        subjects(&epic)
    );
    assert!(
        progress
            .iter()
            .any(|m| m.subject == "Track 2 (GreenCastle) is unblocked: bd-11 is done.")
    );

    // The learning of bd-10 reached bd-11 (its script fails without it) ...
    let t1 = thread(&mesh, "E1", Thread::Track("1".into())).await;
    let learning = t1
        .iter()
        .find(|m| m.kind == MailKind::Learning)
        .expect("a learning on track 1");
    assert_eq!(learning.body, "tokens live in sdk/token.txt");
    assert_eq!(learning.from, "BlueLake");
    assert!(
        t1.iter()
            .any(|m| m.kind == MailKind::Context && m.body.contains("bd-10: Add the token type"))
    );
    assert!(
        !epic.iter().any(|m| m.kind == MailKind::Blocker),
        "{:#?}",
        subjects(&epic)
    );
    // ... and track 2's thread heard it may start.
    let t2 = thread(&mesh, "E1", Thread::Track("2".into())).await;
    assert!(t2.iter().any(|m| m.subject.contains("unblocked")));
    // Each agent was assigned its track in its inbox.
    let inbox = thread(&mesh, "E1", Thread::Inbox("RedStone".into())).await;
    assert!(
        inbox[0].subject.contains("you have track 3"),
        "{}",
        inbox[0].subject
    );

    // Nothing is left claimed or reserved.
    assert!(state::reservations(&mesh, "E1").await.unwrap().is_empty());
    for bead in ["bd-10", "bd-11", "bd-20", "bd-21", "bd-30"] {
        assert!(state::claim_of(&mesh, "E1", bead).await.unwrap().is_none());
    }
    let (state, _) = state::state(&mesh, "E1").await.unwrap().unwrap();
    assert!(state.complete);
    assert_eq!(state.done.len(), 5);

    // The same plan cannot be submitted twice.
    let again = request_json(
        &mesh.client,
        &mesh.names.plans_submit(),
        &serde_json::to_value(
            jetmesh_coord::epic::parse_submission(&PLAN.replace("{REPO}", "x"), None).unwrap(),
        )
        .unwrap(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(again["error"]["code"], "duplicate_plan", "{again}");
    m.stop().await;
}

fn epic_json(repo: &Path, id: &str, tracks: Value, deps: Value) -> Value {
    json!({"epic": {"id": id, "workdir": repo, "tracks": tracks, "dependencies": deps}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_scopes_and_bad_mail_and_reservations_are_refused() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let m = InProcessMesh::start(epic_config(&server.url(), &repo)).await;
    let mesh = m.mesh.clone();
    let submit = |body: Value| {
        let mesh = mesh.clone();
        async move {
            request_json(
                &mesh.client,
                &mesh.names.plans_submit(),
                &body,
                Duration::from_secs(10),
            )
            .await
        }
    };

    // Overlapping scopes: refused at submit, naming both globs.
    let overlap = epic_json(
        &repo,
        "E2",
        json!([
            {"id": "1", "agent": "BlueLake", "scope": ["src/**"], "beads": [{"id": "b1"}]},
            {"id": "2", "agent": "RedStone", "scope": ["docs/**", "src/lib.rs"], "beads": [{"id": "b2"}]}
        ]),
        json!([]),
    );
    let r = submit(overlap.clone()).await;
    assert_eq!(r["error"]["code"], "scope_overlap", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("src/**") && msg.contains("src/lib.rs") && msg.contains("tracks[1]"),
        "{msg}"
    );
    // Ordered by a dependency, the same scopes are accepted.
    let mut ordered = overlap.clone();
    ordered["epic"]["dependencies"] = json!([{"track": "2", "after": "b1"}]);
    ordered["epic"]["tracks"][0]["beads"][0]["description"] = json!("sleep 30");
    let r = submit(ordered).await;
    assert_eq!(r["status"], "accepted", "{r}");

    // Malformed plans name the place.
    let cycle = epic_json(
        &repo,
        "E3",
        json!([
            {"id": "1", "agent": "A", "scope": ["a/**"], "beads": [{"id": "a1"}, {"id": "a2"}]},
            {"id": "2", "agent": "B", "scope": ["b/**"], "beads": [{"id": "b1"}]}
        ]),
        json!([{"track": "2", "after": "a2"}, {"bead": "a1", "after": "b1"}]),
    );
    let r = submit(cycle).await;
    assert_eq!(r["error"]["code"], "dependency_cycle", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("dependencies[1]"),
        "{r}"
    );
    let bad_md = "Epic: E4\n\n## Tracks\n\nno table here\n";
    let reply = mesh
        .client
        .request(mesh.names.plans_submit(), bad_md.into())
        .await
        .unwrap();
    let r: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(r["error"]["code"], "invalid_plan", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 3:"),
        "{r}"
    );

    // Mail: unknown threads and agents are refused; good mail is stored.
    let send = |body: Value| {
        let mesh = mesh.clone();
        async move {
            request_json(
                &mesh.client,
                &mesh.names.mailbox("send"),
                &body,
                Duration::from_secs(5),
            )
            .await
        }
    };
    let r = send(json!({"thread": "E9", "from": "operator", "subject": "hi"})).await;
    assert_eq!(r["error"]["code"], "unknown_thread", "{r}");
    let r = send(json!({"thread": "E2.track.7", "from": "operator", "subject": "hi"})).await;
    assert_eq!(r["error"]["code"], "unknown_thread", "{r}");
    let r = send(json!({"thread": "E2.inbox.Nobody", "from": "operator", "subject": "hi"})).await;
    assert_eq!(r["error"]["code"], "unknown_agent", "{r}");
    let r =
        send(json!({"thread": "E2", "from": "operator", "to": ["Ghost"], "subject": "hi"})).await;
    assert_eq!(r["error"]["code"], "unknown_agent", "{r}");
    let r = send(json!({"thread": "E2.nowhere", "from": "operator", "subject": "hi"})).await;
    assert_eq!(r["error"]["code"], "unknown_thread", "{r}");
    let r = send(json!({"thread": "E2", "from": "bad sender", "subject": "hi"})).await;
    assert_eq!(r["error"]["code"], "invalid_id", "{r}");
    let r = send(json!({"thread": "E2", "from": 5})).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = send(json!({"thread": "E2.inbox.BlueLake", "from": "operator", "subject": "Please check src", "body": "**now**", "ack_required": true, "importance": "high"})).await;
    let seq = r["seq"].as_u64().unwrap_or_else(|| panic!("{r}"));
    let reply = request_json(
        &mesh.client,
        &mesh.names.mailbox("reply"),
        &json!({"reply_to": seq, "from": "BlueLake", "body": "on it"}),
        Duration::from_secs(5),
    )
    .await;
    let ack = request_json(
        &mesh.client,
        &mesh.names.mailbox("ack"),
        &json!({"seq": seq, "agent": "BlueLake"}),
        Duration::from_secs(5),
    )
    .await;
    assert!(ack["seq"].as_u64().is_some(), "{ack}");
    let inbox = thread(&mesh, "E2", Thread::Inbox("BlueLake".into())).await;
    let original = inbox.iter().find(|m| m.seq == Some(seq)).unwrap();
    assert_eq!(
        (original.body.as_str(), original.ack_required),
        ("**now**", true)
    );
    let answer = inbox
        .iter()
        .find(|m| m.seq == reply["seq"].as_u64())
        .expect("the reply stays on its thread");
    assert_eq!(
        (answer.reply_to, answer.subject.as_str()),
        (Some(seq), "Re: Please check src")
    );
    assert!(mail::is_acked(&inbox, seq, "BlueLake"));
    // A decision must answer a blocker.
    let r = send(json!({"thread": "E2.inbox.BlueLake", "from": "operator", "kind": "decision", "reply_to": seq, "data": {"action": "retry"}})).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");

    // Reservations: bad globs, outside the scope, and conflicts (holder named).
    let reserve = |body: Value| {
        let mesh = mesh.clone();
        async move {
            request_json(
                &mesh.client,
                &mesh.names.coord("reserve"),
                &body,
                Duration::from_secs(5),
            )
            .await
        }
    };
    let r = reserve(json!({"epic": "E2", "agent": "RedStone", "patterns": ["docs/[oops"]})).await;
    assert_eq!(r["error"]["code"], "invalid_glob", "{r}");
    let r = reserve(json!({"epic": "E2", "agent": "RedStone", "patterns": ["../etc/**"]})).await;
    assert_eq!(r["error"]["code"], "invalid_glob", "{r}");
    let r = reserve(json!({"epic": "E2", "agent": "RedStone", "patterns": ["sdk/x.rs"]})).await;
    assert_eq!(r["error"]["code"], "outside_scope", "{r}");
    let r = reserve(json!({"epic": "E2", "agent": "Nobody", "patterns": ["docs/x"]})).await;
    assert_eq!(r["error"]["code"], "unknown_agent", "{r}");
    // Bead b1 (BlueLake, sleeping) holds src/** exclusively.
    let start = Instant::now();
    let held = loop {
        let r = reserve(json!({"epic": "E2", "agent": "operator", "patterns": ["src/main.rs"], "exclusive": false})).await;
        if r["error"]["code"] == "reservation_conflict" {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "b1 never reserved src/**: {r}"
        );
        if let Some(id) = r["id"].as_str() {
            let _ = request_json(
                &mesh.client,
                &mesh.names.coord("release"),
                &json!({"epic": "E2", "id": id}),
                Duration::from_secs(5),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let msg = held["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("BlueLake (track 1, bead b1)") && msg.contains("src/**"),
        "{msg}"
    );
    // Shared reservations of the docs by two holders coexist; exclusive does not.
    let a = reserve(
        json!({"epic": "E2", "agent": "RedStone", "patterns": ["docs/**"], "exclusive": false}),
    )
    .await;
    let b = reserve(
        json!({"epic": "E2", "agent": "operator", "patterns": ["docs/a.md"], "exclusive": false}),
    )
    .await;
    assert!(a["id"].is_string() && b["id"].is_string(), "{a} {b}");
    let c = reserve(json!({"epic": "E2", "agent": "operator", "patterns": ["docs/b.md"]})).await;
    assert_eq!(c["error"]["code"], "reservation_conflict", "{c}");
    let r = request_json(
        &mesh.client,
        &mesh.names.coord("release"),
        &json!({"epic": "E2", "id": a["id"]}),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r["released"], a["id"]);
    // Unrenewed, a reservation lapses after the lease TTL (3 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let left: Vec<String> = state::reservations(&mesh, "E2")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(
        !left.contains(&b["id"].as_str().unwrap().to_string()),
        "{left:?}"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bead_writing_outside_its_scope_raises_a_blocker_and_the_chief_replies() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let mut config = epic_config(&server.url(), &repo);
    config.coord.escalate_after_secs = 1;
    let m = InProcessMesh::start(config).await;
    let mesh = m.mesh.clone();
    let plan = epic_json(
        &repo,
        "E5",
        json!([
            {"id": "1", "agent": "BlueLake", "scope": ["sdk/**"], "beads": [
                {"id": "s1", "description": "write sdk/a.txt mine\nstray docs/intro.md not mine"}
            ]},
            {"id": "2", "agent": "RedStone", "scope": ["docs/**"], "beads": [
                {"id": "d1", "description": "sleep 0.5"}, {"id": "d2", "description": "write docs/guide.md guide"}
            ]},
            {"id": "3", "agent": "GreenCastle", "scope": ["ops/**"], "beads": [
                {"id": "o1", "description": "block the deploy key is missing"}
            ]}
        ]),
        json!([]),
    );
    let mut req = plan.clone();
    req["wait"] = json!(true);
    let waiting = {
        let mesh = mesh.clone();
        tokio::spawn(async move {
            request_json(
                &mesh.client,
                &mesh.names.plans_submit(),
                &req,
                Duration::from_secs(60),
            )
            .await
        })
    };

    // The scope violation: a blocker naming the file, and the chief's reply.
    let blocker = wait_mail(&mesh, "E5", Duration::from_secs(45), |m| {
        m.kind == MailKind::Blocker && m.data.as_ref().is_some_and(|d| d["bead"] == "s1")
    })
    .await;
    let data = blocker.data.clone().unwrap();
    assert_eq!(data["kind"], "scope_violation");
    assert_eq!(data["files"], json!(["docs/intro.md"]));
    assert!(
        blocker.subject.contains("BLOCKER s1"),
        "{}",
        blocker.subject
    );
    let seq = blocker.seq.unwrap();
    let decision = wait_mail(&mesh, "E5", Duration::from_secs(10), |m| {
        m.kind == MailKind::Decision && m.reply_to == Some(seq)
    })
    .await;
    assert_eq!(decision.from, "chief");
    assert_eq!(decision.data.as_ref().unwrap()["action"], "retry");
    assert!(
        decision.body.contains("track 2 (RedStone"),
        "{}",
        decision.body
    );

    // The agent that said it is stuck is not auto-answered: it escalates,
    // and an operator decides through the CLI.
    let stuck = wait_mail(&mesh, "E5", Duration::from_secs(20), |m| {
        m.kind == MailKind::Blocker && m.data.as_ref().is_some_and(|d| d["bead"] == "o1")
    })
    .await;
    assert_eq!(stuck.data.as_ref().unwrap()["kind"], "agent_blocked");
    let stuck_seq = stuck.seq.unwrap();
    let escalation = wait_mail(&mesh, "E5", Duration::from_secs(10), |m| {
        m.kind == MailKind::Escalation && m.reply_to == Some(stuck_seq)
    })
    .await;
    assert_eq!(
        escalation.importance,
        jetmesh_coord::wire::Importance::Urgent
    );
    let operator = thread(&mesh, "E5", Thread::Inbox("operator".into())).await;
    assert!(
        operator
            .iter()
            .any(|m| m.kind == MailKind::Escalation && m.ack_required),
        "{:#?}",
        subjects(&operator)
    );
    let out = Command::new(jetmesh_tests::jetmesh_bin())
        .args([
            "mail",
            "reply",
            &stuck_seq.to_string(),
            "--from",
            "operator",
            "--decision",
            "skip",
            "--note",
            "deploy later",
        ])
        .env("NATS_URL", server.url())
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let report = waiting.await.unwrap();
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(
        (report["completed"].as_u64(), report["failed"].as_u64()),
        (Some(4), Some(0)),
        "{report}"
    );
    let s1 = jetmesh_tests::report_task(&report, "s1");
    assert_eq!(s1["output"]["attempt"], 2, "{s1}");
    assert!(
        s1["output"]["summary"].as_str().unwrap().contains("guided"),
        "{s1}"
    );
    let o1 = jetmesh_tests::report_task(&report, "o1");
    assert_eq!(o1["output"]["skipped"], true, "{o1}");
    // The stray write never reached the tree, nor did the rejected attempt.
    assert!(!repo.join("docs/intro.md").exists());
    assert_eq!(
        std::fs::read_to_string(repo.join("sdk/a.txt")).unwrap(),
        "mine\n"
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("docs/guide.md")).unwrap(),
        "guide\n"
    );

    // The chief paused track 2 (its files were touched) until it decided.
    let (state, _): (EpicState, u64) = state::state(&mesh, "E5").await.unwrap().unwrap();
    let b = &state.blockers[&seq];
    assert_eq!(b.paused, vec!["2".to_string()]);
    assert_eq!(b.decision, Some(jetmesh_coord::wire::DecisionAction::Retry));
    assert!(state.paused.is_empty(), "{:?}", state.paused);
    assert!(state.blockers[&stuck_seq].escalated);
    let done = wait_mail(&mesh, "E5", Duration::from_secs(10), |m| {
        m.kind == MailKind::EpicComplete
    })
    .await;
    assert!(
        done.subject.contains("3 done, 1 skipped, 0 failed"),
        "{}",
        done.subject
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_bead_releases_claim_and_reservations_and_the_bead_completes_elsewhere()
{
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let mut config = epic_config(&server.url(), &repo);
    // The agent pool runs as two processes, not in the mesh.
    config.pools.remove("agent");
    let m = InProcessMesh::start(config).await;
    let mesh = m.mesh.clone();
    let python = python().display().to_string();
    let script = root()
        .join("examples/agents/scripted_agent.py")
        .display()
        .to_string();
    let command = format!("[\"{python}\", \"{script}\"]");
    let roots = format!("[\"{}\"]", dir.path().display());
    let env = [
        ("JETMESH_POOLS__AGENT__CAPABILITIES", "[\"agent\"]"),
        ("JETMESH_POOLS__AGENT__WORKERS", "1"),
        ("JETMESH_POOLS__AGENT__ACK_WAIT_SECS", "4"),
        ("JETMESH_POOLS__AGENT__MAX_DELIVER", "20"),
        ("JETMESH_AGENT__COMMANDS__SCRIPTED", command.as_str()),
        ("JETMESH_AGENT__DEFAULT_COMMAND", "scripted"),
        ("JETMESH_AGENT__ROOTS", roots.as_str()),
        ("JETMESH_COORD__LEASE_TTL_SECS", "3"),
    ];
    let workers = vec![
        Proc::jetmesh_env(&server.url(), &["worker", "--pool", "agent"], &env),
        Proc::jetmesh_env(&server.url(), &["worker", "--pool", "agent"], &env),
    ];
    jetmesh_tests::wait_for_capability(&mesh, "agent").await;
    let start = Instant::now();
    while jetmesh_tests::role_pids(&mesh.client, "worker").await.len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "two agent workers"
        );
    }
    let plan = epic_json(
        &repo,
        "E6",
        json!([{"id": "1", "agent": "BlueLake", "scope": ["sdk/**"], "beads": [
            {"id": "k1", "description": "sleep 4\nwrite sdk/k1.txt done"}
        ]}]),
        json!([]),
    );
    let r = request_json(
        &mesh.client,
        &mesh.names.plans_submit(),
        &plan,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r["status"], "accepted", "{r}");

    // Wait for the claim and the reservation, then kill the claimant.
    let start = Instant::now();
    let claim = loop {
        let c = state::claim_of(&mesh, "E6", "k1").await.unwrap();
        let r = state::reservations(&mesh, "E6").await.unwrap();
        if let Some(c) = c
            && !r.is_empty()
        {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "k1 never claimed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pids = jetmesh_tests::role_pids(&mesh.client, "worker").await;
    let victim = pids[&claim.worker];
    let i = workers
        .iter()
        .position(|w| w.pid() == victim)
        .expect("the claimant is one of ours");
    workers[i].signal(jetmesh_tests::SIGKILL);
    let killed = Instant::now();

    // Claim and reservation lapse together (lease TTL 3 s) ...
    let (mut claim_gone, mut res_gone) = (None, None);
    while claim_gone.is_none() || res_gone.is_none() {
        if claim_gone.is_none()
            && state::claim_of(&mesh, "E6", "k1")
                .await
                .unwrap()
                .is_none_or(|c| c.worker != claim.worker)
        {
            claim_gone = Some(killed.elapsed());
        }
        if res_gone.is_none()
            && state::reservations(&mesh, "E6")
                .await
                .unwrap()
                .iter()
                .all(|r| r.worker.as_deref() != Some(claim.worker.as_str()))
        {
            res_gone = Some(killed.elapsed());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the dead worker's leases never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (c, r) = (claim_gone.unwrap(), res_gone.unwrap());
    assert!(
        c.abs_diff(r) < Duration::from_millis(1500),
        "claim {c:?} and reservation {r:?} lapse together"
    );
    assert!(
        c > Duration::from_secs(1),
        "not released before the TTL: {c:?}"
    );

    // ... and the bead completes on the other worker.
    let done = wait_mail(&mesh, "E6", Duration::from_secs(40), |m| {
        m.kind == MailKind::EpicComplete
    })
    .await;
    assert!(done.subject.contains("1 done"), "{}", done.subject);
    let epic = thread(&mesh, "E6", Thread::Epic).await;
    let completed = epic
        .iter()
        .find(|m| m.kind == MailKind::BeadCompleted)
        .unwrap();
    assert_ne!(
        completed.data.as_ref().unwrap()["worker"],
        json!(claim.worker)
    );
    // The killed worker's agent died with it: the file was written once.
    assert_eq!(
        std::fs::read_to_string(repo.join("sdk/k1.txt")).unwrap(),
        "done\n"
    );
    drop(workers);
    m.stop().await;
}

#[test]
fn plan_check_prints_the_plan_or_the_line_that_is_wrong() {
    let run = |file: &Path| {
        Command::new(jetmesh_tests::jetmesh_bin())
            .args(["plan", "check"])
            .arg(file)
            .current_dir(root())
            .output()
            .unwrap()
    };
    let ok = run(&root().join("examples/execution-plan.md"));
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        text.contains("Track 2 — GreenCastle (Server endpoints)"),
        "{text}"
    );
    assert!(text.contains("track 2 starts after bd-11"), "{text}");
    assert!(text.contains("OK: 3 tracks, 5 beads."), "{text}");
    let json = Command::new(jetmesh_tests::jetmesh_bin())
        .args(["plan", "check", "--json", "examples/execution-plan.md"])
        .current_dir(root())
        .output()
        .unwrap();
    let parsed: Value = serde_json::from_slice(&json.stdout).unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/execution-plan.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(parsed, expected, "the markdown plan is the JSON plan");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("plan.md");
    let text = std::fs::read_to_string(root().join("examples/execution-plan.md")).unwrap();
    std::fs::write(
        &bad,
        text.replace("starts after bd-11", "starts after bd-99"),
    )
    .unwrap();
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .position(|l| l.contains("starts after bd-11"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "unknown_dependency: line {line}: bd-99 is not a bead of any track"
        )),
        "{err}"
    );
}
