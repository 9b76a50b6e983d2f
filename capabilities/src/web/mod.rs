//! The `web` capability: a real headless Chromium, driven over the DevTools
//! protocol (`chromiumoxide`).
//!
//! | action       | parameters | result |
//! |--------------|------------|--------|
//! | `navigate`   | `url`, `wait` (`load`, `networkidle`), `selector`, `format` (`text`, `markdown`) | `{url, status, title, text}` |
//! | `click`      | `selector` | `{url, title, navigated}` |
//! | `extract`    | `selector`, `attribute`, `as` (`text`, `html`, `links`, `table`, `markdown`), `limit` | `{selector, count, items}`, or the page as `{markdown}`/`{text}` |
//! | `screenshot` | `selector`, `full_page` | `{object, width, height}` (a PNG in the object store) |
//! | `scroll`     | `pixels`, `selector`, or `to: "bottom"` with `max_rounds` | `{scroll_y, scroll_height, rounds, grew}` |
//!
//! One browser per worker process ([`browser`]), relaunched when it dies or
//! stops answering. Each session (a task's `session`, by default its plan)
//! has its own browser context, so cookies and storage never cross
//! sessions, and one page, which its tasks drive in turn. Sessions close when
//! their plan ends (the worker runtime calls [`Capability::close_session`]),
//! after `[web] session_ttl_secs` unused, or, at `[web] max_pages`, when the
//! least recently used idle one makes room. Every request goes through the
//! [`guard`]; large page text and screenshots go to the object store.

pub mod browser;
pub mod guard;

use browser::Chromium;
use chromiumoxide::Page;
use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::cdp::browser_protocol::target::{
    CreateBrowserContextParams, CreateTargetParams,
};
use chromiumoxide::cdp::js_protocol::runtime::{CallArgument, CallFunctionOnParams};
use chromiumoxide::page::ScreenshotParams;
use futures::future::BoxFuture;
use guard::Guard;
use jetmesh_shared::capability::{Action, Call, Capability, params};
use jetmesh_shared::config::WebConfig;
use jetmesh_shared::{Error, ErrorCode, Mesh, objects};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub use browser::NO_BROWSER;

/// A navigation (or a redirect, or the page's own request for its
/// document) to an address the guard refuses.
pub const ADDRESS_REFUSED: ErrorCode = ErrorCode::capability("address_refused");
/// The navigation failed (DNS, connection, TLS, an HTTP error page is not
/// a failure).
pub const NAVIGATION_FAILED: ErrorCode = ErrorCode::capability("navigation_failed");
/// No element matches the selector.
pub const SELECTOR_NOT_FOUND: ErrorCode = ErrorCode::capability("selector_not_found");
/// The session has no page: it was never opened (navigate first), or it was
/// closed (TTL, page cap, a browser crash).
pub const SESSION_LOST: ErrorCode = ErrorCode::capability("session_lost");

/// The longest a page helper may wait (a scroll to the bottom of a long list).
pub(crate) const MAX_PAGE_WAIT: Duration = Duration::from_secs(120);

/// The helpers run in pages.
const PAGE_JS: &str = include_str!("page.js");

