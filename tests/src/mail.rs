//! Real mail servers on loopback ports, in a temp folder, stopped and removed
//! on drop: Debian's Dovecot (IMAP with STARTTLS, IMAPS, and LMTP for
//! delivery) and an SMTP submission server (`tests/mail/smtpd.py`, aiosmtpd
//! from PyPI in `./.venv`) with STARTTLS, SMTPS and AUTH, which delivers what
//! it accepts into Dovecot over LMTP. Both use a certificate signed by a CA
//! made for this instance ([`MailServer::ca_pem`]), valid for `localhost` and
//! `127.0.0.1`.
//!
//! The users are `alice` and `bob`, password [`PASSWORD`], on both servers.
//! Plain-text login is allowed without TLS (for tests). The SMTP server
//! answers by the recipient's local part, in any domain: `refused` gets
//! `550 5.1.1`, `tempfail<N>` gets `451 4.3.0` to its first N RCPT attempts
//! (counted across connections) and is then accepted, `always451` always gets
//! `451 4.3.0`; `alice` and `bob` go to that mailbox, any other accepted
//! recipient to alice's.
//!
//! Under root, Dovecot's mail processes run as the `mail` user (which owns the
//! homes) and its own as the package's `dovecot` and `dovenull` users;
//! otherwise everything runs as us, without chroots.

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal::{SIGKILL, SIGTERM};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The password of every user, on IMAP and SMTP.
pub const PASSWORD: &str = "jetmesh-mail-pw";

/// The users both servers know.
pub const USERS: [&str; 2] = ["alice", "bob"];

/// Debian's Dovecot (packages dovecot-imapd and dovecot-lmtpd).
pub const DOVECOT: &str = "/usr/sbin/dovecot";

const START_WITHIN: Duration = Duration::from_secs(30);
const STOP_WITHIN: Duration = Duration::from_secs(10);

pub struct MailServer {
    dovecot: Option<Child>,
    smtpd: Option<Child>,
    dir: TempDir,
    imap_port: u16,
    imaps_port: u16,
    lmtp_port: u16,
    smtp_port: u16,
    smtps_port: u16,
}

/// A message the SMTP server accepted (and delivered into Dovecot).
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// The user that authenticated the session.
    pub auth: Option<String>,
    /// The Dovecot users it went to.
    pub delivered_to: Vec<String>,
    /// The message as the client sent it.
    pub data: Vec<u8>,
}

/// Who Dovecot's processes run as.
struct Ids {
    /// The owner of the mail homes (userdb uid/gid).
    uid: u32,
    gid: u32,
    internal_user: String,
    internal_group: String,
    login_user: String,
    root: bool,
}

fn ids() -> Result<Ids> {
    use nix::unistd::{Gid, Group, Uid, User};
    let hint = "apt-get install dovecot-imapd dovecot-lmtpd";
    if Uid::effective().is_root() {
        let mail =
            User::from_name("mail")?.context("running as root, and there is no mail user")?;
        for user in ["dovecot", "dovenull"] {
            User::from_name(user)?.with_context(|| {
                format!("running as root, and there is no {user} user ({hint})")
            })?;
        }
        Ok(Ids {
            uid: mail.uid.as_raw(),
            gid: mail.gid.as_raw(),
            internal_user: "dovecot".into(),
            internal_group: "dovecot".into(),
            login_user: "dovenull".into(),
            root: true,
        })
    } else {
        let me = User::from_uid(Uid::effective())?.context("our user has no name")?;
        let group = Group::from_gid(Gid::effective())?.context("our group has no name")?;
        Ok(Ids {
            uid: me.uid.as_raw(),
            gid: group.gid.as_raw(),
            internal_user: me.name.clone(),
            internal_group: group.name,
            login_user: me.name,
            root: false,
        })
    }
}

/// `N` distinct loopback ports free at the time of the call.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

