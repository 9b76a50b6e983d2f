//! LLM providers for the planner and the summary's narrative.
//!
//! [`Llm`] is the fallback chain of `[planner] order`: each call tries the
//! providers in turn and moves on when one answers 429 (its `Retry-After`
//! is honoured), 5xx, times out, cannot be reached, refuses, or gives an
//! answer the caller cannot use. A provider that keeps failing is skipped
//! for a cool-down (its circuit breaker); one at its requests or tokens per
//! minute, or with every call slot busy, is skipped too. Every attempt,
//! skips included, is recorded in the caller's [`Ledger`] with its tokens,
//! latency and cost, counted in Prometheus and traced as a GenAI span.
//!
//! The three wire protocols are in [`wire`]; the breaker and limits in
//! [`guard`]. See docs/adr/0019-llm-client.md.

pub mod guard;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use jetmesh_shared::config::{PlannerConfig, PriceConfig, ProviderConfig};
use jetmesh_shared::names::Names;
use jetmesh_shared::telemetry;
use jetmesh_shared::wire::LlmCall;
use jetmesh_shared::{Error, ErrorCode};
use serde_json::Value;
use tracing::Instrument as _;

use crate::guard::{Breaker, Guard};
use crate::wire::{Answer, Failure, Settings};

/// What is asked of a model.
#[derive(Debug, Clone)]
pub struct Request {
    /// `plan`, `repair` or `narrative`: recorded with each call.
    pub purpose: &'static str,
    pub system: String,
    /// The conversation so far, starting with the user.
    pub turns: Vec<Turn>,
    pub output: Output,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    User(String),
    Assistant(Content),
}

/// What a model answered: text, or the arguments of the forced tool call.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Json(Value),
}

impl Content {
    /// The answer as text (a tool call's arguments as JSON).
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Json(v) => serde_json::to_string(v).unwrap_or_default(),
        }
    }

    /// The answer as JSON: tool arguments as they are, text parsed after
    /// taking off a markdown code fence and any prose around the outermost
    /// object or array.
    pub fn json(&self) -> Result<Value, String> {
        match self {
            Content::Json(v) => Ok(v.clone()),
            Content::Text(t) => parse_json_text(t),
        }
    }
}

fn parse_json_text(t: &str) -> Result<Value, String> {
    let t = t.trim();
    if let Ok(v) = serde_json::from_str(t) {
        return Ok(v);
    }
    let start = t.find(['{', '[']);
    let end = t.rfind(['}', ']']);
    match (start, end) {
        (Some(s), Some(e)) if s < e => serde_json::from_str(&t[s..=e])
            .map_err(|e| format!("the answer is not valid JSON: {e}")),
        _ => Err("the answer holds no JSON object".into()),
    }
}

/// What a call must answer with.
#[derive(Debug, Clone)]
pub enum Output {
    Text,
    /// A JSON value matching `schema`; `name` names the tool or schema.
    Json {
        name: String,
        description: String,
        schema: Value,
    },
}

/// The LLM calls of one plan, and its budget.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub calls: Vec<LlmCall>,
    /// US dollars the plan may spend on LLM calls; 0: no limit.
    pub budget_usd: f64,
}

impl Ledger {
    pub fn new(budget_usd: f64, calls: Vec<LlmCall>) -> Ledger {
        Ledger { calls, budget_usd }
    }

    pub fn spent_usd(&self) -> f64 {
        self.calls.iter().map(|c| c.cost_usd).sum()
    }

    fn exhausted(&self) -> bool {
        self.budget_usd > 0.0 && self.spent_usd() >= self.budget_usd
    }
}

struct Provider {
    name: String,
    config: ProviderConfig,
    base_url: String,
    key: Option<String>,
    price: PriceConfig,
    guard: Guard,
    /// `server.address` of spans.
    host: String,
}

/// The fallback chain.
#[derive(Clone)]
pub struct Llm {
    providers: Arc<Vec<Provider>>,
    http: reqwest::Client,
    max_output_tokens: u32,
    /// `mesh_plans`, for the daily budgets (`spend.<provider>.<day>`).
    spend: Option<(kv::Store, Names)>,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.providers.iter().map(|p| p.name.as_str()).collect();
        f.debug_struct("Llm").field("order", &names).finish()
    }
}

/// A call that answered usably.
#[derive(Debug, Clone)]
pub struct Completion<T> {
    pub value: T,
    /// What the model said, to quote back in a repair round.
    pub content: Content,
    pub provider: String,
}

