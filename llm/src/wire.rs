//! The three wire protocols, as their providers document them: the request
//! each is sent, and what its answer (or error) says.
//!
//! - OpenAI Chat Completions, `POST {base}/chat/completions`
//!   (<https://platform.openai.com/docs/api-reference/chat/create>), spoken
//!   by OpenAI and by Ollama, vLLM, llama.cpp's server and the like;
//! - Anthropic Messages, `POST {base}/messages`
//!   (<https://docs.anthropic.com/en/api/messages>);
//! - Gemini, `POST {base}/models/{model}:generateContent`
//!   (<https://ai.google.dev/api/generate-content>).

use std::time::Duration;

use jetmesh_shared::config::{ProviderKind, Structured};
use serde_json::{Map, Value, json};

use crate::{Content, Output, Request, Turn};

/// How the structured answer is asked for, per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Free text (the narrative).
    Text,
    /// The provider's JSON-schema response format.
    Schema,
    /// A forced call of one tool whose parameters are the schema.
    Tool,
    /// The schema in the prompt only.
    Prompt,
}

pub fn mode(kind: ProviderKind, structured: Structured, output: &Output) -> Mode {
    match (output, structured) {
        (Output::Text, _) => Mode::Text,
        (Output::Json { .. }, Structured::Tool) => Mode::Tool,
        (Output::Json { .. }, Structured::Prompt) => Mode::Prompt,
        (Output::Json { .. }, Structured::Native) => match kind {
            ProviderKind::Anthropic => Mode::Tool,
            ProviderKind::Openai | ProviderKind::Gemini => Mode::Schema,
        },
    }
}

/// One HTTP request to make.
pub struct Call {
    pub url: String,
    /// Header name and value; the key's header is marked sensitive.
    pub headers: Vec<(&'static str, String)>,
    pub key_header: Option<(&'static str, String)>,
    pub body: Value,
}

/// A provider's answer that made it through HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub content: Content,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The model that answered, when the provider says.
    pub model: Option<String>,
    pub finish: Option<String>,
}

/// Why a call gave no answer to use.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    RateLimited {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    Server {
        status: u16,
        message: String,
    },
    Client {
        status: u16,
        message: String,
    },
    Timeout,
    Unreachable(String),
    /// The model or the provider declined; the tokens were still spent.
    Refused {
        message: String,
        input_tokens: u64,
        output_tokens: u64,
    },
    /// An answer that is not what was asked for (no content, bad JSON in a
    /// tool call, or an answer the caller cannot use).
    Unusable {
        message: String,
        input_tokens: u64,
        output_tokens: u64,
    },
}

impl Failure {
    pub fn outcome(&self) -> &'static str {
        match self {
            Failure::RateLimited { .. } => "rate_limited",
            Failure::Server { .. } => "server_error",
            Failure::Client { .. } => "client_error",
            Failure::Timeout => "timeout",
            Failure::Unreachable(_) => "unreachable",
            Failure::Refused { .. } => "refused",
            Failure::Unusable { .. } => "unusable",
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Failure::RateLimited { status, .. }
            | Failure::Server { status, .. }
            | Failure::Client { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::RateLimited {
                status, message, ..
            }
            | Failure::Server { status, message }
            | Failure::Client { status, message } => format!("HTTP {status}: {message}"),
            Failure::Timeout => "the call timed out".into(),
            Failure::Unreachable(m) => m.clone(),
            Failure::Refused { message, .. } => format!("refused: {message}"),
            Failure::Unusable { message, .. } => format!("unusable answer: {message}"),
        }
    }

    /// Whether it says the provider is unwell or misconfigured (for its
    /// breaker). A refusal, an unusable answer, or a 4xx about this one
    /// request (400, 413, 422: a prompt too long, say) does not: one
    /// hostile request must not take a provider out for everyone.
    pub fn is_health(&self) -> bool {
        match self {
            Failure::Refused { .. } | Failure::Unusable { .. } => false,
            Failure::Client { status, .. } => matches!(status, 0 | 401 | 402 | 403 | 404),
            _ => true,
        }
    }

    pub fn tokens(&self) -> (u64, u64) {
        match self {
            Failure::Refused {
                input_tokens,
                output_tokens,
                ..
            }
            | Failure::Unusable {
                input_tokens,
                output_tokens,
                ..
            } => (*input_tokens, *output_tokens),
            _ => (0, 0),
        }
    }
}

/// What the provider's own service is called, for spans
/// (`gen_ai.provider.name`).
pub fn system(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gcp.gemini",
    }
}

