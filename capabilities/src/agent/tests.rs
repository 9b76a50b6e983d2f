//! The bead runner's decisions, without NATS: what a run comes to, when a
//! decision settles a blocker, the context a command gets, the checks on
//! an epic's workdir and command, and running the command itself.

use super::*;
use jetmesh_coord::wire::EpicState;
use std::collections::BTreeMap;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn parse(v: &[&str]) -> Vec<Glob> {
    Glob::parse_all(v).unwrap()
}

fn bead() -> Bead {
    Bead {
        id: "bd-21".into(),
        title: Some("Add the users endpoint".into()),
        description: Some("GET /users".into()),
        files: strings(&["src/api/users.rs"]),
    }
}

fn track() -> Track {
    Track {
        id: "2".into(),
        agent: "BlueLake".into(),
        description: Some("The API".into()),
        scope: strings(&["src/api/**", "docs/api.md"]),
        beads: vec![bead()],
    }
}

fn epic() -> Epic {
    Epic {
        id: "E1".into(),
        title: Some("Users".into()),
        tracks: vec![track()],
        ..Epic::default()
    }
}

fn run(failure: Option<&str>, blocked: Option<&str>) -> Run {
    Run {
        failure: failure.map(String::from),
        output: AgentOutput {
            summary: Some("done".into()),
            learnings: strings(&["use the pool"]),
            blocked: blocked.map(String::from),
        },
        stdout: String::new(),
        stderr: String::new(),
    }
}

/// The verdict on a run of `bead()` in `track()` that changed `changed`.
fn verdict(changed: &[&str], run: &Run) -> Verdict {
    let (t, b) = (track(), bead());
    Verdict::of(
        &b,
        &t,
        &parse(&["src/api/**", "docs/api.md"]),
        &b.files,
        &parse(&["src/api/users.rs"]),
        &strings(changed),
        run,
    )
}

fn blocked(kind: BlockerKind, files: &[&str], violating: &[&str], detail: &str) -> Verdict {
    Verdict::Blocked {
        kind,
        files: strings(files),
        violating: strings(violating),
        detail: detail.into(),
    }
}

// What a run comes to.

#[test]
fn a_run_that_changed_only_reserved_files_or_nothing_is_clean() {
    assert_eq!(
        verdict(&["src/api/users.rs"], &run(None, None)),
        Verdict::Clean
    );
    assert_eq!(verdict(&[], &run(None, None)), Verdict::Clean);
}

#[test]
fn a_change_outside_the_scope_is_a_scope_violation_about_those_files_only() {
    let v = verdict(
        &["src/api/users.rs", "src/db/schema.rs", "Cargo.toml"],
        &run(None, None),
    );
    assert_eq!(
        v,
        blocked(
            BlockerKind::ScopeViolation,
            &["src/db/schema.rs", "Cargo.toml"],
            &["src/db/schema.rs", "Cargo.toml"],
            "bd-21 changed 2 files outside track 2's scope (src/api/**, docs/api.md): \
             src/db/schema.rs, Cargo.toml",
        )
    );
}

#[test]
fn a_change_in_scope_but_not_reserved_is_a_reservation_conflict() {
    let v = verdict(&["src/api/users.rs", "docs/api.md"], &run(None, None));
    assert_eq!(
        v,
        blocked(
            BlockerKind::ReservationConflict,
            &["docs/api.md"],
            &["docs/api.md"],
            "bd-21 changed 1 file it had not reserved (src/api/users.rs): docs/api.md",
        )
    );
}

#[test]
fn a_scope_violation_comes_before_an_unreserved_change_a_failure_and_a_stuck_agent() {
    let v = verdict(
        &["docs/api.md", "README.md"],
        &run(Some("exit 1"), Some("stuck")),
    );
    let Verdict::Blocked { kind, files, .. } = v else {
        panic!("clean")
    };
    assert_eq!(kind, BlockerKind::ScopeViolation);
    assert_eq!(files, ["README.md"]);
}