const ACTIONS: &[Action] = &[
    Action {
        name: "navigate",
        description: "Opens a URL in the session's page and returns the final URL, HTTP status, title and readable text.",
        params: r#"{"type":"object","required":["url"],"additionalProperties":false,"properties":{
  "url":{"type":"string","pattern":"^[Hh][Tt][Tt][Pp][Ss]?://","maxLength":8192,"description":"An http or https URL."},
  "wait":{"enum":["load","networkidle"],"description":"load (default): the load event; networkidle: also no new request for 500 ms."},
  "selector":{"type":"string","minLength":1,"maxLength":1024,"description":"Also wait until this CSS selector matches."},
  "format":{"enum":["text","markdown","none"],"description":"The page's text as plain text (default), markdown, or not at all."}}}"#,
    },
    Action {
        name: "click",
        description: "Clicks the element a CSS selector matches, then waits for the navigation or for the DOM to settle.",
        params: r#"{"type":"object","required":["selector"],"additionalProperties":false,"properties":{
  "selector":{"type":"string","minLength":1,"maxLength":1024,"description":"A CSS selector; the first match is clicked."}}}"#,
    },
    Action {
        name: "extract",
        description: "Extracts text, attributes, links, tables or HTML of the elements a CSS selector matches, or the whole page as markdown or text.",
        params: r#"{"type":"object","additionalProperties":false,"properties":{
  "selector":{"type":"string","minLength":1,"maxLength":1024,"description":"A CSS selector (default: the whole page)."},
  "attribute":{"type":"string","minLength":1,"maxLength":256,"description":"Give this attribute of each match (href, src, …)."},
  "as":{"enum":["text","html","links","table","markdown"],"description":"What to give of each match (default text); without selector: markdown (default) or text of the page."},
  "limit":{"type":"integer","minimum":1,"maximum":10000,"description":"The most matches given (default 1000)."}}}"#,
    },
    Action {
        name: "screenshot",
        description: "Takes a PNG of the viewport, the full page or one element, stored in the object store.",
        params: r#"{"type":"object","additionalProperties":false,"properties":{
  "selector":{"type":"string","minLength":1,"maxLength":1024,"description":"Only this element."},
  "full_page":{"type":"boolean","description":"The whole page, not just the viewport (default false)."}}}"#,
    },
    Action {
        name: "scroll",
        description: "Scrolls by pixels, to an element, or to the bottom again and again while the page grows (infinite lists).",
        params: r#"{"type":"object","additionalProperties":false,"properties":{
  "pixels":{"type":"integer","minimum":-1000000,"maximum":1000000,"description":"Scroll down by this many pixels (negative: up)."},
  "selector":{"type":"string","minLength":1,"maxLength":1024,"description":"Scroll this element into view."},
  "to":{"enum":["bottom"],"description":"Scroll to the bottom."},
  "max_rounds":{"type":"integer","minimum":1,"maximum":1000,"description":"With to: bottom, the most times to scroll again after the page grew (default 10)."},
  "wait_ms":{"type":"integer","minimum":0,"maximum":10000,"description":"With to: bottom, how long to wait for the page to grow each time (default 1000)."}},
  "oneOf":[{"required":["pixels"]},{"required":["selector"]},{"required":["to"]}]}"#,
    },
];

/// The built-in `web` capability of one worker process.
pub struct Web {
    mesh: Mesh,
    cfg: WebConfig,
    guard: Arc<Guard>,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

#[derive(Default)]
struct State {
    proxy: Option<SocketAddr>,
    browser: Option<Chromium>,
    /// Bumped at every launch: sessions of an older browser are lost.
    generation: u64,
    sessions: HashMap<String, Arc<Session>>,
}

/// One session's context and page, driven by one task at a time.
struct Session {
    context: BrowserContextId,
    page: Page,
    generation: u64,
    last_used: std::sync::Mutex<Instant>,
    turn: Mutex<()>,
    /// Set when the session is closed (plan end, TTL, the page cap): a task
    /// that got it just before then finds out once it holds its turn.
    closed: std::sync::atomic::AtomicBool,
}

impl Web {
    pub fn new(mesh: Mesh) -> Web {
        let cfg = mesh.config.web.clone();
        Web {
            guard: Arc::new(Guard::new(&cfg.allow_networks)),
            cfg,
            mesh,
            state: Arc::default(),
            stop: CancellationToken::new(),
        }
    }

    /// Whether this machine has a browser to drive (for `jetmesh up`).
    pub fn available(cfg: &WebConfig) -> Result<(), Error> {
        browser::find(cfg).map(|_| ())
    }