pub fn default_base(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "https://api.openai.com/v1",
        ProviderKind::Anthropic => "https://api.anthropic.com/v1",
        ProviderKind::Gemini => "https://generativelanguage.googleapis.com/v1beta",
    }
}

/// The system prompt, with the schema spelled out when only the prompt can
/// ask for it.
fn system_text(req: &Request, mode: Mode) -> String {
    match (&req.output, mode) {
        (Output::Json { schema, .. }, Mode::Prompt) => format!(
            "{}\n\nAnswer with one JSON object and nothing else (no prose, no code fence). \
             It must match this JSON Schema:\n{}",
            req.system, schema
        ),
        _ => req.system.clone(),
    }
}

fn tool_name(req: &Request) -> &str {
    match &req.output {
        Output::Json { name, .. } => name,
        Output::Text => "answer",
    }
}

fn json_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The settings of one call.
pub struct Settings<'a> {
    pub kind: ProviderKind,
    pub base_url: &'a str,
    pub model: &'a str,
    pub key: Option<&'a str>,
    pub temperature: Option<f32>,
    pub max_output_tokens: u32,
}

pub fn build(s: &Settings<'_>, req: &Request, mode: Mode) -> Call {
    let base = s.base_url.trim_end_matches('/');
    match s.kind {
        ProviderKind::Openai => openai(s, base, req, mode),
        ProviderKind::Anthropic => anthropic(s, base, req, mode),
        ProviderKind::Gemini => gemini(s, base, req, mode),
    }
}

fn openai(s: &Settings<'_>, base: &str, req: &Request, mode: Mode) -> Call {
    let mut messages = vec![json!({"role": "system", "content": system_text(req, mode)})];
    let name = tool_name(req);
    // A tool call is answered by a `tool` message with its id.
    let mut open_call: Option<String> = None;
    for (i, turn) in req.turns.iter().enumerate() {
        match turn {
            Turn::User(text) => match open_call.take() {
                Some(id) => {
                    messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}))
                }
                None => messages.push(json!({"role": "user", "content": text})),
            },
            Turn::Assistant(Content::Json(v)) if mode == Mode::Tool => {
                let id = format!("call_{i}");
                messages.push(json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{"id": id, "type": "function",
                        "function": {"name": name, "arguments": json_text(v)}}],
                }));
                open_call = Some(id);
            }
            Turn::Assistant(c) => {
                messages.push(json!({"role": "assistant", "content": c.text()}));
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(s.model));
    body.insert("messages".into(), Value::Array(messages));
    // OpenAI's own API deprecated `max_tokens` (its reasoning models refuse
    // it); the compatible servers document `max_tokens` only.
    let max_key = if base == default_base(ProviderKind::Openai) {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    body.insert(max_key.into(), json!(s.max_output_tokens));
    if let Some(t) = s.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Output::Json {
        name,
        description,
        schema,
    } = &req.output
    {
        match mode {
            Mode::Schema => {
                body.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {
                        "name": name, "description": description,
                        // Strict mode needs every property required and no
                        // `anyOf` at the root; validation is ours anyway.
                        "schema": schema, "strict": false}}),
                );
            }
            Mode::Tool => {
                body.insert(
                    "tools".into(),
                    json!([{"type": "function", "function": {
                        "name": name, "description": description, "parameters": schema}}]),
                );
                body.insert(
                    "tool_choice".into(),
                    json!({"type": "function", "function": {"name": name}}),
                );
            }
            Mode::Prompt | Mode::Text => {}
        }
    }
    Call {
        url: format!("{base}/chat/completions"),
        headers: vec![],
        key_header: s.key.map(|k| ("authorization", format!("Bearer {k}"))),
        body: Value::Object(body),
    }
}