#[test]
fn an_unreserved_change_comes_before_a_failure() {
    let v = verdict(&["docs/api.md"], &run(Some("exit 1"), None));
    assert!(matches!(
        v,
        Verdict::Blocked {
            kind: BlockerKind::ReservationConflict,
            ..
        }
    ));
}

#[test]
fn a_failed_command_is_agent_failed_about_all_it_changed_with_nothing_a_grant_could_settle() {
    let v = verdict(&["src/api/users.rs"], &run(Some("exit 3: oops"), None));
    assert_eq!(
        v,
        blocked(
            BlockerKind::AgentFailed,
            &["src/api/users.rs"],
            &[],
            "exit 3: oops"
        )
    );
    // A failure blocks even when nothing changed.
    let v = verdict(&[], &run(Some("timed out"), None));
    assert_eq!(v, blocked(BlockerKind::AgentFailed, &[], &[], "timed out"));
}

#[test]
fn an_agent_that_says_it_is_stuck_is_agent_blocked_with_its_reason() {
    let v = verdict(&["src/api/users.rs"], &run(None, Some("which table?")));
    assert_eq!(
        v,
        blocked(
            BlockerKind::AgentBlocked,
            &["src/api/users.rs"],
            &[],
            "which table?"
        )
    );
}

#[test]
fn a_failure_comes_before_the_agents_own_word() {
    let v = verdict(&[], &run(Some("exit 2"), Some("stuck")));
    assert_eq!(v, blocked(BlockerKind::AgentFailed, &[], &[], "exit 2"));
}

#[test]
fn a_granted_glob_widens_the_scope_and_a_bead_without_files_reserves_all_of_it() {
    let e = Epic {
        tracks: vec![Track {
            beads: vec![Bead {
                files: Vec::new(),
                ..bead()
            }],
            ..track()
        }],
        ..epic()
    };
    let (t, b) = e.bead("bd-21").unwrap();
    let changed = strings(&["src/db/schema.rs"]);
    let judge = |st: Option<&EpicState>| {
        let scope = state::scope(&e, st, &t.id).unwrap();
        // What `reserve` asks for when the bead names no files.
        let reserved: Vec<String> = scope.iter().map(|g| g.to_string()).collect();
        Verdict::of(b, t, &scope, &reserved, &scope, &changed, &run(None, None))
    };
    assert!(matches!(
        judge(None),
        Verdict::Blocked {
            kind: BlockerKind::ScopeViolation,
            ..
        }
    ));
    let st = EpicState {
        epic: "E1".into(),
        grants: BTreeMap::from([("2".to_string(), strings(&["src/db/**"]))]),
        ..EpicState::default()
    };
    assert_eq!(judge(Some(&st)), Verdict::Clean);
    // A grant to another track does not count.
    let other = EpicState {
        grants: BTreeMap::from([("1".to_string(), strings(&["src/db/**"]))]),
        ..st
    };
    assert_ne!(judge(Some(&other)), Verdict::Clean);
}

// When a decision settles a blocker.

fn decision(action: DecisionAction, grant: &[&str]) -> Decision {
    Decision {
        action,
        note: None,
        grant: strings(grant),
    }
}

#[test]
fn a_retry_whose_grant_covers_every_violating_file_settles_the_blocker() {
    let d = decision(DecisionAction::Retry, &["src/db/**", "Cargo.toml"]);
    assert!(settles(&d, &strings(&["src/db/schema.rs", "Cargo.toml"])).unwrap());
}

#[test]
fn a_grant_that_misses_one_violating_file_does_not_settle() {
    let d = decision(DecisionAction::Retry, &["src/db/**"]);
    assert!(!settles(&d, &strings(&["src/db/schema.rs", "Cargo.toml"])).unwrap());
    let d = decision(DecisionAction::Retry, &[]);
    assert!(!settles(&d, &strings(&["Cargo.toml"])).unwrap());
}

#[test]
fn only_a_retry_settles_with_a_grant() {
    for action in [
        DecisionAction::Skip,
        DecisionAction::Reassign,
        DecisionAction::Abort,
    ] {
        let d = decision(action, &["**"]);
        assert!(
            !settles(&d, &strings(&["Cargo.toml"])).unwrap(),
            "{action:?}"
        );
    }
}