    /// The session's page, opened for `navigate` when missing (or lost with
    /// an older browser); otherwise `session_lost`.
    async fn session(&self, id: &str, open: bool) -> Result<Arc<Session>, Error> {
        let mut st = self.state.lock().await;
        let alive = match st.browser.as_mut() {
            Some(b) => b.is_alive(),
            None => false,
        };
        if !alive {
            if st.browser.take().is_some() {
                tracing::warn!("The browser died; it is started again.");
                st.sessions.clear();
            }
            if st.proxy.is_none() {
                let addr = guard::start(self.guard.clone(), self.stop.clone())
                    .await
                    .map_err(|e| {
                        Error::new(
                            ErrorCode::Unavailable,
                            format!("cannot start the web guard: {e}"),
                        )
                    })?;
                st.proxy = Some(addr);
                self.spawn_reaper();
            }
            let proxy = st.proxy.expect("started above");
            st.browser = Some(Chromium::launch(&self.cfg, Some(proxy)).await?);
            st.generation += 1;
        }
        if let Some(s) = st.sessions.get(id) {
            if s.generation == st.generation {
                *s.last_used.lock().expect("session lock") = Instant::now();
                return Ok(s.clone());
            }
            st.sessions.remove(id);
        }
        if !open {
            return Err(Error::new(
                SESSION_LOST,
                format!(
                    "session {id} has no page here: navigate first (a session closes when its plan ends, after [web] session_ttl_secs unused, or when its browser restarts)"
                ),
            ));
        }
        // At the cap: close the least recently used idle session.
        while st.sessions.len() >= self.cfg.max_pages.max(1) {
            let idle = st
                .sessions
                .iter()
                .filter(|(_, s)| s.turn.try_lock().is_ok())
                .min_by_key(|(_, s)| *s.last_used.lock().expect("session lock"))
                .map(|(k, _)| k.clone());
            match idle {
                Some(k) => {
                    let s = st.sessions.remove(&k).expect("present");
                    tracing::info!(session = %k, "A session is closed to make room ([web] max_pages).");
                    close(st.browser.as_ref(), s).await;
                }
                None => {
                    drop(st);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    st = self.state.lock().await;
                }
            }
        }
        let b = &st.browser.as_ref().expect("launched above").browser;
        let context = bounded(
            "cannot make a browser context",
            b.create_browser_context(CreateBrowserContextParams::default()),
        )
        .await?;
        let target = CreateTargetParams::builder()
            .url("about:blank")
            .browser_context_id(context.clone())
            .build()
            .map_err(|e| Error::new(ErrorCode::Internal, e))?;
        let page = match bounded("cannot open a page", b.new_page(target)).await {
            Ok(p) => p,
            Err(e) => {
                let _ = bounded("", b.dispose_browser_context(context)).await;
                return Err(e);
            }
        };
        let s = Arc::new(Session {
            context,
            page,
            generation: st.generation,
            last_used: std::sync::Mutex::new(Instant::now()),
            turn: Mutex::new(()),
            closed: Default::default(),
        });
        st.sessions.insert(id.to_string(), s.clone());
        Ok(s)
    }

