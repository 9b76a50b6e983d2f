//! Encoding on the wire. A message says how it is encoded with `Content-Type`:
//! `application/msgpack` is MessagePack (rmp-serde, structs as maps), anything
//! JSON-like or no header at all is JSON — which is what `nats req` and `nats pub`
//! send. Replies use the encoding of the request they answer.

use crate::error::{Error, ErrorCode, Result};
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

pub const CONTENT_TYPE: &str = "Content-Type";
pub const JSON: &str = "application/json";
pub const MSGPACK: &str = "application/msgpack";

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Json,
    Msgpack,
}

impl Encoding {
    /// Reads the encoding from headers; no header means JSON.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<Encoding> {
        let Some(value) = headers.and_then(|h| h.get(CONTENT_TYPE)) else {
            return Ok(Encoding::Json);
        };
        let value = value.as_str().trim().to_ascii_lowercase();
        let mime = value.split(';').next().unwrap_or("").trim();
        match mime {
            "" | JSON | "text/json" | "text/plain" => Ok(Encoding::Json),
            MSGPACK | "application/x-msgpack" | "application/vnd.msgpack" => Ok(Encoding::Msgpack),
            other => Err(Error::new(
                ErrorCode::UnsupportedEncoding,
                format!("Content-Type {other:?} is not supported; use {JSON} or {MSGPACK}"),
            )),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => JSON,
            Encoding::Msgpack => MSGPACK,
        }
    }

    /// Headers that announce this encoding (none for JSON, the default).
    pub fn headers(self) -> Option<HeaderMap> {
        match self {
            Encoding::Json => None,
            Encoding::Msgpack => {
                let mut h = HeaderMap::new();
                h.insert(CONTENT_TYPE, MSGPACK);
                Some(h)
            }
        }
    }

    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes> {
        match self {
            Encoding::Json => serde_json::to_vec(value)
                .map(Bytes::from)
                .map_err(|e| Error::internal(format!("cannot encode JSON: {e}"))),
            Encoding::Msgpack => rmp_serde::to_vec_named(value)
                .map(Bytes::from)
                .map_err(|e| Error::internal(format!("cannot encode MessagePack: {e}"))),
        }
    }

    /// Whether the payload holds a map (a JSON object), by its first byte.
    pub fn is_map(self, payload: &[u8]) -> bool {
        match self {
            Encoding::Json => payload
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'{'),
            Encoding::Msgpack => {
                matches!(payload.first(), Some(0x80..=0x8f | 0xde | 0xdf))
            }
        }
    }

    /// Decodes a message between roles, or a stored value: nested at most
    /// [`INTERNAL_DEPTH`] deep (they wrap a body people sent in a level or
    /// two: a plan record, the planner's request). Every failure is
    /// `bad_request` with the decoder's reason, or `invalid_id` for an id
    /// that breaks the id rule.
    pub fn decode<T: DeserializeOwned>(self, payload: &[u8]) -> Result<T> {
        self.decode_within(payload, INTERNAL_DEPTH)
    }

    /// Decodes a body people or scripts sent: nested at most [`MAX_DEPTH`]
    /// deep, in either encoding.
    pub fn decode_body<T: DeserializeOwned>(self, payload: &[u8]) -> Result<T> {
        self.decode_within(payload, MAX_DEPTH)
    }

    fn decode_within<T: DeserializeOwned>(self, payload: &[u8], depth: usize) -> Result<T> {
        crate::ids::take_refused();
        let decoded = match self {
            Encoding::Json => {
                if !json_depth_within(payload, depth) {
                    return Err(too_deep());
                }
                serde_json::from_slice(payload).map_err(|e| format!("malformed JSON body: {e}"))
            }
            Encoding::Msgpack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(payload);
                // rmp-serde fails when its counter reaches zero: one more
                // than the levels it lets through.
                de.set_max_depth(depth + 1);
                match T::deserialize(&mut de) {
                    Ok(v) => Ok(v),
                    Err(rmp_serde::decode::Error::DepthLimitExceeded) => return Err(too_deep()),
                    Err(e) => Err(format!("malformed MessagePack body: {e}")),
                }
            }
        };
        decoded.map_err(|message| {
            // An id refused while decoding says so itself (not the message,
            // which may quote anything the body holds).
            let code = if crate::ids::take_refused() {
                ErrorCode::InvalidId
            } else {
                ErrorCode::BadRequest
            };
            Error::new(code, message)
        })
    }
}