#[test]
fn a_blocker_with_no_violating_files_is_not_settled_by_any_grant() {
    // A failed or stuck agent: a grant is no answer, it must run again.
    let d = decision(DecisionAction::Retry, &["**"]);
    assert!(!settles(&d, &[]).unwrap());
}

#[test]
fn a_grant_that_is_not_a_valid_glob_is_an_error_whatever_the_action() {
    for action in [DecisionAction::Retry, DecisionAction::Skip] {
        let e = settles(&decision(action, &["/etc/**"]), &strings(&["a"])).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidGlob, "{action:?}: {}", e.message);
    }
}

// The context a command gets.

fn mail(kind: MailKind, seq: Option<u64>, subject: &str) -> Mail {
    let mut m = Mail::new(
        "E1",
        &Thread::Track("2".into()),
        "GreenHill",
        kind,
        subject,
        format!("body of {subject}"),
    );
    m.seq = seq;
    m
}

#[test]
fn the_context_passes_on_the_track_threads_learnings_and_context_notes_in_order() {
    let (e, t, b) = (epic(), track(), bead());
    let thread = vec![
        mail(MailKind::Learning, Some(3), "l1"),
        mail(MailKind::Note, Some(4), "chatter"),
        mail(MailKind::Context, Some(5), "c1"),
        mail(MailKind::BeadStarted, Some(6), "started"),
        mail(MailKind::Learning, None, "l2"),
    ];
    let ctx = BeadContext::new(&e, &t, &b, &[], &[], 1, None, &thread);
    let v = serde_json::to_value(&ctx).unwrap();
    assert_eq!(
        v["learnings"],
        json!([
            {"seq": 3, "from": "GreenHill", "subject": "l1", "body": "body of l1"},
            {"seq": 0, "from": "GreenHill", "subject": "l2", "body": "body of l2"},
        ])
    );
    assert_eq!(
        v["context"],
        json!([{"seq": 5, "from": "GreenHill", "subject": "c1", "body": "body of c1"}])
    );
}

#[test]
fn the_context_names_the_epic_the_track_with_its_granted_scope_and_reservation_and_the_bead() {
    let (e, t, b) = (epic(), track(), bead());
    let st = EpicState {
        epic: "E1".into(),
        grants: BTreeMap::from([("2".to_string(), strings(&["src/db/**"]))]),
        ..EpicState::default()
    };
    let scope = state::scope(&e, Some(&st), "2").unwrap();
    let ctx = BeadContext::new(
        &e,
        &t,
        &b,
        &scope,
        &b.files,
        2,
        Some("try a smaller change"),
        &[],
    );
    assert_eq!(
        serde_json::to_value(&ctx).unwrap(),
        json!({
            "epic": {"id": "E1", "title": "Users"},
            "track": {
                "id": "2",
                "agent": "BlueLake",
                "description": "The API",
                "scope": ["src/api/**", "docs/api.md", "src/db/**"],
                "reserved": ["src/api/users.rs"],
            },
            "bead": {
                "id": "bd-21",
                "title": "Add the users endpoint",
                "description": "GET /users",
                "files": ["src/api/users.rs"],
            },
            "attempt": 2,
            "note": "try a smaller change",
            "learnings": [],
            "context": [],
        })
    );
}

#[test]
fn a_context_without_titles_descriptions_or_note_leaves_them_out() {
    let e = Epic {
        title: None,
        ..epic()
    };
    let t = Track {
        description: None,
        ..track()
    };
    let b = Bead {
        id: "bd-1".into(),
        ..Bead::default()
    };
    let v = serde_json::to_value(BeadContext::new(&e, &t, &b, &[], &[], 1, None, &[])).unwrap();
    assert_eq!(v["epic"], json!({"id": "E1"}));
    assert!(v["track"].get("description").is_none(), "{v}");
    assert!(v.get("note").is_none(), "{v}");
    assert_eq!(v["bead"], json!({"id": "bd-1"}));
}

// The checks on an epic's workdir and command.

fn config(root: &Path) -> AgentConfig {
    AgentConfig {
        roots: vec![root.to_path_buf()],
        workdir: root.to_path_buf(),
        ..AgentConfig::default()
    }
}