impl Llm {
    /// The chain of `config.order`; `None` when it is empty. Errors: a
    /// provider whose key cannot be read (`bad_request`, naming the setting,
    /// never the key).
    pub fn from_config(
        config: &PlannerConfig,
        spend: Option<(kv::Store, Names)>,
    ) -> Result<Option<Llm>, Error> {
        if config.order.is_empty() {
            return Ok(None);
        }
        let mut providers = Vec::new();
        for name in &config.order {
            let p = config.providers.get(name).ok_or_else(|| {
                Error::bad_request(format!(
                    "planner.order names {name:?}, which is not configured"
                ))
            })?;
            let section = format!("planner.providers.{name}");
            let key = jetmesh_shared::config::password(
                &section,
                p.api_key_env.as_deref(),
                p.api_key_file.as_deref(),
            )
            .map_err(|m| Error::bad_request(m.replace("password", "api_key")))?
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty());
            let base_url = if p.base_url.is_empty() {
                wire::default_base(p.kind).to_string()
            } else {
                p.base_url.trim_end_matches('/').to_string()
            };
            let host = reqwest::Url::parse(&base_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default();
            providers.push(Provider {
                name: name.clone(),
                base_url,
                key,
                price: config.prices.get(&p.model).copied().unwrap_or_default(),
                guard: Guard::new(
                    p.max_concurrent,
                    config.breaker_failures,
                    Duration::from_millis(config.breaker_cooldown_ms),
                    // A trial call lasts at most its timeout.
                    Duration::from_millis(p.timeout_ms) + Duration::from_secs(1),
                    p.requests_per_minute,
                    p.tokens_per_minute,
                ),
                host,
                config: p.clone(),
            });
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("jetmesh/", env!("CARGO_PKG_VERSION")))
            // A redirect would take the key header (x-api-key,
            // x-goog-api-key: reqwest strips only Authorization) to another
            // host: a 3xx is an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::unavailable("cannot build the HTTP client", e))?;
        Ok(Some(Llm {
            providers: Arc::new(providers),
            http,
            max_output_tokens: config.max_output_tokens,
            spend,
        }))
    }

    /// The providers' names, in order.
    pub fn order(&self) -> Vec<String> {
        self.providers.iter().map(|p| p.name.clone()).collect()
    }

    /// Each provider's breaker.
    pub fn breakers(&self) -> BTreeMap<String, Breaker> {
        self.providers
            .iter()
            .map(|p| (p.name.clone(), p.guard.breaker()))
            .collect()
    }