/// How deep a body people send may nest (objects and arrays), whatever its
/// encoding. Deeper bodies are refused at the edge with `bad_request`, so
/// that nothing accepted there fails to decode further on.
pub const MAX_DEPTH: usize = 64;

/// How deep messages between roles and stored values may nest: a body at
/// [`MAX_DEPTH`] wrapped in a few levels.
pub const INTERNAL_DEPTH: usize = MAX_DEPTH + 8;

fn too_deep() -> Error {
    Error::bad_request(format!("the body is nested deeper than {MAX_DEPTH} levels"))
}

/// Whether JSON text nests objects and arrays at most `max` deep (a scan
/// that skips strings; the decoder finds any other fault).
fn json_depth_within(text: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Decodes a request body by its headers ([`Encoding::decode_body`]),
/// refusing bodies over `max_bytes`.
pub fn decode_message<T: DeserializeOwned>(
    headers: Option<&HeaderMap>,
    payload: &[u8],
    max_bytes: usize,
) -> Result<(T, Encoding)> {
    check_size(payload.len(), max_bytes)?;
    let enc = Encoding::from_headers(headers)?;
    Ok((enc.decode_body(payload)?, enc))
}

pub fn check_size(len: usize, max_bytes: usize) -> Result<()> {
    if len > max_bytes {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!("body is {len} bytes; the maximum is {max_bytes}"),
        ));
    }
    Ok(())
}

/// JSON encoding of values stored in KV, which people read with `nats kv get`.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Bytes> {
    Encoding::Json.encode(value)
}

pub fn from_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    Encoding::Json.decode(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn bodies_nested_too_deep_are_refused_in_either_encoding() {
        // Built as bytes: a value nested a thousand deep would overflow the
        // test thread's stack on its way through serde.
        let json = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n)).into_bytes();
        let msgpack = |n: usize| {
            let mut b = vec![0x91u8; n]; // an array of one element, n times
            b.push(0x01);
            b
        };
        for (enc, body) in [
            (Encoding::Json, &json as &dyn Fn(usize) -> Vec<u8>),
            (Encoding::Msgpack, &msgpack),
        ] {
            // Exactly the limit passes, in both encodings alike; messages
            // between roles may nest a few levels more.
            assert!(
                enc.decode_body::<serde_json::Value>(&body(MAX_DEPTH))
                    .is_ok(),
                "{enc:?}"
            );
            assert!(
                enc.decode::<serde_json::Value>(&body(INTERNAL_DEPTH))
                    .is_ok(),
                "{enc:?}"
            );
            for n in [MAX_DEPTH + 1, 127, 1000, 100_000] {
                let e = enc.decode_body::<serde_json::Value>(&body(n)).unwrap_err();
                assert_eq!(e.code, ErrorCode::BadRequest, "{enc:?} {n}");
                assert!(e.message.contains("deeper than"), "{enc:?} {n}: {e}");
            }
            let e = enc
                .decode::<serde_json::Value>(&body(INTERNAL_DEPTH + 1))
                .unwrap_err();
            assert!(e.message.contains("deeper than"), "{enc:?}: {e}");
        }
        // Brackets inside strings do not count.
        let text = format!("{{\"a\":\"{}\"}}", "[".repeat(500));
        assert!(
            Encoding::Json
                .decode::<serde_json::Value>(text.as_bytes())
                .is_ok()
        );
    }

    #[test]
    fn no_header_is_json() {
        assert_eq!(Encoding::from_headers(None).unwrap(), Encoding::Json);
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, "application/msgpack");
        assert_eq!(Encoding::from_headers(Some(&h)).unwrap(), Encoding::Msgpack);
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, "application/json; charset=utf-8");
        assert_eq!(Encoding::from_headers(Some(&h)).unwrap(), Encoding::Json);
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, "application/xml");
        assert_eq!(
            Encoding::from_headers(Some(&h)).unwrap_err().code,
            ErrorCode::UnsupportedEncoding
        );
    }

    #[test]
    fn round_trips_both_encodings() {
        let v = json!({"args":[1,2.5,"x"],"nested":{"a":null}});
        for enc in [Encoding::Json, Encoding::Msgpack] {
            let bytes = enc.encode(&v).unwrap();
            let back: Value = enc.decode(&bytes).unwrap();
            assert_eq!(back, v);
        }
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        let e = Encoding::Json.decode::<Value>(b"{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = Encoding::Msgpack.decode::<Value>(&[0xc1]).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = decode_message::<Value>(None, &[b' '; 20], 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
    }
}