fn with_workdir(path: &Path) -> Epic {
    Epic {
        workdir: Some(path.display().to_string()),
        ..epic()
    }
}

fn refused(r: Result<PathBuf>) -> String {
    let e = r.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgs, "{}", e.message);
    e.message
}

#[test]
fn an_epic_workdir_under_a_root_is_resolved_to_its_real_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    let got = resolve_workdir(&config(&root), &with_workdir(&root.join("a/../a/b"))).unwrap();
    assert_eq!(got, std::fs::canonicalize(root.join("a/b")).unwrap());
}

#[test]
fn an_epic_without_a_workdir_gets_agent_workdir() {
    let dir = tempfile::tempdir().unwrap();
    let got = resolve_workdir(&config(dir.path()), &epic()).unwrap();
    assert_eq!(got, std::fs::canonicalize(dir.path()).unwrap());
}

#[test]
fn an_epic_workdir_outside_every_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (root, other) = (dir.path().join("root"), dir.path().join("other"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    let m = refused(resolve_workdir(&config(&root), &with_workdir(&other)));
    assert!(m.contains("is outside agent.roots"), "{m}");
    assert!(m.contains(&root.display().to_string()), "{m}");
}

#[test]
fn a_way_out_of_a_root_by_dot_dot_or_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (root, other) = (dir.path().join("root"), dir.path().join("other"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::os::unix::fs::symlink(&other, root.join("link")).unwrap();
    let cfg = config(&root);
    refused(resolve_workdir(&cfg, &with_workdir(&root.join("../other"))));
    refused(resolve_workdir(&cfg, &with_workdir(&root.join("link"))));
}

#[test]
fn a_sibling_whose_name_starts_like_the_root_is_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let (root, sibling) = (dir.path().join("work"), dir.path().join("work2"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&sibling).unwrap();
    refused(resolve_workdir(&config(&root), &with_workdir(&sibling)));
}

#[test]
fn without_roots_only_agent_workdir_and_below_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (work, other) = (dir.path().join("work"), dir.path().join("other"));
    std::fs::create_dir_all(work.join("sub")).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    let cfg = AgentConfig {
        roots: Vec::new(),
        ..config(&work)
    };
    assert!(resolve_workdir(&cfg, &with_workdir(&work.join("sub"))).is_ok());
    refused(resolve_workdir(&cfg, &with_workdir(&other)));
}

#[test]
fn a_root_that_does_not_exist_allows_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig {
        roots: vec![dir.path().join("missing")],
        ..config(dir.path())
    };
    refused(resolve_workdir(&cfg, &with_workdir(dir.path())));
}

#[test]
fn a_workdir_that_does_not_exist_cannot_be_used() {
    let dir = tempfile::tempdir().unwrap();
    let m = refused(resolve_workdir(
        &config(dir.path()),
        &with_workdir(&dir.path().join("missing")),
    ));
    assert!(m.contains("cannot be used"), "{m}");
}

fn commands() -> AgentConfig {
    AgentConfig {
        commands: BTreeMap::from([
            ("claude".to_string(), strings(&["claude", "-p"])),
            ("echo".to_string(), strings(&["echo"])),
        ]),
        default_command: "echo".into(),
        ..AgentConfig::default()
    }
}

#[test]
fn the_epic_command_comes_from_the_allowlist() {
    let cfg = commands();
    let e = Epic {
        command: Some("claude".into()),
        ..epic()
    };
    let (name, argv) = command(&cfg, &e).unwrap();
    assert_eq!((name, argv), ("claude", &strings(&["claude", "-p"])[..]));
}

#[test]
fn an_epic_without_a_command_gets_agent_default_command() {
    let cfg = commands();
    let (name, argv) = command(&cfg, &epic()).unwrap();
    assert_eq!((name, argv), ("echo", &strings(&["echo"])[..]));
}

