//! The LLM provider emulator itself (tests/llm_emulator.py driven by
//! tests/src/llm.rs), with raw HTTP requests: for each API, scripted answers
//! in text and forced-tool mode, refusals, rate limits with `Retry-After`,
//! wrong keys, unknown fields and broken tool-call pairing refused without
//! consuming a reply; what `received` records (tokens included); delays, a
//! client that gives up, and concurrent requests.

use jetmesh_tests::llm::{
    ANTHROPIC_KEY, Api, GEMINI_KEY, LlmEmulator, OPENAI_KEY, Received, Reply, reqwest,
};
use serde_json::{Value, json};
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client")
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn post(url: &str, headers: &[(&str, &str)], body: &Value) -> Answer {
    let mut req = client().post(url).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("the emulator answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.expect("a JSON body");
    Answer {
        status,
        headers,
        body,
    }
}

/// ⌈len / 4⌉, at least 1: the emulator's token count of a text.
fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

fn openai_auth() -> String {
    format!("Bearer {OPENAI_KEY}")
}

const ANTHROPIC_VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_completions() {
    let emu = LlmEmulator::start();
    let url = format!("{}/chat/completions", emu.openai_url());
    let auth = openai_auth();
    let h = [("authorization", auth.as_str())];
    let plan = json!({"subtasks": [{"id": "a"}]});
    emu.script(
        "gpt-emu",
        vec![
            Reply::Json(plan.clone()),
            Reply::Json(plan.clone()),
            Reply::Refusal("I can't help with that.".into()),
            Reply::Error {
                status: 429,
                retry_after: Some(7),
            },
            Reply::Text("plain".into()),
        ],
    )
    .await;
    let messages = json!([
        {"role": "system", "content": "You plan."},
        {"role": "user", "content": [{"type": "text", "text": "Plan it."}]},
    ]);

    // Text mode, with a JSON-schema response format as the mesh asks.
    let a = post(
        &url,
        &h,
        &json!({"model": "gpt-emu", "messages": messages, "max_completion_tokens": 100,
            "temperature": 0.2, "response_format": {"type": "json_schema", "json_schema": {
                "name": "plan", "description": "a plan", "schema": {"type": "object"},
                "strict": false}}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.header("x-request-id").is_some());
    let b = &a.body;
    assert!(b["id"].as_str().unwrap().starts_with("chatcmpl-"), "{b}");
    assert_eq!(b["object"], "chat.completion");
    assert_eq!(b["model"], "gpt-emu");
    assert!(b["created"].is_u64());
    let choice = &b["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["logprobs"], Value::Null);
    let text = choice["message"]["content"].as_str().expect("text content");
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), plan);
    let input = tokens(&messages.to_string());
    assert_eq!(b["usage"]["prompt_tokens"], input);
    assert_eq!(b["usage"]["completion_tokens"], tokens(text));
    assert_eq!(b["usage"]["total_tokens"], input + tokens(text));

    // Forced tool: the value is the call's arguments. A tool call answered
    // by a `tool` message is part of the conversation.
    let tools = json!([{"type": "function", "function": {"name": "plan",
        "description": "Submit the plan", "parameters": {"type": "object"}}}]);
    let conversation = json!([
        {"role": "system", "content": "You plan."},
        {"role": "user", "content": "Plan it."},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function",
            "function": {"name": "plan", "arguments": "{\"subtasks\":7}"}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "subtasks must be an array"},
    ]);
    let forced = json!({"model": "gpt-emu", "messages": conversation, "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "plan"}}});
    let a = post(&url, &h, &forced).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let choice = &a.body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "plan");
    let args = call["function"]["arguments"]
        .as_str()
        .expect("arguments text");
    assert_eq!(serde_json::from_str::<Value>(args).unwrap(), plan);

    // Refused requests consume nothing.
    let wrong = post(
        &url,
        &[("authorization", "Bearer sk-emu-wrong-key")],
        &forced,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body["error"]["code"], "invalid_api_key");
    assert_eq!(wrong.body["error"]["type"], "invalid_request_error");
    assert!(
        !wrong.body.to_string().contains("sk-emu-wrong-key"),
        "{}",
        wrong.body
    );
    assert_eq!(post(&url, &[], &forced).await.status, 401);
    let mut unknown = forced.clone();
    unknown["functions"] = json!([]);
    let a = post(&url, &h, &unknown).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body["error"]["message"],
        "Unrecognized request argument supplied: functions"
    );
    assert_eq!(a.body["error"]["type"], "invalid_request_error");
    // A tool message answering no tool call; a tool call left unanswered;
    // tool_choice without tools; arguments that are not JSON.
    for messages in [
        json!([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c", "content": "r"}]),
        json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"id": "c",
            "type": "function", "function": {"name": "plan", "arguments": "{}"}}]},
            {"role": "user", "content": "y"}]),
        json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"id": "c",
            "type": "function", "function": {"name": "plan", "arguments": "{"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "r"}]),
    ] {
        let a = post(&url, &h, &json!({"model": "gpt-emu", "messages": messages})).await;
        assert_eq!(a.status, 400, "{messages}: {}", a.body);
    }
    let a = post(
        &url,
        &h,
        &json!({"model": "gpt-emu", "messages": messages, "tool_choice": "required"}),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"]["param"], "tool_choice");

    // Refusal, then a rate limit with Retry-After.
    let a = post(&url, &h, &forced).await;
    assert_eq!(a.status, 200);
    let choice = &a.body["choices"][0];
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(choice["message"]["refusal"], "I can't help with that.");
    assert_eq!(choice["finish_reason"], "stop");
    let a = post(&url, &h, &forced).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("7"));
    assert_eq!(a.body["error"]["type"], "requests");
    assert_eq!(a.body["error"]["code"], "rate_limit_exceeded");
    // Text even though a tool is forced.
    let a = post(&url, &h, &forced).await;
    assert_eq!(a.body["choices"][0]["message"]["content"], "plain");
    assert_eq!(a.body["choices"][0]["finish_reason"], "stop");
    // The queue is empty and there is no default.
    let a = post(&url, &h, &forced).await;
    assert_eq!(a.status, 500);
    assert_eq!(
        a.body["error"]["message"],
        "emulator: nothing scripted for model gpt-emu"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages() {
    let emu = LlmEmulator::start();
    let url = format!("{}/messages", emu.anthropic_url());
    let h = [("x-api-key", ANTHROPIC_KEY), ANTHROPIC_VERSION];
    let plan = json!({"subtasks": []});
    emu.script(
        "claude-emu",
        vec![
            Reply::Json(plan.clone()),
            Reply::Json(plan.clone()),
            Reply::Refusal("No.".into()),
            Reply::Error {
                status: 429,
                retry_after: Some(3),
            },
            Reply::Error {
                status: 529,
                retry_after: None,
            },
        ],
    )
    .await;
    let messages = json!([{"role": "user", "content": "Plan it."}]);
    let a = post(
        &url,
        &h,
        &json!({"model": "claude-emu", "max_tokens": 1024, "system": "You plan.",
            "messages": messages, "temperature": 0.5}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.header("request-id").is_some());
    let b = &a.body;
    assert!(b["id"].as_str().unwrap().starts_with("msg_"), "{b}");
    assert_eq!(b["type"], "message");
    assert_eq!(b["role"], "assistant");
    assert_eq!(b["model"], "claude-emu");
    assert_eq!(b["stop_reason"], "end_turn");
    assert_eq!(b["stop_sequence"], Value::Null);
    assert_eq!(b["content"][0]["type"], "text");
    let text = b["content"][0]["text"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), plan);
    let input = tokens(&format!("{messages}{}", json!("You plan.")));
    assert_eq!(b["usage"]["input_tokens"], input);
    assert_eq!(b["usage"]["output_tokens"], tokens(text));

    // Forced tool, after a tool_use answered by its tool_result.
    let conversation = json!([
        {"role": "user", "content": "Plan it."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01", "name": "plan",
            "input": {"subtasks": 7}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
            "content": "subtasks must be an array", "is_error": true}]},
    ]);
    let forced = json!({"model": "claude-emu", "max_tokens": 1024,
        "system": [{"type": "text", "text": "You plan."}], "messages": conversation,
        "tools": [{"name": "plan", "description": "Submit the plan",
            "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "plan"}});
    let a = post(&url, &h, &forced).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["stop_reason"], "tool_use");
    let block = &a.body["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["name"], "plan");
    assert_eq!(block["input"], plan);

    // Refused, consuming nothing.
    let wrong = post(
        &url,
        &[("x-api-key", "sk-ant-wrong"), ANTHROPIC_VERSION],
        &forced,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.body,
        json!({"type": "error", "error": {"type": "authentication_error",
            "message": "invalid x-api-key"}})
    );
    let a = post(&url, &[("x-api-key", ANTHROPIC_KEY)], &forced).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"]["type"], "invalid_request_error");
    let mut unknown = forced.clone();
    unknown["response_format"] = json!({"type": "json"});
    let a = post(&url, &h, &unknown).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body["error"]["message"],
        "response_format: Extra inputs are not permitted"
    );
    // A tool_result whose tool_use is not in the message before.
    let orphan = json!({"model": "claude-emu", "max_tokens": 100, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "y"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
            "content": "r"}]},
    ]});
    let a = post(&url, &h, &orphan).await;
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unexpected `tool_use_id` found in `tool_result` blocks: toolu_01"),
        "{}",
        a.body
    );
    // A tool_use not answered in the next message; a first message that is
    // the assistant's; no max_tokens.
    for body in [
        json!({"model": "claude-emu", "max_tokens": 100, "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01",
                "name": "plan", "input": {}}]},
            {"role": "user", "content": "y"}]}),
        json!({"model": "claude-emu", "max_tokens": 100,
            "messages": [{"role": "assistant", "content": "x"}]}),
        json!({"model": "claude-emu", "messages": messages}),
    ] {
        let a = post(&url, &h, &body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
    }

    let a = post(&url, &h, &forced).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["stop_reason"], "refusal");
    assert_eq!(a.body["content"], json!([{"type": "text", "text": "No."}]));
    let a = post(&url, &h, &forced).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("3"));
    assert!(a.header("request-id").is_some());
    assert_eq!(a.body["type"], "error");
    assert_eq!(a.body["error"]["type"], "rate_limit_error");
    let a = post(&url, &h, &forced).await;
    assert_eq!(a.status, 529);
    assert_eq!(a.body["error"]["type"], "overloaded_error");
    assert_eq!(a.header("retry-after"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_generate_content() {
    let emu = LlmEmulator::start();
    let url = format!("{}/models/gemini-emu:generateContent", emu.gemini_url());
    let h = [("x-goog-api-key", GEMINI_KEY)];
    let plan = json!({"subtasks": []});
    emu.script(
        "gemini-emu",
        vec![
            Reply::Json(plan.clone()),
            Reply::Json(plan.clone()),
            Reply::Refusal("blocked".into()),
            Reply::Error {
                status: 429,
                retry_after: Some(12),
            },
            Reply::Error {
                status: 503,
                retry_after: None,
            },
        ],
    )
    .await;
    let contents = json!([{"role": "user", "parts": [{"text": "Plan it."}]}]);
    let system = json!({"parts": [{"text": "You plan."}]});
    let a = post(
        &url,
        &h,
        &json!({"contents": contents, "systemInstruction": system,
            "generationConfig": {"maxOutputTokens": 1000, "temperature": 0.3,
                "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object", "additionalProperties": false}}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let b = &a.body;
    let candidate = &b["candidates"][0];
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(candidate["index"], 0);
    assert_eq!(candidate["content"]["role"], "model");
    let text = candidate["content"]["parts"][0]["text"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), plan);
    let input = tokens(&format!("{contents}{system}"));
    assert_eq!(b["usageMetadata"]["promptTokenCount"], input);
    assert_eq!(b["usageMetadata"]["candidatesTokenCount"], tokens(text));
    assert_eq!(b["usageMetadata"]["totalTokenCount"], input + tokens(text));
    assert_eq!(b["modelVersion"], "gemini-emu");
    assert!(b["responseId"].is_string());

    // Forced function call (mode ANY), the key in the query, after a call
    // answered by its response; snake_case field names are the API's too.
    let conversation = json!([
        {"role": "user", "parts": [{"text": "Plan it."}]},
        {"role": "model", "parts": [{"functionCall": {"name": "plan", "args": {"subtasks": 7}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "plan",
            "response": {"error": "subtasks must be an array"}}}]},
    ]);
    let forced = json!({"contents": conversation, "system_instruction": system,
        "tools": [{"functionDeclarations": [{"name": "plan", "description": "Submit the plan",
            "parametersJsonSchema": {"type": "object"}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY",
            "allowedFunctionNames": ["plan"]}}});
    let a = post(&format!("{url}?key={GEMINI_KEY}"), &[], &forced).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let call = &a.body["candidates"][0]["content"]["parts"][0]["functionCall"];
    assert_eq!(call["name"], "plan");
    assert_eq!(call["args"], plan);

    // Refused, consuming nothing.
    let wrong = post(&url, &[("x-goog-api-key", "AIzaWrong")], &forced).await;
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.body["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(
        wrong.body["error"]["message"],
        "API key not valid. Please pass a valid API key."
    );
    let missing = post(&url, &[], &forced).await;
    assert_eq!(missing.status, 403);
    assert_eq!(missing.body["error"]["status"], "PERMISSION_DENIED");
    let mut unknown = forced.clone();
    unknown["temperature"] = json!(0.5);
    let a = post(&url, &h, &unknown).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body["error"]["message"],
        "Invalid JSON payload received. Unknown name \"temperature\": Cannot find field."
    );
    // The OpenAPI subset in `parameters` has no additionalProperties; a
    // function response with no call before it.
    let mut schema = forced.clone();
    schema["tools"] = json!([{"functionDeclarations": [{"name": "plan",
        "parameters": {"type": "object", "additionalProperties": false}}]}]);
    let a = post(&url, &h, &schema).await;
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Unknown name \"additionalProperties\""),
        "{}",
        a.body
    );
    let orphan = json!({"contents": [
        {"role": "user", "parts": [{"text": "x"}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "plan", "response": {}}}]}]});
    assert_eq!(post(&url, &h, &orphan).await.status, 400);

    let a = post(&url, &h, &forced).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["promptFeedback"]["blockReason"], "SAFETY");
    assert!(a.body.get("candidates").is_none(), "{}", a.body);
    assert!(a.body["usageMetadata"]["promptTokenCount"].is_u64());
    let a = post(&url, &h, &forced).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("12"));
    assert_eq!(a.body["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        a.body["error"]["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    assert_eq!(a.body["error"]["details"][0]["retryDelay"], "12s");
    let a = post(&url, &h, &forced).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.body["error"]["status"], "UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_records_every_request_with_its_tokens() {
    let emu = LlmEmulator::start();
    emu.default_reply("m", Reply::Text("fine".into())).await;
    emu.script("m", vec![Reply::Json(json!({"k": "v"}))]).await;
    let auth = openai_auth();
    let messages = json!([{"role": "user", "content": "héllo wörld, in JSON please"}]);
    let body = json!({"model": "m", "messages": messages});
    let url = format!("{}/chat/completions", emu.openai_url());
    let h = [("authorization", auth.as_str())];
    assert_eq!(post(&url, &h, &body).await.status, 200);
    assert_eq!(post(&url, &h, &json!({"model": "m"})).await.status, 400);
    // The default, once the queue is empty.
    let a = post(&url, &h, &body).await;
    assert_eq!(a.body["choices"][0]["message"]["content"], "fine");
    let a = post(
        &format!("{}/models/m:generateContent", emu.gemini_url()),
        &[("x-goog-api-key", GEMINI_KEY)],
        &json!({"contents": [{"parts": [{"text": "x"}]}]}),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        post(
            &format!("{}/messages", emu.anthropic_url()),
            &[("x-api-key", ANTHROPIC_KEY), ANTHROPIC_VERSION],
            &json!({"model": "other", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await
        .status,
        500
    );

    let r: Vec<Received> = emu.received().await;
    assert_eq!(r.len(), 5, "{r:#?}");
    let input = tokens(&messages.to_string());
    assert_eq!(r[0].api, Api::OpenAi);
    assert_eq!(r[0].model, "m");
    assert_eq!(r[0].path, "/openai/v1/chat/completions");
    assert_eq!(r[0].status, 200);
    assert_eq!(r[0].headers["authorization"], auth);
    assert_eq!(r[0].headers["content-type"], "application/json");
    assert_eq!(r[0].body, body);
    assert_eq!(r[0].error, None);
    assert_eq!(
        (r[0].input_tokens, r[0].output_tokens),
        (input, tokens(r#"{"k":"v"}"#))
    );
    assert_eq!(r[1].status, 400);
    assert_eq!(
        r[1].error.as_deref(),
        Some("Missing required parameter: 'messages'.")
    );
    assert_eq!((r[1].input_tokens, r[1].output_tokens), (0, 0));
    assert_eq!((r[2].input_tokens, r[2].output_tokens), (input, 1));
    assert_eq!(r[3].api, Api::Gemini);
    assert_eq!(r[3].model, "m");
    assert_eq!(r[3].path, "/gemini/v1beta/models/m:generateContent");
    assert_eq!(r[3].input_tokens, tokens(r#"[{"parts":[{"text":"x"}]}]"#));
    assert_eq!(r[4].api, Api::Anthropic);
    assert_eq!(r[4].status, 500);
    assert_eq!(
        r[4].error.as_deref(),
        Some("emulator: nothing scripted for model other")
    );
    assert_eq!(emu.count("m").await, 4);
    assert_eq!(emu.count("other").await, 1);

    emu.reset().await;
    assert!(emu.received().await.is_empty());
    let a = post(&url, &h, &body).await;
    assert_eq!(a.status, 500, "the default is gone too: {}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_give_ups_and_concurrent_requests() {
    let emu = LlmEmulator::start();
    let url = format!("{}/messages", emu.anthropic_url());
    let h = [("x-api-key", ANTHROPIC_KEY), ANTHROPIC_VERSION];
    let body = |model: &str| json!({"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "x"}]});
    emu.script(
        "slow",
        vec![
            Reply::Delay(Duration::from_secs(5), Box::new(Reply::Text("late".into()))),
            Reply::Delay(
                Duration::from_millis(300),
                Box::new(Reply::Text("on time".into())),
            ),
        ],
    )
    .await;

    // The client gives up during the first delay: the reply is dropped.
    let gave_up = client()
        .post(&url)
        .header("x-api-key", ANTHROPIC_KEY)
        .header(ANTHROPIC_VERSION.0, ANTHROPIC_VERSION.1)
        .json(&body("slow"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    let started = std::time::Instant::now();
    let a = post(&url, &h, &body("slow")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(a.body["content"][0]["text"], "on time");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = emu.received().await;
        if r[0].status == 499 {
            assert_eq!(r[1].status, 200);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Concurrent requests each take one scripted reply.
    let replies: Vec<Reply> = (0..16)
        .map(|i| {
            Reply::Delay(
                Duration::from_millis(100),
                Box::new(Reply::Json(json!({"i": i}))),
            )
        })
        .collect();
    emu.script("busy", replies).await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let h = [("x-api-key", ANTHROPIC_KEY), ANTHROPIC_VERSION];
            post(&url, &h, &body("busy")).await
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        let v: Value =
            serde_json::from_str(a.body["content"][0]["text"].as_str().unwrap()).unwrap();
        seen.push(v["i"].as_u64().unwrap());
    }
    seen.sort();
    assert_eq!(seen, (0..16).collect::<Vec<u64>>());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the delays ran concurrently: {:?}",
        started.elapsed()
    );
    assert_eq!(emu.count("busy").await, 16);
}