/// Whether a server on `port` accepts a connection and greets with `prefix`
/// (or, with an empty prefix, only accepts it).
fn greets(port: u16, prefix: &str) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
    else {
        return false;
    };
    if prefix.is_empty() {
        return true;
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => String::from_utf8_lossy(&buf[..n]).starts_with(prefix),
        _ => false,
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A CA (`ca.pem`) and a server certificate it signed (`server.pem`,
/// `server.key`) for `localhost` and `127.0.0.1`, with the openssl CLI. The
/// leaf is not a CA: rustls/webpki refuse a CA certificate as a server's.
fn certificates(dir: &Path) -> Result<()> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509", "-nodes", "-days", "3650", "-sha256"])
        .args(ec)
        .args(["-keyout", "ca.key", "-out", "ca.pem"])
        .args(["-subj", "/CN=jetmesh test mail CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]))
    .context("openssl (apt-get install openssl)")?;
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-nodes", "-sha256"])
        .args(ec)
        .args(["-keyout", "server.key", "-out", "server.csr"])
        .args(["-subj", "/CN=localhost"]))?;
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    let serial = format!(
        "0x{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    run(Command::new("openssl")
        .current_dir(dir)
        .args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-days",
            "3650",
            "-sha256",
        ])
        .args(["-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", &serial])
        .args(["-extfile", "server.ext", "-out", "server.pem"]))?;
    Ok(())
}

/// Dovecot's whole configuration: nothing from /etc/dovecot, nothing written
/// outside `dir`.
fn dovecot_conf(dir: &Path, ids: &Ids, imap: u16, imaps: u16, lmtp: u16) -> String {
    let d = dir.display();
    let Ids {
        uid,
        gid,
        internal_user,
        internal_group,
        login_user,
        root,
    } = ids;
    // Without root, processes cannot chroot.
    let no_chroot = if *root {
        ""
    } else {
        "service anvil {\n  chroot =\n}\n\
         service ipc {\n  chroot =\n}\n\
         service old-stats {\n  chroot =\n}\n"
    };
    let login_chroot = if *root { "" } else { "  chroot =\n" };
    format!(
        r#"base_dir = {d}/run
state_dir = {d}/state
instance_name = jetmesh-mail-test
log_path = {d}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
hostname = localhost
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = {uid}
first_valid_gid = {gid}
ssl = yes
ssl_cert = <{d}/server.pem
ssl_key = <{d}/server.key
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {d}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home/%n
}}
mail_location = maildir:~/Maildir
mail_fsync = never
mail_max_userip_connections = 100
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \Drafts
    auto = subscribe
  }}
  mailbox Sent {{
    special_use = \Sent
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \Trash
    auto = subscribe
  }}
}}
service imap-login {{
{login_chroot}  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    port = {lmtp}
  }}
}}
# No growing delays after failed logins (tests try wrong passwords).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{no_chroot}"#
    )
}

/// How waiting for a server ended.
enum Start {
    Ready,
    /// It could not bind a port another process took: pick others.
    PortTaken,
}