    /// Every few seconds: closes sessions unused for `[web]
    /// session_ttl_secs`, and checks that the browser answers; one that does
    /// not within 10 s (hung) is killed, to be started again by the next task.
    fn spawn_reaper(&self) {
        let ttl = Duration::from_secs(self.cfg.session_ttl_secs.max(1));
        let every = Duration::from_secs(5).min(ttl);
        let state = Arc::downgrade(&self.state);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(state) = state.upgrade() else { return };
                let mut st = state.lock().await;
                let expired: Vec<String> = st
                    .sessions
                    .iter()
                    .filter(|(_, s)| {
                        s.turn.try_lock().is_ok()
                            && s.last_used.lock().expect("session lock").elapsed() > ttl
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in expired {
                    let s = st.sessions.remove(&k).expect("present");
                    tracing::info!(session = %k, "A web session unused for [web] session_ttl_secs is closed.");
                    close(st.browser.as_ref(), s).await;
                }
                if let Some(b) = st.browser.as_ref() {
                    let answered =
                        tokio::time::timeout(Duration::from_secs(10), b.browser.version()).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        tracing::warn!(
                            pid = b.pid(),
                            "The browser does not answer; it is killed and started again."
                        );
                        st.browser = None;
                        st.sessions.clear();
                    }
                }
            }
        });
    }

    /// Runs the page helper `op` with `args`.
    async fn js(&self, page: &Page, args: Value) -> Result<Value, Error> {
        let args_timeout = args.get("timeout_ms").and_then(Value::as_u64).unwrap_or(0);
        let call = CallFunctionOnParams::builder()
            .function_declaration(PAGE_JS)
            .argument(CallArgument::builder().value(args).build())
            .await_promise(true)
            .return_by_value(true)
            .build()
            .map_err(|e| Error::new(ErrorCode::Internal, e))?;
        // Bounded by the helper's own wait, plus the usual bound.
        let own = Duration::from_millis(args_timeout);
        let evaluated = tokio::time::timeout(own + CDP_TIMEOUT, page.evaluate_function(call))
            .await
            .map_err(|_| silent("a script in the page"))?;
        evaluated
            .map_err(cdp("a script in the page failed"))?
            .into_value::<Value>()
            .map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("a script in the page gave no value: {e}"),
                )
            })
    }

    async fn run(&self, call: &Call<'_>) -> Result<Value, Error> {
        let generation = self.state.lock().await.generation;
        match self.run_once(call).await {
            // The browser died or hung under a navigation: it is started
            // again and the navigation tried once more (it needs no earlier
            // state). Other actions lose their session (`session_lost` next).
            Err(e)
                if call.action == "navigate"
                    && matches!(e.code, ErrorCode::Unavailable | ErrorCode::Timeout)
                    && self.lost(generation).await =>
            {
                tracing::warn!(error = %e, session = call.session, "The browser failed during a navigation; it is tried again on a new browser.");
                self.run_once(call).await
            }
            r => r,
        }
    }

    /// Whether the browser of `generation` is gone: dead, replaced, or not
    /// answering within 3 s (then it is killed, to be started again).
    async fn lost(&self, generation: u64) -> bool {
        let mut st = self.state.lock().await;
        if st.generation != generation {
            return true;
        }
        let mut answers = st.browser.as_mut().is_some_and(|b| b.is_alive());
        if answers && let Some(b) = st.browser.as_ref() {
            let ping = b.browser.version();
            answers = matches!(
                tokio::time::timeout(Duration::from_secs(3), ping).await,
                Ok(Ok(_))
            );
        }
        if !answers {
            if let Some(b) = st.browser.take() {
                tracing::warn!(
                    pid = b.pid(),
                    "The browser is dead or hung; it is killed and started again."
                );
            }
            st.sessions.clear();
        }
        !answers
    }

    async fn run_once(&self, call: &Call<'_>) -> Result<Value, Error> {
        let p = call.params;
        let open = call.action == "navigate";
        let mut session = self.session(call.session, open).await?;
        let mut turn = session.turn.lock().await;
        if session.closed.load(std::sync::atomic::Ordering::Relaxed) {
            // Closed while this task waited for its turn: a navigation opens
            // the session again; anything else has lost its page.
            drop(turn);
            session = self.session(call.session, open).await?;
            turn = session.turn.lock().await;
        }
        let _turn = turn;
        let page = &session.page;
        match call.action {
            "navigate" => self.navigate(page, p, call).await,
            "click" => self.click(page, p).await,
            "extract" => self.extract(page, p).await,
            "screenshot" => self.screenshot(page, p, call).await,
            "scroll" => self.scroll(page, p).await,
            other => Err(Error::new(
                ErrorCode::UnknownAction,
                format!("web has no action {other:?}"),
            )),
        }
    }

    async fn navigate(
        &self,
        page: &Page,
        p: &Map<String, Value>,
        call: &Call<'_>,
    ) -> Result<Value, Error> {
        let url = params::str(p, "url")?;
        let parsed = target_host(url)?;
        let mark = self.guard.mark();
        let limit = Duration::from_millis(self.cfg.navigation_timeout_ms.max(100));
        let went = tokio::time::timeout(limit, page.goto(url)).await;
        let refused = self.guard.refusals_since(mark);
        // After a failed navigation the browser may be gone: ask briefly.
        let ask = match went {
            Ok(Ok(_)) => CDP_TIMEOUT,
            _ => Duration::from_secs(3),
        };
        let info = tokio::time::timeout(ask, self.js(page, json!({"op": "info"})))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(Value::Null);
        let final_url = info["url"].as_str().unwrap_or("").to_string();
        // Refused: the target itself, or where a redirect led (the page then
        // shows the guard's 403, or Chromium's error page for a tunnel). A
        // refusal of something else the page asked for (an image) is only
        // reported.
        let document_hosts = [parsed.as_str(), host_of(&final_url).unwrap_or("")];
        let failed = final_url.starts_with("chrome-error:") || matches!(went, Ok(Err(_)));
        let about_document = |r: &&guard::Refusal| {
            document_hosts.contains(&r.host.as_str()) || (failed && refused.len() == 1)
        };
        if let Some(r) = refused.iter().filter(|r| r.refused).find(about_document) {
            return Err(Error::new(ADDRESS_REFUSED, format!("{url}: {}", r.why)));
        }
        if let Some(r) = refused.iter().filter(|r| !r.refused).find(about_document) {
            return Err(Error::new(NAVIGATION_FAILED, format!("{url}: {}", r.why)));
        }
        match went {
            Err(_) => {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!("{url} did not load within {limit:?}"),
                ));
            }
            Ok(Err(e)) => {
                return Err(Error::new(NAVIGATION_FAILED, format!("{url}: {e}")));
            }
            Ok(Ok(_)) => {}
        }
        if final_url.starts_with("chrome-error:") {
            return Err(Error::new(
                NAVIGATION_FAILED,
                format!("{url}: the page could not be loaded"),
            ));
        }
        if params::opt_str(p, "wait")? == Some("networkidle") {
            let idle =
                json!({"op": "idle", "quiet_ms": 500, "timeout_ms": limit.as_millis() as u64});
            self.js(page, idle).await?;
        }
        if let Some(sel) = params::opt_str(p, "selector")? {
            let found = self
                .js(page, json!({"op": "wait_selector", "selector": sel, "timeout_ms": limit.as_millis() as u64}))
                .await?;
            if found != Value::Bool(true) {
                return Err(Error::new(
                    SELECTOR_NOT_FOUND,
                    format!("{sel:?} matched nothing on {final_url} within {limit:?}"),
                ));
            }
        }
        let format = params::opt_str(p, "format")?.unwrap_or("text");
        let waited = p.contains_key("wait") || p.contains_key("selector");
        let mut out = if format == "none" && !waited && info.is_object() {
            // Nothing ran since the page was asked about.
            info
        } else if format == "none" {
            self.js(page, json!({"op": "info"})).await?
        } else {
            self.js(
                page,
                json!({"op": "text", "markdown": format == "markdown"}),
            )
            .await?
        };
        self.spill_text(&mut out, "text", call, "page").await?;
        if !refused.is_empty() {
            // What the page asked for and the guard refused (an image, a frame).
            out["refused"] = refused
                .iter()
                .map(|r| json!({"host": r.host, "ip": r.ip.map(|ip| ip.to_string()), "why": r.why}))
                .collect();
        }
        Ok(out)
    }

    /// A text field over `[web] max_inline_bytes` goes to the object store:
    /// `field` is replaced by `<field>_object`, a reference.
    async fn spill_text(
        &self,
        out: &mut Value,
        field: &str,
        call: &Call<'_>,
        name: &str,
    ) -> Result<(), Error> {
        let Some(text) = out.get(field).and_then(Value::as_str) else {
            return Ok(());
        };
        if text.len() <= self.cfg.max_inline_bytes {
            return Ok(());
        }
        let key = self
            .mesh
            .names
            .object_key(call.plan_id, call.task_id, &format!("{name}.txt"));
        let r = objects::put(
            &self.mesh,
            &key,
            "text/plain; charset=utf-8",
            text.as_bytes(),
        )
        .await?;
        let o = out.as_object_mut().expect("an object");
        o.remove(field);
        o.insert(
            format!("{field}_object"),
            serde_json::to_value(r).expect("a reference serializes"),
        );
        Ok(())
    }

    async fn click(&self, page: &Page, p: &Map<String, Value>) -> Result<Value, Error> {
        let sel = params::str(p, "selector")?;
        let before = self.js(page, json!({"op": "info"})).await?;
        let el = self.element(page, sel).await?;
        bounded("the click failed", el.click()).await?;
        // A navigation destroys the context the settle script runs in: then
        // wait for the new document instead.
        let settled = self
            .js(
                page,
                json!({"op": "settle", "quiet_ms": 200, "timeout_ms": 5000}),
            )
            .await;
        let navigated = settled.is_err();
        if navigated {
            let _ = tokio::time::timeout(
                Duration::from_millis(self.cfg.navigation_timeout_ms),
                page.wait_for_navigation(),
            )
            .await;
        }
        let after = self.js(page, json!({"op": "info"})).await?;
        let navigated = navigated || after["url"] != before["url"];
        Ok(json!({"url": after["url"], "title": after["title"], "navigated": navigated}))
    }

    /// The first element `sel` matches. Errors: `selector_not_found`,
    /// `invalid_args` for a selector that is not CSS.
    async fn element(&self, page: &Page, sel: &str) -> Result<chromiumoxide::Element, Error> {
        let found = self
            .js(
                page,
                json!({"op": "extract", "selector": sel, "limit": 1, "as": "text"}),
            )
            .await?;
        if found.get("error").is_some() {
            return Err(Error::invalid_args(format!(
                "selector {sel:?} is not valid CSS"
            )));
        }
        if found["count"] == 0 {
            let info = self.js(page, json!({"op": "info"})).await?;
            return Err(Error::new(
                SELECTOR_NOT_FOUND,
                format!(
                    "{sel:?} matches nothing on {}",
                    info["url"].as_str().unwrap_or("the page")
                ),
            ));
        }
        bounded("cannot find the element", page.find_element(sel)).await
    }

    async fn extract(&self, page: &Page, p: &Map<String, Value>) -> Result<Value, Error> {
        let args = json!({
            "op": "extract",
            "selector": params::opt_str(p, "selector")?,
            "attribute": params::opt_str(p, "attribute")?,
            "as": params::opt_str(p, "as")?.unwrap_or(if p.contains_key("selector") { "text" } else { "markdown" }),
            "limit": p.get("limit").and_then(Value::as_u64).unwrap_or(1000),
        });
        let out = self.js(page, args).await?;
        if out.get("error").and_then(Value::as_str) == Some("invalid_selector") {
            return Err(Error::invalid_args(format!(
                "selector {:?} is not valid CSS: {}",
                params::opt_str(p, "selector")?.unwrap_or(""),
                out["message"].as_str().unwrap_or("")
            )));
        }
        Ok(out)
    }

    async fn screenshot(
        &self,
        page: &Page,
        p: &Map<String, Value>,
        call: &Call<'_>,
    ) -> Result<Value, Error> {
        let png = match params::opt_str(p, "selector")? {
            Some(sel) => {
                let el = self.element(page, sel).await?;
                bounded(
                    "the screenshot failed",
                    el.screenshot(CaptureScreenshotFormat::Png),
                )
                .await?
            }
            None => {
                let params = ScreenshotParams::builder()
                    .format(CaptureScreenshotFormat::Png)
                    .full_page(params::opt_bool(p, "full_page")?.unwrap_or(false))
                    .build();
                bounded("the screenshot failed", page.screenshot(params)).await?
            }
        };
        let (width, height) = png_size(&png)
            .ok_or_else(|| Error::new(ErrorCode::Internal, "the browser gave no PNG"))?;
        let key = self
            .mesh
            .names
            .object_key(call.plan_id, call.task_id, "screenshot.png");
        let r = objects::put(&self.mesh, &key, "image/png", &png).await?;
        Ok(json!({"object": r, "width": width, "height": height, "format": "png"}))
    }

    async fn scroll(&self, page: &Page, p: &Map<String, Value>) -> Result<Value, Error> {
        let rounds = p.get("max_rounds").and_then(Value::as_u64).unwrap_or(10);
        let wait_ms = p.get("wait_ms").and_then(Value::as_u64).unwrap_or(1000);
        let args = json!({
            "op": "scroll",
            "pixels": p.get("pixels"),
            "selector": params::opt_str(p, "selector")?,
            "max_rounds": rounds,
            "wait_ms": wait_ms,
            // The whole scroll, bounded.
            "timeout_ms": (rounds.saturating_mul(wait_ms) + 5000).min(MAX_PAGE_WAIT.as_millis() as u64),
        });
        let out = self.js(page, args).await?;
        if out.get("error").and_then(Value::as_str) == Some("selector_not_found") {
            return Err(Error::new(
                SELECTOR_NOT_FOUND,
                format!(
                    "{:?} matches nothing",
                    params::opt_str(p, "selector")?.unwrap_or("")
                ),
            ));
        }
        Ok(out)
    }
}

