//! The browser's only way out: a forward proxy in the worker that resolves
//! every host itself, refuses loopback, private, link-local and metadata
//! addresses (unless `[web] allow_networks` lists them), and then connects to
//! the very address it checked. Chromium is started with
//! `--proxy-server=<this>` and `--proxy-bypass-list=<-loopback>`, so every
//! request of every frame, worker and websocket passes here, redirects
//! included, and a DNS answer that changes between the check and the
//! connection (rebinding) cannot slip through.
//!
//! Plain HTTP requests arrive in absolute form (`GET http://host/path`) and
//! are forwarded with `Connection: close`; HTTPS and websockets arrive as
//! `CONNECT host:port` and are tunnelled. A refusal answers `403` with the
//! header `X-Jetmesh-Refused` and is remembered ([`Guard::refusals_since`]),
//! so an action can tell that its navigation was refused (`address_refused`)
//! rather than failed.

use ipnet::IpNet;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Addresses the browser may not reach unless allowed: the list and
/// their relatives (this host, carrier NAT, multicast, broadcast).
const BLOCKED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// The largest request head read from the browser.
const MAX_HEAD: usize = 64 * 1024;
/// Refusals remembered (the newest).
const REMEMBERED: usize = 256;

/// One connection the guard did not make: refused by the policy (`ip` is
/// the address it refused), or impossible (the name does not resolve, the
/// address does not answer).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub seq: u64,
    pub host: String,
    pub ip: Option<IpAddr>,
    /// Refused by the policy, rather than failed.
    pub refused: bool,
    pub why: String,
}

/// The network policy and what it refused.
pub struct Guard {
    blocked: Vec<IpNet>,
    allowed: Vec<IpNet>,
    refused: Mutex<(u64, VecDeque<Refusal>)>,
}

impl Guard {
    /// `allow`: the CIDRs (or single addresses) of `[web] allow_networks`.
    pub fn new(allow: &[String]) -> Guard {
        let allowed = allow
            .iter()
            .filter_map(|n| {
                n.parse::<IpNet>()
                    .ok()
                    .or_else(|| n.parse::<IpAddr>().ok().map(IpNet::from))
            })
            .collect();
        Guard {
            blocked: BLOCKED.iter().map(|n| n.parse().expect("a CIDR")).collect(),
            allowed,
            refused: Mutex::new((0, VecDeque::new())),
        }
    }

    /// Whether the browser may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allowed.iter().any(|n| n.contains(&ip))
            || !self.blocked.iter().any(|n| n.contains(&ip))
    }

    /// The sequence number the next refusal gets: take it before an action,
    /// then ask [`Guard::refusals_since`].
    pub fn mark(&self) -> u64 {
        self.refused.lock().expect("guard lock").0
    }

    /// The refusals and failures recorded since `mark`.
    pub fn refusals_since(&self, mark: u64) -> Vec<Refusal> {
        let r = self.refused.lock().expect("guard lock");
        r.1.iter().filter(|x| x.seq >= mark).cloned().collect()
    }

    fn record(&self, host: &str, ip: Option<IpAddr>, refused: bool, why: &str) {
        let mut r = self.refused.lock().expect("guard lock");
        let seq = r.0;
        r.0 += 1;
        r.1.push_back(Refusal {
            seq,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
            ip,
            refused,
            why: why.to_string(),
        });
        if r.1.len() > REMEMBERED {
            r.1.pop_front();
        }
    }

    /// Resolves `host` and checks every address it has: one refused address
    /// refuses the host (a name that also points inside is not trusted).
    async fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, (String, Option<IpAddr>)> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => match tokio::net::lookup_host((bare, port)).await {
                Ok(a) => a.collect(),
                Err(e) => {
                    let why = format!("cannot resolve {host}: {e}");
                    self.record(host, None, false, &why);
                    return Err((why, None));
                }
            },
        };
        if addrs.is_empty() {
            let why = format!("{host} has no address");
            self.record(host, None, false, &why);
            return Err((why, None));
        }
        if let Some(bad) = addrs.iter().find(|a| !self.permits(a.ip())) {
            let why = format!(
                "{host} resolves to {}, a loopback, private, link-local or metadata address; \
                 refused (allow it with [web] allow_networks)",
                bad.ip()
            );
            self.record(host, Some(bad.ip()), true, &why);
            return Err((why, Some(bad.ip())));
        }
        Ok(addrs)
    }
}