fn wait_started(
    child: &mut Child,
    name: &str,
    ready: impl Fn() -> bool,
    log: impl Fn() -> String,
) -> Result<Start> {
    let deadline = Instant::now() + START_WITHIN;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = log();
            if log.to_lowercase().contains("address already in use") {
                return Ok(Start::PortTaken);
            }
            bail!("{name} exited ({status}): {log}");
        }
        if ready() {
            return Ok(Start::Ready);
        }
        if Instant::now() > deadline {
            bail!("{name} did not start within {START_WITHIN:?}: {}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then SIGKILL (to it and what it started) after [`STOP_WITHIN`].
fn stop(child: Option<Child>) {
    let Some(mut c) = child else { return };
    let pid = c.id() as i32;
    let family = crate::descendants(pid);
    crate::signal_pid(pid, SIGTERM);
    let deadline = Instant::now() + STOP_WITHIN;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !matches!(c.try_wait(), Ok(Some(_))) {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Dovecot's master waits for its processes; should one outlive it, it
    // goes too.
    let deadline = Instant::now() + Duration::from_secs(2);
    while family.iter().any(|&p| crate::is_running(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in family {
        if crate::is_running(p) {
            crate::signal_pid(p, SIGKILL);
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn dovecot_log(dir: &Path) -> String {
    format!(
        "{}{}",
        read(&dir.join("dovecot.stderr")),
        read(&dir.join("dovecot.log"))
    )
}

impl MailServer {
    pub fn start() -> MailServer {
        MailServer::try_start().unwrap_or_else(|e| {
            panic!("the mail servers start (bash .ci/run installs them): {e:#}")
        })
    }

    fn try_start() -> Result<MailServer> {
        if !Path::new(DOVECOT).exists() {
            bail!("no {DOVECOT}: apt-get install dovecot-imapd dovecot-lmtpd");
        }
        let ids = ids()?;
        let dir = tempfile::Builder::new().prefix("jetmesh-mail-").tempdir()?;
        {
            // Dovecot's unprivileged processes reach the sockets, the
            // passwd-file and the homes through it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        }
        certificates(dir.path())?;
        let passwd: String = USERS
            .iter()
            .map(|u| format!("{u}:{{PLAIN}}{PASSWORD}::::::\n"))
            .collect();
        std::fs::write(dir.path().join("passwd"), passwd)?;
        let home = dir.path().join("home");
        std::fs::create_dir(&home)?;
        for user in USERS {
            let h = home.join(user);
            std::fs::create_dir(&h)?;
            std::os::unix::fs::chown(&h, Some(ids.uid), Some(ids.gid))?;
        }
        std::fs::create_dir(dir.path().join("smtp"))?;
        let mut mail = MailServer {
            dovecot: None,
            smtpd: None,
            dir,
            imap_port: 0,
            imaps_port: 0,
            lmtp_port: 0,
            smtp_port: 0,
            smtps_port: 0,
        };
        mail.spawn_dovecot(&ids)?;
        mail.spawn_smtpd()?;
        Ok(mail)
    }

    /// Dovecot cannot take port 0: pick free ones, and pick again if
    /// another process takes one first.
    fn spawn_dovecot(&mut self, ids: &Ids) -> Result<()> {
        let dir = self.dir.path().to_path_buf();
        for _ in 0..5 {
            let [imap, imaps, lmtp] = free_ports()?;
            let conf = dir.join("dovecot.conf");
            std::fs::write(&conf, dovecot_conf(&dir, ids, imap, imaps, lmtp))?;
            let _ = std::fs::remove_dir_all(dir.join("run"));
            let _ = std::fs::remove_file(dir.join("dovecot.log"));
            let stderr = std::fs::File::create(dir.join("dovecot.stderr"))?;
            let child = Command::new(DOVECOT)
                .arg("-F")
                .arg("-c")
                .arg(&conf)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .context("spawn dovecot")?;
            let child = self.dovecot.insert(child);
            let started = wait_started(
                child,
                "dovecot",
                || greets(imap, "* OK") && greets(lmtp, "220 ") && greets(imaps, ""),
                || dovecot_log(&dir),
            )?;
            match started {
                Start::Ready => {
                    (self.imap_port, self.imaps_port, self.lmtp_port) = (imap, imaps, lmtp);
                    return Ok(());
                }
                Start::PortTaken => stop(self.dovecot.take()),
            }
        }
        bail!("dovecot found no free ports: {}", dovecot_log(&dir))
    }

    fn spawn_smtpd(&mut self) -> Result<()> {
        let dir = self.dir.path().to_path_buf();
        let script = crate::root().join("tests/mail/smtpd.py");
        for _ in 0..5 {
            let [smtp, smtps] = free_ports()?;
            let log = std::fs::File::create(dir.join("smtpd.log"))?;
            let child = Command::new(crate::python())
                .arg(&script)
                .args(["--smtp-port", &smtp.to_string()])
                .args(["--smtps-port", &smtps.to_string()])
                .args(["--lmtp-port", &self.lmtp_port.to_string()])
                .arg("--cert")
                .arg(dir.join("server.pem"))
                .arg("--key")
                .arg(dir.join("server.key"))
                .arg("--passwd")
                .arg(dir.join("passwd"))
                .arg("--state")
                .arg(dir.join("smtp"))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("spawn the SMTP server (python)")?;
            let child = self.smtpd.insert(child);
            let started = wait_started(
                child,
                "smtpd.py",
                || read(&dir.join("smtpd.log")).contains("smtpd ready") && greets(smtp, "220 "),
                || {
                    let log = read(&dir.join("smtpd.log"));
                    if log.contains("No module named 'aiosmtpd'") {
                        format!("{log}\n(aiosmtpd is missing: ./dev deps installs it into .venv)")
                    } else {
                        log
                    }
                },
            )?;
            match started {
                Start::Ready => {
                    (self.smtp_port, self.smtps_port) = (smtp, smtps);
                    return Ok(());
                }
                Start::PortTaken => stop(self.smtpd.take()),
            }
        }
        bail!(
            "smtpd.py found no free ports: {}",
            read(&dir.join("smtpd.log"))
        )
    }

    /// IMAP, plain text with STARTTLS offered (and plain-text login allowed).
    pub fn imap_port(&self) -> u16 {
        self.imap_port
    }

    /// IMAP over implicit TLS.
    pub fn imaps_port(&self) -> u16 {
        self.imaps_port
    }

    /// Dovecot's LMTP (delivery, no auth).
    pub fn lmtp_port(&self) -> u16 {
        self.lmtp_port
    }

    /// SMTP submission, plain text with STARTTLS offered; AUTH required
    /// (also allowed without TLS).
    pub fn smtp_port(&self) -> u16 {
        self.smtp_port
    }

    /// SMTP submission over implicit TLS; AUTH required.
    pub fn smtps_port(&self) -> u16 {
        self.smtps_port
    }

    /// The CA certificate (PEM) that signed both servers' certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `user`'s Maildir (Maildir++: INBOX in `new/` and `cur/`, other
    /// mailboxes in `.Name/`).
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("home").join(user).join("Maildir")
    }

    /// How many `RCPT TO` the SMTP server saw for `address` (any case), in
    /// every session so far, whatever it answered.
    pub fn rcpt_attempts(&self, address: &str) -> usize {
        let address = address.to_lowercase();
        read(&self.dir.path().join("smtp/rcpt.log"))
            .lines()
            .filter(|l| *l == address)
            .count()
    }

    /// Every message the SMTP server accepted, oldest first.
    pub fn received(&self) -> Vec<Received> {
        let smtp = self.dir.path().join("smtp");
        read(&smtp.join("received.jsonl"))
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).expect("received.jsonl");
                let strings = |key: &str| -> Vec<String> {
                    v[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                };
                Received {
                    mail_from: v["mail_from"].as_str().unwrap_or_default().to_string(),
                    rcpt_tos: strings("rcpt_tos"),
                    auth: v["auth"].as_str().map(String::from),
                    delivered_to: strings("delivered_to"),
                    data: std::fs::read(
                        smtp.join("received")
                            .join(v["file"].as_str().expect("received.jsonl names the file")),
                    )
                    .expect("a received message"),
                }
            })
            .collect()
    }

    /// The process ids of Dovecot's master and of the SMTP server (for tests
    /// that check what is left running).
    pub fn pids(&self) -> Vec<i32> {
        [&self.dovecot, &self.smtpd]
            .into_iter()
            .flatten()
            .map(|c| c.id() as i32)
            .collect()
    }

    /// Both servers' logs.
    pub fn log(&self) -> String {
        format!(
            "--- dovecot ---\n{}\n--- smtpd.py ---\n{}",
            dovecot_log(self.dir.path()),
            read(&self.dir.path().join("smtpd.log"))
        )
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        stop(self.smtpd.take());
        stop(self.dovecot.take());
        if std::thread::panicking() {
            eprintln!("--- mail servers' logs ---\n{}", self.log());
        }
    }
}