fn anthropic(s: &Settings<'_>, base: &str, req: &Request, mode: Mode) -> Call {
    let name = tool_name(req);
    let mut messages: Vec<Value> = Vec::new();
    let mut open_call: Option<String> = None;
    for (i, turn) in req.turns.iter().enumerate() {
        match turn {
            Turn::User(text) => match open_call.take() {
                Some(id) => {
                    messages.push(json!({"role": "user", "content": [{
                    "type": "tool_result", "tool_use_id": id, "content": text, "is_error": true}]}))
                }
                None => messages.push(json!({"role": "user", "content": text})),
            },
            Turn::Assistant(Content::Json(v)) if mode == Mode::Tool && v.is_object() => {
                let id = format!("toolu_{i:02}");
                messages.push(json!({"role": "assistant", "content": [{
                    "type": "tool_use", "id": id, "name": name, "input": v}]}));
                open_call = Some(id);
            }
            Turn::Assistant(c) => {
                messages.push(json!({"role": "assistant", "content": c.text()}));
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(s.model));
    body.insert("max_tokens".into(), json!(s.max_output_tokens));
    body.insert("system".into(), json!(system_text(req, mode)));
    body.insert("messages".into(), Value::Array(messages));
    if let Some(t) = s.temperature {
        body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let (
        Output::Json {
            name,
            description,
            schema,
        },
        Mode::Tool | Mode::Schema,
    ) = (&req.output, mode)
    {
        body.insert(
            "tools".into(),
            json!([{"name": name, "description": description, "input_schema": schema}]),
        );
        body.insert("tool_choice".into(), json!({"type": "tool", "name": name}));
    }
    Call {
        url: format!("{base}/messages"),
        headers: vec![("anthropic-version", "2023-06-01".into())],
        key_header: s.key.map(|k| ("x-api-key", k.to_string())),
        body: Value::Object(body),
    }
}

fn gemini(s: &Settings<'_>, base: &str, req: &Request, mode: Mode) -> Call {
    let name = tool_name(req);
    let mut contents: Vec<Value> = Vec::new();
    let mut open_call = false;
    for turn in &req.turns {
        match turn {
            Turn::User(text) if std::mem::take(&mut open_call) => {
                contents.push(json!({"role": "user", "parts": [{"functionResponse": {
                    "name": name, "response": {"error": text}}}]}));
            }
            Turn::User(text) => contents.push(json!({"role": "user", "parts": [{"text": text}]})),
            Turn::Assistant(Content::Json(v)) if mode == Mode::Tool && v.is_object() => {
                contents.push(
                    json!({"role": "model", "parts": [{"functionCall": {"name": name, "args": v}}]}),
                );
                open_call = true;
            }
            Turn::Assistant(c) => {
                contents.push(json!({"role": "model", "parts": [{"text": c.text()}]}));
            }
        }
    }
    let mut generation = Map::new();
    generation.insert("maxOutputTokens".into(), json!(s.max_output_tokens));
    if let Some(t) = s.temperature {
        generation.insert("temperature".into(), json!(t));
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    body.insert(
        "systemInstruction".into(),
        json!({"parts": [{"text": system_text(req, mode)}]}),
    );
    if let Output::Json {
        name,
        description,
        schema,
    } = &req.output
    {
        match mode {
            Mode::Schema => {
                generation.insert("responseMimeType".into(), json!("application/json"));
                generation.insert("responseJsonSchema".into(), schema.clone());
            }
            Mode::Tool => {
                body.insert(
                    "tools".into(),
                    json!([{"functionDeclarations": [{
                        "name": name, "description": description,
                        "parametersJsonSchema": schema}]}]),
                );
                body.insert(
                    "toolConfig".into(),
                    json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}),
                );
            }
            Mode::Prompt => {
                generation.insert("responseMimeType".into(), json!("application/json"));
            }
            Mode::Text => {}
        }
    }
    body.insert("generationConfig".into(), Value::Object(generation));
    Call {
        url: format!("{base}/models/{}:generateContent", s.model),
        headers: vec![],
        key_header: s.key.map(|k| ("x-goog-api-key", k.to_string())),
        body: Value::Object(body),
    }
}

/// Reads an HTTP answer: `retry_after` is the `Retry-After` header, if any.
pub fn parse(
    kind: ProviderKind,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Answer, Failure> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        let message = json
            .as_ref()
            .and_then(error_message)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        return Err(match status {
            429 => Failure::RateLimited {
                status,
                retry_after: retry_after.or_else(|| json.as_ref().and_then(gemini_retry_delay)),
                message,
            },
            // 529: Anthropic's "overloaded".
            408 | 500..=599 => Failure::Server { status, message },
            _ => Failure::Client { status, message },
        });
    }
    let Some(json) = json else {
        return Err(unusable("the answer is not JSON", 0, 0));
    };
    match kind {
        ProviderKind::Openai => parse_openai(&json),
        ProviderKind::Anthropic => parse_anthropic(&json),
        ProviderKind::Gemini => parse_gemini(&json),
    }
}

fn unusable(message: impl Into<String>, input_tokens: u64, output_tokens: u64) -> Failure {
    Failure::Unusable {
        message: message.into(),
        input_tokens,
        output_tokens,
    }
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        match v.get(p) {
            Some(x) => v = x,
            None => return 0,
        }
    }
    v.as_u64().unwrap_or(0)
}

fn error_message(v: &Value) -> Option<String> {
    // OpenAI and Gemini: {"error": {"message"}}; Anthropic: {"type":
    // "error", "error": {"type", "message"}}; some servers: {"error": "…"}.
    match v.get("error")? {
        Value::String(s) => Some(s.clone()),
        e => e.get("message").and_then(Value::as_str).map(str::to_string),
    }
}