    /// Asks the chain until a provider's answer passes `accept`, which turns
    /// it into what the caller needs (or says why it cannot: the answer is
    /// `unusable` and the next provider is asked).
    ///
    /// Errors: `goal_refused` when every provider that answered declined;
    /// `budget_exceeded` when the plan's or every provider's daily budget
    /// is spent; `timeout` when `deadline` passed; `llm_unavailable`
    /// otherwise, with `retry_after_ms` when some provider said when.
    pub async fn complete<T>(
        &self,
        req: &Request,
        ledger: &mut Ledger,
        deadline: Instant,
        accept: impl Fn(&Content) -> Result<T, String>,
    ) -> Result<Completion<T>, Error> {
        let mut refused: Option<String> = None;
        // Some provider failed for a reason other than refusing.
        let mut failed_otherwise = false;
        // Providers skipped for their daily budget (or the plan's).
        let mut budget_skips = 0usize;
        let mut called = false;
        let mut retry_after: Option<Duration> = None;
        let mut busy: Vec<usize> = Vec::new();
        let mut last_error = String::new();
        let note_wait = |d: Duration, r: &mut Option<Duration>| {
            *r = Some(r.map_or(d, |x| x.min(d)));
        };
        let mut i = 0;
        // The providers in order, then (if every one was busy) the first
        // busy one again, waiting for its slot.
        let mut waited = false;
        loop {
            let (index, permit) = if i < self.providers.len() {
                i += 1;
                let p = &self.providers[i - 1];
                if ledger.exhausted() {
                    self.skip(ledger, p, req.purpose, "budget_exceeded");
                    budget_skips += 1;
                    continue;
                }
                if !self.daily_budget_left(p).await {
                    self.skip(ledger, p, req.purpose, "budget_exceeded");
                    budget_skips += 1;
                    continue;
                }
                let Some(permit) = p.guard.try_slot() else {
                    self.skip(ledger, p, req.purpose, "busy");
                    busy.push(i - 1);
                    continue;
                };
                (i - 1, permit)
            } else if !waited && !called && !busy.is_empty() {
                waited = true;
                let index = busy[0];
                let p = &self.providers[index];
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, p.guard.slot()).await {
                    Ok(permit) => (index, permit),
                    Err(_) => break,
                }
            } else {
                break;
            };
            let p = &self.providers[index];
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if let Err(skip) = p.guard.admit(now) {
                note_wait(skip.wait(), &mut retry_after);
                self.skip(ledger, p, req.purpose, skip.outcome());
                continue;
            }
            called = true;
            let timeout = Duration::from_millis(p.config.timeout_ms).min(deadline - now);
            let result = self.call(p, req, timeout).await;
            drop(permit);
            let latency = now.elapsed();
            let (outcome, tokens) = match &result {
                Ok(a) => ("ok", (a.input_tokens, a.output_tokens)),
                Err(f) => (f.outcome(), f.tokens()),
            };
            p.guard
                .spent(Instant::now(), tokens.0.saturating_add(tokens.1));
            // The answer, if there is one, must be usable to the caller.
            let accepted = match result {
                Ok(answer) => match accept(&answer.content) {
                    Ok(v) => Ok((v, answer)),
                    Err(message) => Err(Failure::Unusable {
                        message,
                        input_tokens: answer.input_tokens,
                        output_tokens: answer.output_tokens,
                    }),
                },
                Err(f) => Err(f),
            };
            let outcome = if accepted.is_err() && outcome == "ok" {
                "unusable"
            } else {
                outcome
            };
            let cost = (tokens.0 as f64 * p.price.input_per_mtok
                + tokens.1 as f64 * p.price.output_per_mtok)
                / 1e6;
            let error = accepted
                .as_ref()
                .err()
                .map(|f| redact(&f.message(), p.key.as_deref()));
            self.account(p, outcome, tokens, cost, latency);
            ledger.calls.push(LlmCall {
                provider: p.name.clone(),
                model: p.config.model.clone(),
                purpose: req.purpose.to_string(),
                outcome: outcome.to_string(),
                http_status: accepted
                    .as_ref()
                    .err()
                    .and_then(Failure::status)
                    .or(Some(200).filter(|_| !matches!(outcome, "timeout" | "unreachable"))),
                input_tokens: tokens.0,
                output_tokens: tokens.1,
                latency_ms: latency.as_millis() as u64,
                cost_usd: cost,
                error: error.clone(),
                at: jiff::Timestamp::now(),
            });
            match accepted {
                Ok((value, answer)) => {
                    self.breaker_moved(p, p.guard.succeeded());
                    return Ok(Completion {
                        value,
                        content: answer.content,
                        provider: p.name.clone(),
                    });
                }
                Err(f) => {
                    // A timeout of the caller's own deadline, shorter than
                    // the provider's, says nothing about the provider.
                    let ours = matches!(f, Failure::Timeout)
                        && timeout < Duration::from_millis(p.config.timeout_ms);
                    if f.is_health() && !ours {
                        let asked = match &f {
                            Failure::RateLimited { retry_after, .. } => *retry_after,
                            _ => None,
                        };
                        if let Some(d) = asked {
                            note_wait(d, &mut retry_after);
                        }
                        self.breaker_moved(p, p.guard.failed(Instant::now(), asked));
                    } else {
                        self.breaker_moved(p, p.guard.neutral());
                    }
                    if let Failure::Refused { message, .. } = &f {
                        refused.get_or_insert_with(|| redact(message, p.key.as_deref()));
                    } else {
                        failed_otherwise = true;
                    }
                    let error = error.unwrap_or_default();
                    tracing::warn!(
                        provider = %p.name, model = %p.config.model, outcome, %error,
                        "An LLM call failed; trying the next provider."
                    );
                    last_error = format!("{}: {error}", p.name);
                }
            }
        }
        if let Some(why) = refused.filter(|_| !failed_otherwise) {
            return Err(Error::new(
                ErrorCode::GoalRefused,
                format!("the model declined: {why}"),
            ));
        }
        // Budgets, and only budgets, stopped it: the plan's is spent, or
        // every provider's for the day.
        if ledger.exhausted() || budget_skips == self.providers.len() {
            return Err(Error::new(
                ErrorCode::BudgetExceeded,
                "the LLM budget is spent (per plan: planner.budget_per_plan_usd; per provider \
                 and day: daily_budget_usd)",
            ));
        }
        let mut e = Error::new(
            ErrorCode::LlmUnavailable,
            if last_error.is_empty() {
                "every LLM provider is skipped (circuit breakers open, cooling down, rate \
                 limits or busy)"
                    .to_string()
            } else {
                format!("no LLM provider gave a usable answer (last: {last_error})")
            },
        );
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorCode::Timeout,
                format!("no LLM provider answered in time (last: {last_error})"),
            ));
        }
        if let Some(d) = retry_after {
            e = e.retry_after(d.min(guard::MAX_COOLING).as_millis().max(1) as u64);
        }
        Err(e)
    }

    fn skip(&self, ledger: &mut Ledger, p: &Provider, purpose: &str, outcome: &str) {
        metrics::counter!(telemetry::LLM_CALLS, "provider" => p.name.clone(),
            "model" => p.config.model.clone(), "outcome" => outcome.to_string())
        .increment(1);
        ledger.calls.push(LlmCall {
            provider: p.name.clone(),
            model: p.config.model.clone(),
            purpose: purpose.to_string(),
            outcome: outcome.to_string(),
            at: jiff::Timestamp::now(),
            ..LlmCall::default()
        });
    }

    fn breaker_moved(&self, p: &Provider, now: Breaker) {
        let open = matches!(now, Breaker::Open);
        metrics::gauge!(telemetry::LLM_BREAKER_OPEN, "provider" => p.name.clone()).set(if open {
            1.0
        } else {
            0.0
        });
    }

    fn account(
        &self,
        p: &Provider,
        outcome: &str,
        tokens: (u64, u64),
        cost: f64,
        latency: Duration,
    ) {
        let (provider, model) = (p.name.clone(), p.config.model.clone());
        metrics::counter!(telemetry::LLM_CALLS, "provider" => provider.clone(),
            "model" => model.clone(), "outcome" => outcome.to_string())
        .increment(1);
        metrics::counter!(telemetry::LLM_TOKENS, "provider" => provider.clone(),
            "model" => model.clone(), "kind" => "input")
        .increment(tokens.0);
        metrics::counter!(telemetry::LLM_TOKENS, "provider" => provider.clone(),
            "model" => model.clone(), "kind" => "output")
        .increment(tokens.1);
        metrics::counter!(telemetry::LLM_COST, "provider" => provider.clone(), "model" => model.clone())
            .increment((cost * 1e6).round() as u64);
        metrics::histogram!(telemetry::LLM_LATENCY, "provider" => provider, "model" => model)
            .record(latency.as_secs_f64());
    }

    /// One HTTP call, in a GenAI span.
    async fn call(
        &self,
        p: &Provider,
        req: &Request,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let mode = wire::mode(p.config.kind, p.config.structured, &req.output);
        let settings = Settings {
            kind: p.config.kind,
            base_url: &p.base_url,
            model: &p.config.model,
            key: p.key.as_deref(),
            temperature: p.config.temperature,
            max_output_tokens: self.max_output_tokens,
        };
        let call = wire::build(&settings, req, mode);
        let span = tracing::info_span!(
            "chat",
            otel.name = %format!("chat {}", p.config.model),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            gen_ai.operation.name = "chat",
            gen_ai.system = wire::system(p.config.kind),
            gen_ai.provider.name = wire::system(p.config.kind),
            gen_ai.request.model = %p.config.model,
            gen_ai.request.max_tokens = i64::from(self.max_output_tokens),
            gen_ai.output.type = if matches!(req.output, Output::Text) { "text" } else { "json" },
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.response.finish_reasons = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            server.address = %p.host,
            error.type = tracing::field::Empty,
            jetmesh.llm.provider = %p.name,
            jetmesh.llm.purpose = req.purpose,
        );
        let result = self.send(call, p, timeout).instrument(span.clone()).await;
        match &result {
            Ok(a) => {
                // Signed: OpenTelemetry has no unsigned integers, and
                // tracing-opentelemetry sends u64 as text.
                span.record("gen_ai.usage.input_tokens", a.input_tokens as i64);
                span.record("gen_ai.usage.output_tokens", a.output_tokens as i64);
                if let Some(m) = &a.model {
                    span.record("gen_ai.response.model", m.as_str());
                }
                if let Some(f) = &a.finish {
                    span.record("gen_ai.response.finish_reasons", format!("[\"{f}\"]"));
                }
            }
            Err(f) => {
                let (i, o) = f.tokens();
                span.record("gen_ai.usage.input_tokens", i as i64);
                span.record("gen_ai.usage.output_tokens", o as i64);
                span.record("error.type", f.outcome());
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }

    async fn send(
        &self,
        call: wire::Call,
        p: &Provider,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let mut builder = self.http.post(&call.url).timeout(timeout).json(&call.body);
        for (name, value) in call.headers {
            builder = builder.header(name, value);
        }
        if let Some((name, value)) = call.key_header {
            let mut v =
                reqwest::header::HeaderValue::from_str(&value).map_err(|_| Failure::Client {
                    status: 0,
                    message: "the API key is not a valid header value".into(),
                })?;
            v.set_sensitive(true);
            builder = builder.header(name, v);
        }
        let mut response = builder
            .send()
            .await
            .map_err(|e| transport(e, p.key.as_deref()))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(wire::retry_after);
        // An answer is a few KB; a server that sends more is not answering.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport(e, p.key.as_deref()))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(Failure::Unusable {
                    message: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
                    input_tokens: 0,
                    output_tokens: 0,
                });
            }
            body.extend_from_slice(&chunk);
        }
        wire::parse(p.config.kind, status, retry_after, &body).map_err(|f| match f {
            Failure::RateLimited {
                status,
                retry_after,
                message,
            } => Failure::RateLimited {
                status,
                retry_after,
                message: redact(&message, p.key.as_deref()),
            },
            other => other,
        })
    }

    /// Whether the provider's daily budget has something left.
    async fn daily_budget_left(&self, p: &Provider) -> bool {
        if p.config.daily_budget_usd <= 0.0 {
            return true;
        }
        let Some((kv, names)) = &self.spend else {
            return true;
        };
        let key = names.llm_spend_key(&p.name, &today());
        let spent = match kv.entry(&key).await {
            Ok(Some(e)) => micro(&e.value),
            // Unknown is not spent: a KV hiccup must not stop planning.
            _ => 0,
        };
        (spent as f64 / 1e6) < p.config.daily_budget_usd
    }

    /// Adds what `calls` cost to their providers' daily spend (compare-and-set, so concurrent planners all
    /// count).
    pub async fn record_spend(&self, calls: &[LlmCall]) {
        let Some((kv, names)) = &self.spend else {
            return;
        };
        let mut by_provider: BTreeMap<&str, u64> = BTreeMap::new();
        for c in calls {
            if c.cost_usd > 0.0 {
                *by_provider.entry(&c.provider).or_default() += (c.cost_usd * 1e6).round() as u64;
            }
        }
        let day = today();
        for (provider, add) in by_provider {
            let budgeted = self
                .providers
                .iter()
                .any(|p| p.name == provider && p.config.daily_budget_usd > 0.0);
            if !budgeted {
                continue;
            }
            let key = names.llm_spend_key(provider, &day);
            for _ in 0..8 {
                let done = match kv.entry(&key).await {
                    Ok(Some(e)) => {
                        let v = (micro(&e.value) + add).to_string();
                        kv.update(&key, v.into(), e.revision).await.is_ok()
                    }
                    Ok(None) => kv.create(&key, add.to_string().into()).await.is_ok(),
                    Err(_) => false,
                };
                if done {
                    break;
                }
            }
        }
    }
}

