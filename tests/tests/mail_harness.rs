//! The mail harness itself (tests/src/mail.rs), with Python's smtplib and
//! imaplib as clients: submission over STARTTLS and SMTPS with AUTH,
//! delivery into Dovecot, IMAP over STARTTLS and IMAPS with the harness's CA,
//! the SMTP server's special recipients, and no process left after drop.

use jetmesh_tests::mail::{PASSWORD, USERS};
use jetmesh_tests::{MailServer, descendants, is_running, python_ok};
use std::ffi::OsStr;

const CLIENT: &str = r#"
import imaplib, smtplib, ssl, sys
ca, password = sys.argv[1], sys.argv[2]
smtp, smtps, imap, imaps = map(int, sys.argv[3:7])
tls = ssl.create_default_context(cafile=ca)

def message(subject):
    return (f"From: alice@example.test\r\nTo: bob@example.test\r\n"
            f"Subject: {subject}\r\n\r\n{subject}\r\n").encode()

# Submission over STARTTLS, checked against the CA for "localhost".
s = smtplib.SMTP("localhost", smtp, timeout=30)
s.starttls(context=tls)
assert isinstance(s.sock, ssl.SSLSocket)
s.login("alice", password)
assert s.sendmail("alice@example.test", ["bob@example.test"], message("over starttls")) == {}
s.quit()

# Over implicit TLS, checked for the IP address.
s = smtplib.SMTP_SSL("127.0.0.1", smtps, context=tls, timeout=30)
s.login("alice", password)
assert s.sendmail("alice@example.test", ["bob@example.test"], message("over smtps")) == {}

# Refused recipient; temporary failures, counted across connections.
s.ehlo()
assert s.mail("alice@example.test")[0] == 250
code, text = s.rcpt("refused@x")
assert (code, text) == (550, b"5.1.1 mailbox unavailable"), (code, text)
assert s.rcpt("tempfail2@x") == (451, b"4.3.0 try again later")
s.rset()
s.quit()
s = smtplib.SMTP("localhost", smtp, timeout=30)
s.login("bob", password)  # plain text, allowed for tests
s.ehlo()
s.mail("bob@example.test")
assert s.rcpt("tempfail2@x") == (451, b"4.3.0 try again later")
assert s.rcpt("always451@x")[0] == 451
s.rset()
s.mail("bob@example.test")
assert s.rcpt("tempfail2@x")[0] == 250
assert s.data(message("after two 451"))[0] == 250
s.quit()

# Wrong password, and no AUTH at all.
s = smtplib.SMTP("localhost", smtp, timeout=30)
try:
    s.login("alice", "wrong")
    raise SystemExit("a wrong password was accepted")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
try:
    s.sendmail("alice@example.test", ["bob@example.test"], message("no auth"))
    raise SystemExit("mail without AUTH was accepted")
except smtplib.SMTPSenderRefused as e:
    assert e.smtp_code == 530, e
s.quit()

def subjects(m):
    typ, data = m.select("INBOX")
    assert typ == "OK", data
    typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    return sorted(part[1].decode().strip() for part in data if isinstance(part, tuple))

# Bob's INBOX over IMAP with STARTTLS.
m = imaplib.IMAP4("localhost", imap, timeout=30)
m.starttls(tls)
m.login("bob", password)
got = subjects(m)
assert got == ["Subject: over smtps", "Subject: over starttls"], got
m.logout()

# Alice over IMAPS: the special-use mailboxes, the message to tempfail2@x.
m = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=tls, timeout=30)
m.login("alice", password)
typ, listed = m.list()
assert typ == "OK", listed
listed = b"\n".join(listed).decode()
for flag, name in [("\\Drafts", "Drafts"), ("\\Sent", "Sent"), ("\\Trash", "Trash")]:
    assert any(flag in l and l.endswith(name) for l in listed.splitlines()), listed
got = subjects(m)
assert got == ["Subject: after two 451"], got
m.logout()

# A wrong IMAP password.
m = imaplib.IMAP4("127.0.0.1", imap, timeout=30)
try:
    m.login("bob", "wrong")
    raise SystemExit("a wrong IMAP password was accepted")
except imaplib.IMAP4.error:
    pass
print("ok")
"#;

/// Two instances at once (as parallel tests have), each used fully: they
/// share nothing.
#[test]
fn real_servers_send_deliver_and_refuse() {
    assert_eq!(USERS, ["alice", "bob"]);
    std::thread::scope(|s| {
        let a = s.spawn(exercise);
        let b = s.spawn(exercise);
        a.join().unwrap();
        b.join().unwrap();
    });
}

fn exercise() {
    let mail = MailServer::start();
    let out = python_ok(
        CLIENT,
        &[
            mail.ca_pem().as_os_str(),
            OsStr::new(PASSWORD),
            OsStr::new(&mail.smtp_port().to_string()),
            OsStr::new(&mail.smtps_port().to_string()),
            OsStr::new(&mail.imap_port().to_string()),
            OsStr::new(&mail.imaps_port().to_string()),
        ],
    );
    assert_eq!(out.trim(), "ok", "{}", mail.log());

    assert_eq!(mail.rcpt_attempts("tempfail2@x"), 3, "{}", mail.log());
    assert_eq!(mail.rcpt_attempts("TempFail2@X"), 3);
    assert_eq!(mail.rcpt_attempts("refused@x"), 1);
    assert_eq!(mail.rcpt_attempts("bob@example.test"), 2);
    assert_eq!(mail.rcpt_attempts("nobody@x"), 0);

    let received = mail.received();
    assert_eq!(received.len(), 3, "{}", mail.log());
    assert_eq!(received[0].rcpt_tos, ["bob@example.test"]);
    assert_eq!(received[0].auth.as_deref(), Some("alice"));
    assert_eq!(received[2].rcpt_tos, ["tempfail2@x"]);
    assert_eq!(received[2].delivered_to, ["alice"]);
    assert_eq!(received[2].auth.as_deref(), Some("bob"));
    assert!(
        String::from_utf8_lossy(&received[1].data).contains("Subject: over smtps"),
        "{received:?}"
    );

    // Both of bob's messages are files in his Maildir (read, so in cur/).
    let files = |sub: &str| {
        std::fs::read_dir(mail.maildir("bob").join(sub))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(files("new") + files("cur"), 2);
    assert!(mail.maildir("alice").join("cur").is_dir());

    let mut pids = mail.pids();
    for p in pids.clone() {
        pids.extend(descendants(p));
    }
    assert!(pids.len() > 2, "dovecot runs processes: {pids:?}");
    drop(mail);
    let left: Vec<i32> = pids.into_iter().filter(|&p| is_running(p)).collect();
    assert!(left.is_empty(), "still running after drop: {left:?}");
}