/// A `Retry-After` value: seconds (`120`, `1.5`) or an HTTP date, capped
/// at [`crate::guard::MAX_COOLING`]; `None` when it is neither.
pub fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs >= 0.0)
            .then(|| Duration::try_from_secs_f64(secs.min(1e6)).ok())
            .flatten()
            .map(|d| d.min(crate::guard::MAX_COOLING));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(
        Duration::try_from(wait)
            .unwrap_or_default()
            .min(crate::guard::MAX_COOLING),
    )
}

/// Gemini's 429 says when in `google.rpc.RetryInfo` (`"retryDelay": "7s"`).
fn gemini_retry_delay(v: &Value) -> Option<Duration> {
    v.get("error")?
        .get("details")?
        .as_array()?
        .iter()
        .find(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })?
        .get("retryDelay")?
        .as_str()?
        .strip_suffix('s')
        .and_then(retry_after)
}

fn parse_openai(v: &Value) -> Result<Answer, Failure> {
    let input = num(v, &["usage", "prompt_tokens"]);
    let output = num(v, &["usage", "completion_tokens"]);
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| unusable("the answer has no choices", input, output))?;
    let message = choice.get("message").cloned().unwrap_or(Value::Null);
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        return Err(Failure::Refused {
            message: refusal.to_string(),
            input_tokens: input,
            output_tokens: output,
        });
    }
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .map(str::to_string);
    if finish.as_deref() == Some("content_filter") {
        return Err(Failure::Refused {
            message: "the provider's content filter stopped the answer".into(),
            input_tokens: input,
            output_tokens: output,
        });
    }
    let content = if let Some(args) = message
        .get("tool_calls")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("function"))
        .and_then(|f| f.get("arguments"))
        .and_then(Value::as_str)
    {
        Content::Json(serde_json::from_str(args).map_err(|e| {
            unusable(
                format!("the tool call's arguments are not JSON: {e}"),
                input,
                output,
            )
        })?)
    } else if let Some(text) = message.get("content").and_then(Value::as_str) {
        Content::Text(text.to_string())
    } else {
        return Err(unusable("the answer has no content", input, output));
    };
    Ok(Answer {
        content,
        input_tokens: input,
        output_tokens: output,
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
        finish,
    })
}