/// An IPv6 address that carries an IPv4 one is checked as that IPv4
/// address: mapped (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`, and the local-use `64:ff9b:1::/48`) and 6to4
/// (`2002:AABB:CCDD::`).
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        IpAddr::V4(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        ))
    };
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return IpAddr::V4(mapped);
    }
    // `::` and `::1` stay themselves; the rest of ::/96 is IPv4-compatible.
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return v4(s[6], s[7]);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1) {
        return v4(s[6], s[7]);
    }
    if s[0] == 0x2002 {
        return v4(s[1], s[2]);
    }
    ip
}

/// Starts the proxy on a loopback port; it runs until `stop`.
pub async fn start(guard: Arc<Guard>, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((conn, _)) = accepted else { continue };
            let (guard, stop) = (guard.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = serve(&guard, conn) => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "A browser connection through the guard ended.");
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// One connection from the browser: one request, or one tunnel.
async fn serve(guard: &Guard, mut conn: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let head_len = loop {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return reply(&mut conn, 431, "request head too large", None).await;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(
        req.parse(&buf[..head_len]),
        Ok(httparse::Status::Complete(_))
    ) {
        return reply(&mut conn, 400, "malformed request", None).await;
    }
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("").to_string();
    if method == "CONNECT" {
        let Some((host, port)) = split_host_port(&target, 443) else {
            return reply(&mut conn, 400, "CONNECT needs host:port", None).await;
        };
        let addrs = match guard.resolve(&host, port).await {
            Ok(a) => a,
            Err((why, ip)) => return reply(&mut conn, 403, &why, ip).await,
        };
        let Some(mut upstream) = connect(guard, &host, &addrs).await else {
            return reply(&mut conn, 502, "the address does not answer", None).await;
        };
        conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
        // Bytes the browser sent after the head belong to the tunnel.
        upstream.write_all(&buf[head_len..]).await?;
        tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
        return Ok(());
    }
    // Plain HTTP, in absolute form.
    let Some(rest) = target.strip_prefix("http://") else {
        return reply(
            &mut conn,
            400,
            "only http:// requests and CONNECT tunnels pass",
            None,
        )
        .await;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Some((host, port)) = split_host_port(authority, 80) else {
        return reply(&mut conn, 400, "bad host", None).await;
    };
    let addrs = match guard.resolve(&host, port).await {
        Ok(a) => a,
        Err((why, ip)) => return reply(&mut conn, 403, &why, ip).await,
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if matches!(
            name.as_str(),
            "proxy-connection" | "proxy-authorization" | "connection" | "keep-alive"
        ) {
            continue;
        }
        head.push_str(h.name);
        head.push_str(": ");
        head.push_str(&String::from_utf8_lossy(h.value));
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let Some(mut upstream) = connect(guard, &host, &addrs).await else {
        return reply(&mut conn, 502, "the address does not answer", None).await;
    };
    upstream.write_all(head.as_bytes()).await?;
    upstream.write_all(&buf[head_len..]).await?;
    // One request per connection: the response is told to close it, so the
    // browser never sends a second request (for another host) down a
    // connection that leads to this server.
    let (mut up_read, mut up_write) = upstream.into_split();
    let (mut c_read, mut c_write) = conn.into_split();
    let body_up = tokio::io::copy(&mut c_read, &mut up_write);
    let response = async {
        let mut head = Vec::with_capacity(4096);
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = up_read.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            head.extend_from_slice(&chunk[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if head.len() > MAX_HEAD {
                return Err(std::io::Error::other("response head too large"));
            }
        };
        c_write.write_all(&closing(&head[..head_end])).await?;
        c_write.write_all(&head[head_end..]).await?;
        tokio::io::copy(&mut up_read, &mut c_write).await?;
        c_write.shutdown().await
    };
    tokio::pin!(body_up);
    tokio::select! {
        r = response => r,
        // The browser closed its side: nothing more to carry.
        _ = &mut body_up => Ok(()),
    }
}

/// A response head with `Connection: close` in place of whatever it said
/// about keeping the connection.
fn closing(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(head.len() + 48);
    for (i, line) in text.split("\r\n").enumerate() {
        if line.is_empty() {
            continue;
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if i > 0
            && matches!(
                name.as_str(),
                "connection" | "keep-alive" | "proxy-connection"
            )
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\nProxy-Connection: close\r\n\r\n");
    out.into_bytes()
}

/// Connects to one of the checked addresses (10 s at most), recording a failure.
async fn connect(guard: &Guard, host: &str, addrs: &[SocketAddr]) -> Option<TcpStream> {
    match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        TcpStream::connect(addrs),
    )
    .await
    {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            guard.record(
                host,
                addrs.first().map(|a| a.ip()),
                false,
                &format!("cannot connect to {host}: {e}"),
            );
            None
        }
        Err(_) => {
            guard.record(
                host,
                addrs.first().map(|a| a.ip()),
                false,
                &format!("{host} did not answer within 10 s"),
            );
            None
        }
    }
}

/// `host:port` (or `[v6]:port`, or a bare host with `default` port).
fn split_host_port(s: &str, default: u16) -> Option<(String, u16)> {
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = format!("[{}]", &rest[..end]);
        let port = match &rest[end + 1..] {
            "" => default,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host, port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((s.to_string(), default)),
    }
}

async fn reply(
    conn: &mut TcpStream,
    status: u16,
    why: &str,
    refused: Option<IpAddr>,
) -> std::io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        502 => "Bad Gateway",
        _ => "Request Header Fields Too Large",
    };
    let extra = refused
        .map(|ip| format!("X-Jetmesh-Refused: {ip}\r\n"))
        .unwrap_or_default();
    let body = format!("jetmesh: {why}\n");
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(msg.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_networks_and_what_allows_them() {
        let g = Guard::new(&[]);
        for bad in [
            "127.0.0.1",
            "127.8.9.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "0.0.0.0",
            "100.64.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:5",
            "64:ff9b:1::a9fe:a9fe",
            "::a00:5",
            "2002:a00:5::1",
            "fec0::1",
        ] {
            assert!(!g.permits(bad.parse().unwrap()), "{bad} must be refused");
        }
        for good in [
            "93.184.216.34",
            "1.1.1.1",
            "172.32.0.1",
            "2606:4700::1111",
            "8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(g.permits(good.parse().unwrap()), "{good} must pass");
        }
        let g = Guard::new(&["127.0.0.0/8".into(), "10.9.9.9".into()]);
        assert!(g.permits("127.0.0.1".parse().unwrap()));
        assert!(g.permits("10.9.9.9".parse().unwrap()));
        assert!(!g.permits("10.9.9.8".parse().unwrap()));
        assert!(!g.permits("::1".parse().unwrap()));
    }

    #[test]
    fn responses_are_told_to_close() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n";
        assert_eq!(
            String::from_utf8(closing(head)).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nProxy-Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn hosts_and_ports_split() {
        assert_eq!(split_host_port("a.b:8080", 80), Some(("a.b".into(), 8080)));
        assert_eq!(split_host_port("a.b", 80), Some(("a.b".into(), 80)));
        assert_eq!(
            split_host_port("[::1]:443", 80),
            Some(("[::1]".into(), 443))
        );
        assert_eq!(split_host_port("[::1]", 80), Some(("[::1]".into(), 80)));
        assert_eq!(split_host_port("a:b:c", 80), None);
        assert_eq!(split_host_port("a.b:x", 80), None);
    }

    #[tokio::test]
    async fn names_are_resolved_before_they_are_judged() {
        let g = Guard::new(&[]);
        let mark = g.mark();
        let e = g.resolve("localhost", 80).await.unwrap_err();
        assert!(e.1.is_some_and(|ip| ip.is_loopback()), "{e:?}");
        let r = g.refusals_since(mark);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].host, "localhost");
        assert!(r[0].refused);
        let e = g.resolve("no-such-host.invalid", 80).await.unwrap_err();
        assert_eq!(e.1, None);
        assert!(!g.refusals_since(mark)[1].refused);
    }
}