#[test]
fn a_command_off_the_allowlist_is_refused_naming_what_is_allowed() {
    let e = Epic {
        command: Some("rm".into()),
        ..epic()
    };
    let err = command(&commands(), &e).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgs);
    assert!(err.message.contains("\"rm\""), "{}", err.message);
    assert!(
        err.message.contains("allowed: claude, echo"),
        "{}",
        err.message
    );
    // The default is no way around the allowlist either.
    let cfg = AgentConfig {
        default_command: "rm".into(),
        ..commands()
    };
    assert_eq!(
        command(&cfg, &epic()).unwrap_err().code,
        ErrorCode::InvalidArgs
    );
}

#[test]
fn no_command_and_no_default_is_refused() {
    let cfg = AgentConfig {
        default_command: String::new(),
        ..commands()
    };
    let err = command(&cfg, &epic()).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgs);
    assert!(
        err.message.contains("names no agent command"),
        "{}",
        err.message
    );
}

// Running the command (real processes, no NATS).

/// An agent config whose default command is the shell `script`.
fn shell(script: &str) -> AgentConfig {
    AgentConfig {
        commands: BTreeMap::from([("sh".to_string(), strings(&["/bin/sh", "-c", script]))]),
        default_command: "sh".into(),
        ..AgentConfig::default()
    }
}

async fn run_in(dir: &Path, cfg: &AgentConfig) -> Result<Run> {
    let (e, t, b) = (epic(), track(), bead());
    let scope = parse(&["src/api/**"]);
    let thread = [mail(MailKind::Learning, Some(9), "l1")];
    let ctx = BeadContext::new(&e, &t, &b, &scope, &b.files, 3, Some("again"), &thread);
    Agent::run_command(cfg, &e, &t, &b, dir, &ctx).await
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

#[tokio::test]
async fn the_command_runs_in_the_workdir_with_the_context_on_stdin_and_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = shell(r#"cat > stdin.json; cp "$JETMESH_CONTEXT" context.json"#);
    let run = run_in(dir.path(), &cfg).await.unwrap();
    assert_eq!(run.failure, None);
    let stdin: Value = serde_json::from_str(&read(dir.path(), "stdin.json")).unwrap();
    let file: Value = serde_json::from_str(&read(dir.path(), "context.json")).unwrap();
    assert_eq!(stdin, file);
    assert_eq!(stdin["bead"]["id"], "bd-21");
    assert_eq!(stdin["attempt"], 3);
    assert_eq!(stdin["note"], "again");
    assert_eq!(stdin["track"]["reserved"], json!(["src/api/users.rs"]));
    assert_eq!(stdin["learnings"][0]["subject"], "l1");
}

#[tokio::test]
async fn the_command_gets_the_bead_in_its_environment_and_nothing_else_of_the_workers() {
    let cfg = shell("env > env.txt");
    // A variable of this process that agent.pass_env does not name (and
    // that the shell does not set itself).
    let (secret, _) = std::env::vars()
        .find(|(k, _)| {
            !cfg.pass_env.contains(k) && !["PWD", "OLDPWD", "SHLVL", "_"].contains(&k.as_str())
        })
        .expect("the test process has a variable outside pass_env");
    let dir = tempfile::tempdir().unwrap();
    let run = run_in(dir.path(), &cfg).await.unwrap();
    assert_eq!(run.failure, None);
    let env: BTreeMap<String, String> = read(dir.path(), "env.txt")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(get("JETMESH_EPIC"), Some("E1"));
    assert_eq!(get("JETMESH_TRACK"), Some("2"));
    assert_eq!(get("JETMESH_AGENT"), Some("BlueLake"));
    assert_eq!(get("JETMESH_BEAD"), Some("bd-21"));
    assert_eq!(get("JETMESH_BEAD_TITLE"), Some("Add the users endpoint"));
    assert_eq!(get("JETMESH_SCOPE"), Some("src/api/**"));
    assert_eq!(get("JETMESH_RESERVED"), Some("src/api/users.rs"));
    assert_eq!(get("JETMESH_ATTEMPT"), Some("3"));
    assert_eq!(get("JETMESH_NOTE"), Some("again"));
    assert!(get("JETMESH_OUTPUT").is_some_and(|p| p.ends_with("output.json")));
    assert_eq!(get("PATH"), std::env::var("PATH").ok().as_deref());
    assert_eq!(get(&secret), None, "{secret} reached the command");
}

#[tokio::test]
async fn a_non_zero_exit_fails_naming_the_status_and_the_last_20_lines_of_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = shell("i=1; while [ $i -le 30 ]; do echo line$i >&2; i=$((i+1)); done; exit 3");
    let run = run_in(dir.path(), &cfg).await.unwrap();
    let failure = run.failure.expect("a failure");
    assert!(
        failure.starts_with("agent command sh exited with"),
        "{failure}"
    );
    assert!(failure.contains("exit status: 3"), "{failure}");
    assert!(
        failure.contains("line11\n") && failure.ends_with("line30"),
        "{failure}"
    );
    assert!(!failure.contains("line10"), "{failure}");
}