fn parse_anthropic(v: &Value) -> Result<Answer, Failure> {
    let input = num(v, &["usage", "input_tokens"]);
    let output = num(v, &["usage", "output_tokens"]);
    let blocks = v.get("content").and_then(Value::as_array);
    let text: String = blocks
        .into_iter()
        .flatten()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let finish = v
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(str::to_string);
    if finish.as_deref() == Some("refusal") {
        return Err(Failure::Refused {
            message: if text.is_empty() {
                "the model declined".into()
            } else {
                text
            },
            input_tokens: input,
            output_tokens: output,
        });
    }
    let tool = blocks
        .into_iter()
        .flatten()
        .find(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .and_then(|b| b.get("input"));
    let content = match tool {
        Some(input) => Content::Json(input.clone()),
        None if !text.is_empty() => Content::Text(text),
        None => return Err(unusable("the answer has no content", input, output)),
    };
    Ok(Answer {
        content,
        input_tokens: input,
        output_tokens: output,
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
        finish,
    })
}

fn parse_gemini(v: &Value) -> Result<Answer, Failure> {
    let input = num(v, &["usageMetadata", "promptTokenCount"]);
    let output = num(v, &["usageMetadata", "candidatesTokenCount"])
        + num(v, &["usageMetadata", "thoughtsTokenCount"]);
    if let Some(reason) = v
        .get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .and_then(Value::as_str)
    {
        return Err(Failure::Refused {
            message: format!("the prompt was blocked ({reason})"),
            input_tokens: input,
            output_tokens: output,
        });
    }
    let candidate = v
        .get("candidates")
        .and_then(|c| c.get(0))
        .ok_or_else(|| unusable("the answer has no candidates", input, output))?;
    let finish = candidate
        .get("finishReason")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(f) = finish.as_deref()
        && matches!(
            f,
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
        )
    {
        return Err(Failure::Refused {
            message: format!("the answer was blocked ({f})"),
            input_tokens: input,
            output_tokens: output,
        });
    }
    let parts = candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array);
    let call = parts
        .into_iter()
        .flatten()
        .find_map(|p| p.get("functionCall").and_then(|c| c.get("args")));
    let text: String = parts
        .into_iter()
        .flatten()
        // Thought summaries are not the answer.
        .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    let content = match call {
        Some(args) => Content::Json(args.clone()),
        None if !text.is_empty() => Content::Text(text),
        None => return Err(unusable("the answer has no content", input, output)),
    };
    Ok(Answer {
        content,
        input_tokens: input,
        output_tokens: output,
        model: v
            .get("modelVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        finish,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(turns: Vec<Turn>) -> Request {
        Request {
            purpose: "plan",
            system: "sys".into(),
            turns,
            output: Output::Json {
                name: "plan".into(),
                description: "a plan".into(),
                schema: json!({"type": "object"}),
            },
        }
    }

    fn settings(kind: ProviderKind) -> Settings<'static> {
        Settings {
            kind,
            base_url: "http://127.0.0.1:1/v1/",
            model: "m",
            key: Some("k"),
            temperature: None,
            max_output_tokens: 100,
        }
    }

    #[test]
    fn a_repair_after_a_tool_call_answers_the_call() {
        let turns = vec![
            Turn::User("goal".into()),
            Turn::Assistant(Content::Json(json!({"subtasks": []}))),
            Turn::User("errors".into()),
        ];
        let c = build(
            &settings(ProviderKind::Openai),
            &req(turns.clone()),
            Mode::Tool,
        );
        assert_eq!(c.url, "http://127.0.0.1:1/v1/chat/completions");
        let m = &c.body["messages"];
        assert_eq!(m[2]["tool_calls"][0]["id"], "call_1");
        assert_eq!(m[3]["role"], "tool");
        assert_eq!(m[3]["tool_call_id"], "call_1");
        assert_eq!(c.body["max_tokens"], 100);

        let c = build(
            &settings(ProviderKind::Anthropic),
            &req(turns.clone()),
            Mode::Tool,
        );
        let m = &c.body["messages"];
        assert_eq!(m[1]["content"][0]["type"], "tool_use");
        assert_eq!(m[2]["content"][0]["tool_use_id"], m[1]["content"][0]["id"]);
        assert_eq!(
            c.body["tool_choice"],
            json!({"type": "tool", "name": "plan"})
        );

        let c = build(&settings(ProviderKind::Gemini), &req(turns), Mode::Schema);
        assert_eq!(c.url, "http://127.0.0.1:1/v1/models/m:generateContent");
        assert_eq!(c.body["contents"][1]["role"], "model");
        assert_eq!(
            c.body["generationConfig"]["responseMimeType"],
            "application/json"
        );
    }

    #[test]
    fn retry_after_values_hostile_or_not() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 1.5 "), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after("1e300"), Some(crate::guard::MAX_COOLING));
        assert_eq!(retry_after("inf"), Some(crate::guard::MAX_COOLING));
        assert_eq!(retry_after("-3"), None);
        assert_eq!(retry_after("NaN"), None);
        assert_eq!(retry_after("soon"), None);
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let date = jiff::fmt::rfc2822::to_string(&later.to_zoned(jiff::tz::TimeZone::UTC)).unwrap();
        let d = retry_after(&date).unwrap();
        assert!(
            d > Duration::from_secs(110) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        let e = parse(
            ProviderKind::Gemini,
            429,
            None,
            br#"{"error":{"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1e309s"}]}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, Failure::RateLimited { retry_after: Some(d), .. } if d == crate::guard::MAX_COOLING)
        );
    }

    #[test]
    fn errors_rate_limits_and_refusals() {
        let e = parse(
            ProviderKind::Gemini,
            429,
            None,
            br#"{"error":{"code":429,"message":"slow down","status":"RESOURCE_EXHAUSTED",
                "details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.5s"}]}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            Failure::RateLimited {
                status: 429,
                retry_after: Some(Duration::from_millis(1500)),
                message: "slow down".into()
            }
        );
        let e = parse(
            ProviderKind::Anthropic,
            529,
            None,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.outcome(), "server_error");
        let e = parse(
            ProviderKind::Openai,
            200,
            None,
            br#"{"choices":[{"message":{"role":"assistant","content":null,"refusal":"no"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":5,"completion_tokens":1}}"#,
        )
        .unwrap_err();
        assert_eq!(e.outcome(), "refused");
        assert_eq!(e.tokens(), (5, 1));
        let a = parse(
            ProviderKind::Openai,
            200,
            None,
            br#"{"model":"m","choices":[{"message":{"role":"assistant","content":null,"tool_calls":[
                {"id":"c","type":"function","function":{"name":"plan","arguments":"{\"a\":1}"}}]},
                "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!(a.content, Content::Json(json!({"a": 1})));
        assert_eq!((a.input_tokens, a.output_tokens), (5, 3));
    }
}