/// Closes a session's page and its browser context (cookies, storage).
async fn close(browser: Option<&Chromium>, s: Arc<Session>) {
    s.closed.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = bounded("", s.page.clone().close()).await;
    if let Some(b) = browser {
        let _ = bounded("", b.browser.dispose_browser_context(s.context.clone())).await;
    }
}

/// How long one DevTools call may take: a dead or hung browser never holds
/// a task longer (its driver's channel may block for good).
const CDP_TIMEOUT: Duration = Duration::from_secs(15);

/// A DevTools call, bounded by [`CDP_TIMEOUT`].
async fn bounded<T>(
    what: &'static str,
    call: impl Future<Output = chromiumoxide::Result<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(CDP_TIMEOUT, call).await {
        Ok(r) => r.map_err(cdp(what)),
        Err(_) => Err(silent(what)),
    }
}

/// The browser did not answer.
fn silent(what: &str) -> Error {
    Error::new(
        ErrorCode::Unavailable,
        format!("{what}: the browser did not answer within {CDP_TIMEOUT:?}"),
    )
}

impl Capability for Web {
    fn name(&self) -> &'static str {
        "web"
    }

    fn actions(&self) -> &'static [Action] {
        ACTIONS
    }

    fn sessions(&self) -> bool {
        true
    }

    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move { self.run(&call).await })
    }

    fn holds(&self, session: &str) -> bool {
        // Busy (locked by a task) counts as held.
        self.state
            .try_lock()
            .map(|st| st.sessions.contains_key(session))
            .unwrap_or(true)
    }

    fn close_session<'a>(&'a self, session: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            if let Some(s) = st.sessions.remove(session) {
                tracing::debug!(session, "A web session is closed.");
                close(st.browser.as_ref(), s).await;
            }
        })
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A chromiumoxide error as a mesh error: a dead or silent browser is
/// `unavailable` (retryable; the browser is started again).
fn cdp(what: &'static str) -> impl Fn(chromiumoxide::error::CdpError) -> Error {
    move |e| Error::new(ErrorCode::Unavailable, format!("{what}: {e}"))
}

