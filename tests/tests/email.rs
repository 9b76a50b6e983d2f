//! The `email` capability on a running mesh, against real mail servers
//! (Debian's Dovecot for IMAP, an aiosmtpd submission server delivering into
//! it): send → search → read with the body and attachments, a reply threaded
//! as Python's `email` module reads it, a draft in Drafts, and stable codes
//! for a wrong password, a refused recipient, an unreachable server, a
//! temporary refusal (retried) and a permanent one (not retried), the
//! recipient allow-list and the send rate.

use jetmesh_shared::config::{AccountConfig, MailTls, PoolConfig};
use jetmesh_shared::objects;
use jetmesh_tests::mail::PASSWORD;
use jetmesh_tests::{InProcessMesh, MailServer, NatsServer, python_ok, request_json, test_config};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

async fn run(c: &async_nats::Client, action: &str, params: Value) -> Value {
    request_json(c, &format!("mesh.run.email.{action}"), &params, T).await
}

async fn ok(c: &async_nats::Client, action: &str, params: Value) -> Value {
    let v = run(c, action, params.clone()).await;
    assert_eq!(v["status"], "success", "{action} {params}: {v}");
    v["output"].clone()
}

async fn fails(c: &async_nats::Client, action: &str, params: Value) -> Value {
    let v = run(c, action, params.clone()).await;
    assert_eq!(v["status"], "error", "{action} {params}: {v}");
    assert!(
        !v.to_string().contains(PASSWORD) && !v.to_string().contains("wrong-pw-77"),
        "a password in {v}"
    );
    v["error"].clone()
}