#[tokio::test]
async fn what_the_command_writes_to_jetmesh_output_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = shell(
        r#"echo '{"summary":"added it","learnings":["a","b"],"blocked":"which table?","extra":1}' > "$JETMESH_OUTPUT""#,
    );
    let run = run_in(dir.path(), &cfg).await.unwrap();
    assert_eq!(run.failure, None);
    assert_eq!(run.output.summary.as_deref(), Some("added it"));
    assert_eq!(run.output.learnings, ["a", "b"]);
    assert_eq!(run.output.blocked.as_deref(), Some("which table?"));
}

#[tokio::test]
async fn an_output_that_is_not_json_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = shell(r#"echo 'not json' > "$JETMESH_OUTPUT""#);
    let run = run_in(dir.path(), &cfg).await.unwrap();
    assert_eq!(run.failure, None);
    assert_eq!(run.output.summary, None);
    assert!(run.output.learnings.is_empty());
    assert_eq!(run.output.blocked, None);
}

#[tokio::test]
async fn only_the_tail_of_a_long_output_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig {
        max_output_bytes: 8,
        ..shell("printf 0123456789abcdef; printf ABCDEFGHIJKLMNOP >&2")
    };
    let run = run_in(dir.path(), &cfg).await.unwrap();
    assert_eq!(run.stdout, "89abcdef");
    assert_eq!(run.stderr, "IJKLMNOP");
}

#[tokio::test]
async fn a_command_that_cannot_start_is_invalid_args() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig {
        commands: BTreeMap::from([("x".to_string(), strings(&["/nonexistent/agent"]))]),
        default_command: "x".into(),
        ..AgentConfig::default()
    };
    let e = run_in(dir.path(), &cfg).await.err().expect("an error");
    assert_eq!(e.code, ErrorCode::InvalidArgs);
    assert!(
        e.message.contains("cannot start agent command x"),
        "{}",
        e.message
    );
}

#[tokio::test(start_paused = true)]
async fn a_command_past_agent_timeout_secs_is_stopped_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig {
        timeout_secs: 5,
        ..shell("echo started; exec sleep 600")
    };
    let started = tokio::time::Instant::now();
    let run = run_in(dir.path(), &cfg).await.unwrap();
    assert_eq!(
        run.failure.as_deref(),
        Some("agent command sh ran longer than agent.timeout_secs (5 s)")
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test]
async fn tail_keeps_the_last_bytes_of_a_long_stream() {
    let long: Vec<u8> = (0..50_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut r: &[u8] = &long;
    let kept = tail(Some(&mut r), 100).await;
    assert_eq!(kept.as_bytes(), &long[long.len() - 100..]);
    let mut short: &[u8] = b"short";
    assert_eq!(tail(Some(&mut short), 100).await, "short");
    assert_eq!(tail::<&[u8]>(None, 100).await, "");
}

#[test]
fn the_small_helpers_count_and_cut_as_they_say() {
    assert_eq!(plural(1, "file"), "1 file");
    assert_eq!(plural(0, "file"), "0 files");
    assert_eq!(plural(3, "file"), "3 files");
    assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
    assert_eq!(last_lines("a", 5), "a");
    assert_eq!(first_line("BLOCKER x\nmore"), "BLOCKER x");
    assert_eq!(first_line(""), "");
}