/// The host of an http(s) URL, lowercased, without brackets.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next();
    }
    Some(authority.split(':').next().unwrap_or(authority))
}

/// The host a task's URL names. Errors: `invalid_args`.
fn target_host(url: &str) -> Result<String, Error> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(Error::invalid_args(
            "url must be an http:// or https:// URL",
        ));
    }
    match host_of(url) {
        Some(h) if !h.is_empty() => Ok(h.to_ascii_lowercase()),
        _ => Err(Error::invalid_args(format!("url {url:?} has no host"))),
    }
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(png[20..24].try_into().ok()?);
    Some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host_of("http://a.b:8080/x?y"), Some("a.b"));
        assert_eq!(host_of("https://u:p@h.example/"), Some("h.example"));
        assert_eq!(host_of("http://[::1]:80/"), Some("::1"));
        assert_eq!(
            host_of("http://169.254.169.254/latest"),
            Some("169.254.169.254")
        );
        assert!(target_host("file:///etc/passwd").is_err());
        assert!(target_host("javascript:alert(1)").is_err());
    }

    #[test]
    fn png_sizes() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&1280u32.to_be_bytes());
        png.extend_from_slice(&800u32.to_be_bytes());
        assert_eq!(png_size(&png), Some((1280, 800)));
        assert_eq!(png_size(b"GIF89a"), None);
    }
}