fn account(user: &str, pw_file: &Path, mail: &MailServer) -> AccountConfig {
    AccountConfig {
        address: format!("{user}@example.test"),
        name: user.to_string(),
        username: user.to_string(),
        password_file: Some(pw_file.to_path_buf()),
        smtp_host: "127.0.0.1".into(),
        smtp_port: Some(mail.smtp_port()),
        smtp_tls: MailTls::Starttls,
        imap_host: "127.0.0.1".into(),
        imap_port: Some(mail.imaps_port()),
        imap_tls: MailTls::Tls,
        ca_file: Some(mail.ca_pem()),
        ..AccountConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_is_sent_found_read_replied_and_drafted_on_real_servers() {
    let mail = MailServer::start();
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "wrong-pw-77\n").unwrap();

    let mut config = test_config(&server.url());
    config
        .pools
        .insert("email".into(), PoolConfig::new("email", 4));
    let accounts = &mut config.email.accounts;
    accounts.insert("alice".into(), account("alice", &pw, &mail));
    // Bob sends over implicit TLS and reads over STARTTLS.
    let mut bob = account("bob", &pw, &mail);
    (bob.smtp_port, bob.smtp_tls) = (Some(mail.smtps_port()), MailTls::Tls);
    (bob.imap_port, bob.imap_tls) = (Some(mail.imap_port()), MailTls::Starttls);
    accounts.insert("bob".into(), bob);
    // No TLS at all (loopback only).
    let mut plain = account("alice", &pw, &mail);
    (plain.smtp_tls, plain.imap_tls, plain.imap_port) =
        (MailTls::None, MailTls::None, Some(mail.imap_port()));
    accounts.insert("plain".into(), plain);
    accounts.insert("wrongpw".into(), account("alice", &wrong, &mail));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut down = account("alice", &pw, &mail);
    (down.smtp_port, down.imap_port) = (Some(closed), Some(closed));
    accounts.insert("down".into(), down);
    let mut limited = account("alice", &pw, &mail);
    limited.allow_recipients = vec!["*@example.test".into()];
    limited.send_per_minute = 2;
    accounts.insert("limited".into(), limited);
    let mut german = account("alice", &pw, &mail);
    german.drafts_folder = "Entwürfe".into();
    accounts.insert("german".into(), german);
    config.email.default_account = "alice".into();
    config.email.send_attempts = 3;
    let m = InProcessMesh::start(config).await;
    let c = server.client().await;

    // Send: text and HTML, to/cc/bcc, one attachment from the object store
    // and one inline.
    let report = b"quarter,total\nQ4,1234\n";
    let stored = objects::put(&m.mesh, "reports/q4.csv", "text/csv", report)
        .await
        .unwrap();
    let out = ok(&c, "send", json!({
        "to": "Bob <bob@example.test>", "cc": ["carol@example.test"], "bcc": "dave@example.test",
        "subject": "Quarterly numbers", "body": "The totals are attached.",
        "html": "<p>The <b>totals</b> are attached.</p>",
        "attachments": [{"object": stored.key}, {"name": "note.txt", "content": "aGVsbG8=", "content_type": "text/plain"}],
    })).await;
    let message_id = out["message_id"].as_str().unwrap().to_string();
    assert_eq!(out["account"], "alice");
    assert_eq!(out["recipients"].as_array().unwrap().len(), 3, "{out}");

    // Search as bob, then read what was found.
    let found = ok(&c, "search", json!({"account": "bob", "criteria": {"from": "alice@example.test", "subject": "Quarterly", "unseen": true}})).await;
    assert_eq!(found["count"], 1, "{found}");
    let uid = found["uids"][0].as_u64().unwrap();
    assert_eq!(found["messages"][0]["subject"], "Quarterly numbers");
    let none = ok(
        &c,
        "search",
        json!({"account": "bob", "criteria": {"subject": "no such subject"}}),
    )
    .await;
    assert_eq!(none["count"], 0);
    let read = ok(&c, "read", json!({"account": "bob", "uid": uid})).await;
    let msg = &read["messages"][0];
    assert_eq!(
        msg["message_id"].as_str().map(|s| format!("<{s}>")),
        Some(message_id.clone())
    );
    assert_eq!(
        msg["text"].as_str().map(str::trim),
        Some("The totals are attached.")
    );
    assert!(
        msg["html"].as_str().unwrap().contains("<b>totals</b>"),
        "{msg}"
    );
    assert_eq!(msg["from"][0]["address"], "alice@example.test");
    assert_eq!(msg["cc"][0]["address"], "carol@example.test");
    assert!(
        !msg.to_string().contains("dave@"),
        "Bcc is not in the delivered message: {msg}"
    );
    let atts = msg["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 2, "{msg}");
    assert_eq!(atts[0]["name"], "q4.csv");
    let key = atts[0]["object"]["key"].as_str().unwrap();
    assert_eq!(objects::get(&m.mesh, key).await.unwrap().1, report);
    let note = atts[1]["object"]["key"].as_str().unwrap();
    assert_eq!(objects::get(&m.mesh, note).await.unwrap().1, b"hello");
    // read peeks: the message is still unseen; the newest-N form finds it too.
    let newest = ok(&c, "read", json!({"account": "bob", "limit": 5})).await;
    assert!(
        newest["messages"][0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f != "\\Seen"),
        "{newest}"
    );

    // Reply-all as bob: threaded, as Python's email module reads it.
    let reply = ok(
        &c,
        "reply",
        json!({"account": "bob", "uid": uid, "body": "Thanks, looks right.", "reply_all": true}),
    )
    .await;
    assert_eq!(reply["subject"], "Re: Quarterly numbers");
    let alice_inbox = mail.maildir("alice").join("new");
    let raw = wait_for_file(&alice_inbox, "Thanks, looks right.").await;
    let parsed = python_ok(
        "import email, email.policy, sys\n\
         m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=email.policy.default)\n\
         print(m['Subject']); print(m['In-Reply-To']); print(m['References']); print(m['To']); print(m['Cc'] or '')",
        &[raw.as_os_str()],
    );
    let lines: Vec<&str> = parsed.lines().collect();
    assert_eq!(lines[0], "Re: Quarterly numbers");
    assert_eq!(lines[1], message_id);
    assert_eq!(lines[2], message_id, "References ends with the original");
    assert!(lines[3].contains("alice@example.test"), "{parsed}");
    assert!(
        lines[4].contains("carol@example.test") && !lines[4].contains("bob@"),
        "{parsed}"
    );

    // A draft lands in Drafts with \Draft, and is not sent.
    let sent_before = mail.received().len();
    let draft = ok(
        &c,
        "draft",
        json!({"to": "bob@example.test", "subject": "Draft only", "body": "Not yet."}),
    )
    .await;
    assert_eq!(draft["folder"], "Drafts");
    let duid = draft["uid"].as_u64().expect("the draft's UID");
    let read = ok(&c, "read", json!({"folder": "Drafts", "uid": duid})).await;
    let flags = read["messages"][0]["flags"].to_string();
    assert!(flags.contains("\\\\Draft"), "{flags}");
    assert_eq!(read["messages"][0]["subject"], "Draft only");
    assert_eq!(mail.received().len(), sent_before, "a draft is not sent");

    // A folder with a non-ASCII name (made by an independent client, in
    // IMAP's modified UTF-7), drafted into and read by its name.
    let port = mail.imap_port().to_string();
    python_ok(
        "import imaplib, sys\n\
         c = imaplib.IMAP4('127.0.0.1', int(sys.argv[1]))\n\
         c.login('alice', sys.argv[2])\n\
         assert c.create('Entw&APw-rfe')[0] == 'OK'\n\
         c.logout()",
        &[port.as_ref(), PASSWORD.as_ref()],
    );
    let out = ok(&c, "draft", json!({"account": "german", "to": "bob@example.test", "subject": "Grüße", "body": "Noch nicht."})).await;
    assert_eq!(out["folder"], "Entwürfe", "{out}");
    let read = ok(&c, "read", json!({"folder": "Entwürfe", "uid": out["uid"]})).await;
    assert_eq!(read["messages"][0]["subject"], "Grüße", "{read}");

    // The plain account (no TLS) sends and reads too.
    ok(
        &c,
        "send",
        json!({"account": "plain", "to": "bob@example.test", "subject": "plain", "body": "p"}),
    )
    .await;

    // Failures, each with its stable code; none is retried but the 4xx.
    let e = fails(
        &c,
        "send",
        json!({"account": "wrongpw", "to": "bob@example.test", "body": "x"}),
    )
    .await;
    assert_eq!(e["code"], "auth_failed", "{e}");
    let e = fails(&c, "read", json!({"account": "wrongpw"})).await;
    assert_eq!(e["code"], "auth_failed", "{e}");
    let e = fails(
        &c,
        "send",
        json!({"to": "refused@example.test", "body": "x"}),
    )
    .await;
    assert_eq!(e["code"], "recipient_refused", "{e}");
    assert_eq!(
        mail.rcpt_attempts("refused@example.test"),
        1,
        "a 5xx is not retried"
    );
    let out = ok(
        &c,
        "send",
        json!({"to": "tempfail2@example.test", "body": "second time lucky"}),
    )
    .await;
    assert!(out["message_id"].is_string());
    assert_eq!(
        mail.rcpt_attempts("tempfail2@example.test"),
        3,
        "a 4xx is retried"
    );
    let e = fails(
        &c,
        "send",
        json!({"to": "always451@example.test", "body": "x"}),
    )
    .await;
    assert_eq!(e["code"], "unavailable", "{e}");
    assert_eq!(
        mail.rcpt_attempts("always451@example.test"),
        3,
        "send_attempts in all"
    );
    let e = fails(
        &c,
        "send",
        json!({"account": "down", "to": "bob@example.test", "body": "x"}),
    )
    .await;
    assert_eq!(e["code"], "unavailable", "{e}");
    let e = fails(&c, "search", json!({"account": "down"})).await;
    assert_eq!(e["code"], "unavailable", "{e}");
    let e = fails(&c, "read", json!({"folder": "Nope"})).await;
    assert_eq!(e["code"], "folder_not_found", "{e}");
    let e = fails(&c, "read", json!({"uid": 999999})).await;
    assert_eq!(e["code"], "message_not_found", "{e}");
    let e = fails(
        &c,
        "send",
        json!({"account": "nobody", "to": "bob@example.test", "body": "x"}),
    )
    .await;
    assert_eq!(e["code"], "unknown_account", "{e}");
    // A task names an account, never a server.
    let e = fails(
        &c,
        "send",
        json!({"to": "bob@example.test", "body": "x", "smtp_host": "evil.example"}),
    )
    .await;
    assert_eq!(e["code"], "invalid_args", "{e}");
    let e = fails(
        &c,
        "send",
        json!({"to": "bob@example.test\r\nBcc: x@evil.example", "body": "x"}),
    )
    .await;
    assert_eq!(e["code"], "invalid_args", "{e}");

    // The allow-list, then the rate.
    let e = fails(
        &c,
        "send",
        json!({"account": "limited", "to": "someone@elsewhere.example", "body": "x"}),
    )
    .await;
    assert_eq!(e["code"], "recipient_not_allowed", "{e}");
    for _ in 0..2 {
        ok(
            &c,
            "send",
            json!({"account": "limited", "to": "bob@example.test", "body": "x"}),
        )
        .await;
    }
    let e = fails(
        &c,
        "send",
        json!({"account": "limited", "to": "bob@example.test", "body": "x"}),
    )
    .await;
    assert_eq!(e["code"], "rate_limited", "{e}");
    assert!(e["retry_after_ms"].as_u64().unwrap() > 0, "{e}");
    m.stop().await;
}

/// The file in `dir` (a Maildir's `new`) that holds `text`, within 10 s.
async fn wait_for_file(dir: &Path, text: &str) -> std::path::PathBuf {
    for _ in 0..100 {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if std::fs::read_to_string(e.path()).is_ok_and(|s| s.contains(text)) {
                return e.path();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no message with {text:?} in {}", dir.display());
}

/// `examples/orders-report.json` as the README runs it: rows from the
/// embedded SQLite db, their sum by `math` (the rows passed with `$ref`), and
/// a draft whose body takes the total (`{{total}}`); then the same plan with
/// a reference to a task it does not depend on is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orders_example_sums_db_rows_and_drafts_the_total() {
    let mail = MailServer::start();
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let mut config = test_config(&server.url());
    config.pools.insert("db".into(), PoolConfig::new("db", 2));
    config
        .pools
        .insert("email".into(), PoolConfig::new("email", 2));
    config.db.databases.get_mut("main").unwrap().url =
        format!("sqlite:{}", tmp.path().join("db/main.db").display());
    config
        .email
        .accounts
        .insert("alice".into(), account("alice", &pw, &mail));
    let m = InProcessMesh::start(config).await;
    let c = server.client().await;

    let path = jetmesh_tests::root().join("examples/orders-report.json");
    let mut plan: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    plan["wait"] = json!(true);
    let report = request_json(&c, "mesh.plans.submit", &plan, Duration::from_secs(60)).await;
    assert_eq!(report["failed"], 0, "{report}");
    let task = |id: &str| jetmesh_tests::report_task(&report, id);
    assert_eq!(task("total")["output"], 7.75, "{report}");
    let uid = task("mail")["output"]["uid"]
        .as_u64()
        .expect("the draft's UID");
    let read = ok(&c, "read", json!({"folder": "Drafts", "uid": uid})).await;
    assert_eq!(
        read["messages"][0]["text"].as_str().map(str::trim),
        Some("The 3 orders add up to 7.75.")
    );

    // A reference outside depends_on is refused when the plan is submitted.
    let mut bad = plan.clone();
    bad["subtasks"][3]["depends_on"] = json!(["orders"]);
    let reply = request_json(&c, "mesh.plans.submit", &bad, T).await;
    assert_eq!(reply["error"]["code"], "unknown_dependency", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"rows\""), "{reply}");
    // {{…}} that names no dependency stays text.
    let mut text = plan.clone();
    text["subtasks"][4]["depends_on"] = json!(["rows"]);
    let report = request_json(&c, "mesh.plans.submit", &text, Duration::from_secs(60)).await;
    let uid = jetmesh_tests::report_task(&report, "mail")["output"]["uid"]
        .as_u64()
        .unwrap();
    let read = ok(&c, "read", json!({"folder": "Drafts", "uid": uid})).await;
    assert_eq!(
        read["messages"][0]["text"].as_str().map(str::trim),
        Some("The 3 orders add up to {{total}}.")
    );
    // A path that names nothing fails the task (invalid_args), and its
    // dependents with it.
    let mut missing = plan.clone();
    missing["subtasks"][3]["args"]["path"] = json!("/rows/*/price");
    let report = request_json(&c, "mesh.plans.submit", &missing, Duration::from_secs(60)).await;
    let total = jetmesh_tests::report_task(&report, "total");
    assert_eq!(total["error"]["code"], "invalid_args", "{report}");
    assert!(
        total["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/rows/*/price"),
        "{total}"
    );
    assert_eq!(
        jetmesh_tests::report_task(&report, "mail")["error"]["code"],
        "dependency_failed"
    );
    m.stop().await;
}