fn micro(v: &[u8]) -> u64 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn today() -> String {
    jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%d")
        .to_string()
}

/// The most bytes of one answer read.
const MAX_ANSWER_BYTES: usize = 8 << 20;

fn transport(e: reqwest::Error, key: Option<&str>) -> Failure {
    if e.is_timeout() {
        return Failure::Timeout;
    }
    // Without the URL (it could carry credentials); the key is taken out
    // anyway.
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    Failure::Unreachable(redact(&message, key))
}

/// A provider's message as it may be logged and stored: without the key,
/// at most 300 characters.
pub fn redact(message: &str, key: Option<&str>) -> String {
    let mut m = match key {
        Some(k) if k.len() >= 4 => message.replace(k, "[redacted]"),
        _ => message.to_string(),
    };
    if m.len() > 300 {
        let mut end = 300;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m.truncate(end);
        m.push('…');
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_with_fences_and_prose() {
        let c = Content::Text("Here:\n```json\n{\"subtasks\": []}\n```\n".into());
        assert_eq!(c.json().unwrap(), serde_json::json!({"subtasks": []}));
        assert!(Content::Text("no idea".into()).json().is_err());
        assert_eq!(
            Content::Json(serde_json::json!([1])).json().unwrap(),
            serde_json::json!([1])
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("bad key sk-123456", Some("sk-123456")),
            "bad key [redacted]"
        );
        assert_eq!(redact(&"x".repeat(400), None).chars().count(), 301);
    }
}
