//! A real PostgreSQL server from Debian's package, made by `initdb` in a temp
//! folder and listening on a loopback port, stopped and removed on drop.
//! PostgreSQL refuses to run as root: under root the server runs as the
//! package's `postgres` user, which owns its data folder.

use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The superuser's password (host connections use scram-sha-256).
pub const PASSWORD: &str = "jetmesh-test-pw";

pub struct Postgres {
    child: Option<Child>,
    dir: TempDir,
    pub port: u16,
}

/// The folder holding `initdb` and `postgres`: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian), else the one on `PATH`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// The uid and gid to run the server as: ours, or `postgres`'s under root.
fn server_user() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")?
        .context("running as root, and there is no postgres user (apt-get install postgresql)")?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::try_start().expect("PostgreSQL starts (bash .ci/run installs it)")
    }

    fn try_start() -> Result<Postgres> {
        let bin = bin_dir().context("no PostgreSQL: apt-get install postgresql")?;
        let user = server_user()?;
        let mut dir = tempfile::Builder::new().prefix("jetmesh-pg-").tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD)?;
        if let Some((uid, gid)) = user {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
            for p in [&data, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
            }
        }
        let out = as_user(&mut Command::new(bin.join("initdb")), user)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .current_dir(dir.path())
            .output()
            .context("run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The server cannot take port 0: pick a free one, and pick again if
        // another process takes it first.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut pg = Postgres {
                child: None,
                dir,
                port,
            };
            match pg.spawn(&bin, user) {
                Ok(()) => return Ok(pg),
                Err(e) if pg.log().contains("could not bind") => {
                    dir = pg.take_dir();
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        bail!("PostgreSQL found no free port")
    }

    fn take_dir(mut self) -> TempDir {
        self.stop();
        let dir = tempfile::Builder::new()
            .prefix("jetmesh-pg-unused-")
            .tempdir()
            .expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    fn spawn(&mut self, bin: &Path, user: Option<(u32, u32)>) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join("server.log"))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(self.dir.path().join("server.log"), Some(uid), Some(gid))?;
        }
        let child = as_user(&mut Command::new(bin.join("postgres")), user)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("port={}", self.port)])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "fsync=off", "-c", "max_connections=50"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn postgres")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.log().contains("ready to accept connections") {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("postgres exited ({status}): {}", self.log());
            }
            if Instant::now() > deadline {
                bail!("postgres did not start: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The URL without the password (for `password_env`/`password_file`).
    pub fn url_without_password(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs SQL with psql as the superuser; panics on failure.
    pub fn psql(&self, sql: &str) -> String {
        let bin = bin_dir().expect("postgres bin");
        let psql = if bin.join("psql").exists() {
            bin.join("psql")
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(psql)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Immediate shutdown: the server's children go with it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGQUIT,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
