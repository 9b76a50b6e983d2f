//! The demo's web site, served on loopback by `jetmesh demo` and by the
//! `web` tests: pages whose content JavaScript writes (a plain HTTP fetch
//! would not see it), a link to follow, a button that changes the page, an
//! infinite list, a slow page (3 s), redirects (`/redirect?to=<url>`), and a
//! log of the paths asked for.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The site, stopped on drop.
pub struct Site {
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

const HOME: &str = r#"<!doctype html><html><head><title>loading</title></head><body>
<div id="app">Loading…</div>
<script>
  // Written by JavaScript: only a real browser sees it. The prices come a
  // moment later (navigate with "selector": ".price" waits for them).
  document.title = "Jetmesh Test Shop";
  document.getElementById("app").innerHTML = `
    <h1>Rendered by JavaScript</h1>
    <p>Prices of the day.</p>
    <div id="prices"></div>
    <a id="next" href="/next">Next page</a>
    <table id="t"><thead><tr><th>Item</th><th>Qty</th></tr></thead>
      <tbody><tr><td>Apple</td><td>3</td></tr><tr><td>Pear</td><td>5</td></tr></tbody></table>`;
  setTimeout(() => {
    document.getElementById("prices").innerHTML =
      `<p class="price" data-sku="a1">42.50</p><p class="price" data-sku="b2">7.25</p>`;
  }, 150);
</script></body></html>"#;

const NEXT: &str = r#"<!doctype html><html><head><title>Second page</title></head><body>
<h1>Second page</h1>
<button id="reveal" onclick="setTimeout(() => { const p = document.createElement('p'); p.id = 'secret'; p.textContent = 'The secret is 1234'; document.body.appendChild(p); }, 100)">Reveal</button>
</body></html>"#;

const LIST: &str = r#"<!doctype html><html><head><title>Endless</title></head><body>
<ul id="items"></ul>
<script>
  let n = 0;
  const more = () => { for (let i = 0; i < 20 && n < 100; i++) { const li = document.createElement("li"); li.textContent = "item " + (++n); li.style.height = "40px"; document.getElementById("items").appendChild(li); } };
  more();
  window.addEventListener("scroll", () => { if (window.innerHeight + window.scrollY >= document.body.scrollHeight - 5) setTimeout(more, 100); });
</script></body></html>"#;

impl Site {
    pub async fn start() -> Site {
        Site::start_on("127.0.0.1").await
    }

    /// The site on another loopback address (`127.0.0.2`).
    pub async fn start_on(ip: &str) -> Site {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind the site");
        let addr = listener.local_addr().expect("its address");
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = CancellationToken::new();
        let (h, s) = (hits.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = s.cancelled() => return,
                    c = listener.accept() => c,
                };
                let Ok((mut conn, _)) = conn else { continue };
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut n = 0;
                    while n < buf.len() {
                        match conn.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => n += k,
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    h.lock().unwrap().push(path.clone());
                    let (status, extra, body) = route(&path).await;
                    let msg = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(msg.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Site { addr, hits, stop }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many requests asked for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

async fn route(path: &str) -> (&'static str, String, String) {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    match path {
        "/" => ("200 OK", String::new(), HOME.into()),
        "/next" => ("200 OK", String::new(), NEXT.into()),
        "/list" => ("200 OK", String::new(), LIST.into()),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            ("200 OK", String::new(), "<html><head><title>Slow</title></head><body><p>finally</p></body></html>".into())
        }
        "/redirect" => {
            let to = query.strip_prefix("to=").unwrap_or("/");
            ("302 Found", format!("Location: {to}\r\n"), String::new())
        }
        "/static" => ("200 OK", String::new(), "<html><head><title>Static</title></head><body><h1>Static</h1><p>plain page</p></body></html>".into()),
        // Sets a cookie and a localStorage item, and shows what the page sees.
        "/cookie" => ("200 OK", String::new(), r#"<html><head><title>Cookie</title></head><body><p id="seen"></p><script>
  const seen = (document.cookie || "none") + " / " + (localStorage.getItem("k") || "none");
  document.getElementById("seen").textContent = seen;
  if (location.search === "?set") { document.cookie = "k=v; path=/"; localStorage.setItem("k", "v"); }
</script></body></html>"#.into()),
        _ => ("404 Not Found", String::new(), "<html><head><title>Not found</title></head><body>no such page</body></html>".into()),
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
