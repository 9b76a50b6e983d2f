//! A strict emulator of three LLM providers' HTTP APIs (OpenAI Chat
//! Completions, Anthropic Messages, Gemini generateContent), for tests without
//! internet: `tests/llm_emulator.py` (Python standard library only), run as a
//! child process on a loopback port the server picked itself, killed on drop.
//!
//! Each API checks its requests the way the real one does (keys, headers,
//! fields, tool-call pairing; an unknown field is refused) and answers with
//! what the test scripted for the request's model ([`LlmEmulator::script`],
//! [`LlmEmulator::default_reply`]); the three APIs share the script table.
//! An invalid request consumes no reply. Every request, rejected ones too, is
//! recorded ([`LlmEmulator::received`]) with the tokens it was billed:
//! input = ⌈len(compact JSON of the messages or contents, plus the system
//! prompt's) / 4⌉, output = ⌈len(answer text or tool arguments) / 4⌉, both
//! at least 1; errors are billed nothing. See the script's docstring for the
//! details.

use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The HTTP client the driver uses, for tests that call the emulator
/// directly (the integration tests' package does not depend on it).
pub use reqwest;

/// The only key the OpenAI API accepts (`Authorization: Bearer …`).
pub const OPENAI_KEY: &str = "sk-emu-openai-7Qx2Lm9Vt4Rb";
/// The only key the Anthropic API accepts (`x-api-key`).
pub const ANTHROPIC_KEY: &str = "sk-ant-emu-3Jd8Pw5Kz1Nf";
/// The only key the Gemini API accepts (`x-goog-api-key` or `?key=`).
pub const GEMINI_KEY: &str = "AIzaEmuGemini6Hc0Ys2Wq8";

const START_WITHIN: Duration = Duration::from_secs(10);

/// Which API a request was made to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `"openai"`
    OpenAi,
    Anthropic,
    Gemini,
}

/// What the emulated model answers to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// The value: as a tool call's arguments when the request forces a tool
    /// (OpenAI `tool_choice` `required` or a function, Anthropic `any` or a
    /// tool, Gemini mode `ANY`), else as its compact JSON text.
    Json(Value),
    /// Plain text, even when a tool is forced.
    Text(String),
    /// That HTTP status with the provider's error body; `retry_after` (in
    /// seconds) sets `Retry-After` (and Gemini's `RetryInfo`).
    Error {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Waits, then answers with the inner reply (or nothing, if the client
    /// went away meanwhile: recorded with status 499).
    Delay(Duration, Box<Reply>),
    /// The provider's refusal: OpenAI `message.refusal`, Anthropic
    /// `stop_reason: "refusal"`, Gemini `promptFeedback.blockReason`.
    Refusal(String),
}

impl Reply {
    /// The reply as the emulator's control API takes it.
    pub fn to_json(&self) -> Value {
        match self {
            Reply::Json(v) => json!({"kind": "json", "value": v}),
            Reply::Text(t) => json!({"kind": "text", "text": t}),
            Reply::Error {
                status,
                retry_after,
            } => {
                let mut v = json!({"kind": "error", "status": status});
                if let Some(s) = retry_after {
                    v["retry_after"] = json!(s);
                }
                v
            }
            Reply::Delay(d, then) => {
                json!({"kind": "delay", "ms": d.as_millis() as u64, "then": then.to_json()})
            }
            Reply::Refusal(t) => json!({"kind": "refusal", "text": t}),
        }
    }
}

/// One request the emulator received, in arrival order.
#[derive(Clone, Debug, Deserialize)]
pub struct Received {
    pub api: Api,
    /// From the body (OpenAI, Anthropic) or the path (Gemini); empty if none.
    pub model: String,
    /// The URL path, without the query.
    pub path: String,
    /// The query parameters (Gemini's `key`, when sent that way).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body as parsed JSON (`null` if it was not JSON).
    pub body: Value,
    /// The status answered: 0 while still being answered (a delay), 499 if
    /// the client went away during a delay.
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Why the request was refused (validation, key, path), or that nothing
    /// was scripted; `None` for a valid request, even one answered with a
    /// scripted error.
    pub error: Option<String>,
}

/// The emulator process, killed on drop.
pub struct LlmEmulator {
    child: Option<Child>,
    port: u16,
    stderr: tempfile::NamedTempFile,
    http: reqwest::Client,
}

impl LlmEmulator {
    /// Starts `tests/llm_emulator.py` with [`crate::python`] and waits (up
    /// to 10 s) until it says which port it listens on.
    pub fn start() -> LlmEmulator {
        let stderr = tempfile::NamedTempFile::new().expect("a log file");
        let mut child = Command::new(crate::python())
            .arg(crate::root().join("tests/llm_emulator.py"))
            .current_dir(crate::root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("the log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the LLM emulator (python): {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START_WITHIN).unwrap_or_default();
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse::<u16>().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the LLM emulator did not start within {START_WITHIN:?} (said {line:?}): {}",
                std::fs::read_to_string(stderr.path()).unwrap_or_default()
            );
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            // No idle connections: an emulator may outlive the runtime of
            // the test that made it.
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        LlmEmulator {
            child: Some(child),
            port,
            stderr,
            http,
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The OpenAI base URL: `<url>/openai/v1`.
    pub fn openai_url(&self) -> String {
        format!("{}/openai/v1", self.url())
    }

    /// The Anthropic base URL: `<url>/anthropic/v1`.
    pub fn anthropic_url(&self) -> String {
        format!("{}/anthropic/v1", self.url())
    }

    /// The Gemini base URL: `<url>/gemini/v1beta`.
    pub fn gemini_url(&self) -> String {
        format!("{}/gemini/v1beta", self.url())
    }

    /// What the emulator wrote to stderr so far (a line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.url()));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("LLM emulator {path}: {e}"));
        let status = resp.status();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("LLM emulator {path}: {e}"));
        assert!(status.is_success(), "LLM emulator {path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("LLM emulator {path}: {e}: {text}"))
    }

    /// Appends `replies` to `model`'s queue (answered first in, first out).
    pub async fn script(&self, model: &str, replies: Vec<Reply>) {
        let replies: Vec<Value> = replies.iter().map(Reply::to_json).collect();
        self.control(
            reqwest::Method::POST,
            "/_emu/script",
            Some(json!({"model": model, "replies": replies})),
        )
        .await;
    }

    /// The reply for `model` when its queue is empty.
    pub async fn default_reply(&self, model: &str, reply: Reply) {
        self.control(
            reqwest::Method::POST,
            "/_emu/default",
            Some(json!({"model": model, "reply": reply.to_json()})),
        )
        .await;
    }

    /// Every request received so far, oldest first.
    pub async fn received(&self) -> Vec<Received> {
        let v = self
            .control(reqwest::Method::GET, "/_emu/received", None)
            .await;
        serde_json::from_value(v).unwrap_or_else(|e| panic!("LLM emulator /_emu/received: {e}"))
    }

    /// How many requests were made for `model` (rejected ones too).
    pub async fn count(&self, model: &str) -> usize {
        self.received()
            .await
            .iter()
            .filter(|r| r.model == model)
            .count()
    }

    /// Forgets the scripts, the defaults and what was received.
    pub async fn reset(&self) {
        self.control(reqwest::Method::POST, "/_emu/reset", Some(json!({})))
            .await;
    }
}

impl Drop for LlmEmulator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- LLM emulator's log ---\n{}", self.log());
        }
    }
}
