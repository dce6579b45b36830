//! The JSON-RPC 2.0 envelope: one untagged parse of an incoming body into a request,
//! notification or response (which is what makes a connection bidirectional), and the
//! serializers for outgoing messages. The envelope's id, version marker and error object are
//! jsonrpsee's types; everything else about the connection is ours (see ARCHITECTURE.md).

use bytes::Bytes;
use jsonrpsee_types::{ErrorObjectOwned, Id, TwoPointZero};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::error::RpcError;

/// A request id as it appears on the wire (number or string).
pub type RequestId = Id<'static>;

/// One incoming message.
#[derive(Debug)]
pub enum Message {
    Request {
        id: RequestId,
        method: String,
        params: Option<Box<RawValue>>,
    },
    Notification {
        method: String,
        params: Option<Box<RawValue>>,
    },
    Response {
        id: RequestId,
        result: Result<Box<RawValue>, ErrorObjectOwned>,
    },
}

/// Why a body is not a message we can act on, with the id to answer to when one was readable.
#[derive(Debug)]
pub struct InvalidMessage {
    pub id: RequestId,
    pub error: RpcError,
}

#[derive(Deserialize)]
struct Envelope {
    jsonrpc: Option<String>,
    #[serde(default, deserialize_with = "present")]
    id: Option<serde_json::Value>,
    method: Option<serde_json::Value>,
    params: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "present")]
    result: Option<Box<RawValue>>,
    error: Option<ErrorObjectOwned>,
}

/// Marks a field as present even when its value is `null` (plain `Option` cannot tell).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn to_id(value: serde_json::Value) -> Option<RequestId> {
    match value {
        serde_json::Value::Number(n) => n.as_u64().map(Id::Number),
        serde_json::Value::String(s) => Some(Id::Str(s.into())),
        serde_json::Value::Null => Some(Id::Null),
        _ => None,
    }
}

/// Deserializes an owned request id (jsonrpsee's own impl borrows from the input).
pub fn deserialize_id<'de, D: Deserializer<'de>>(d: D) -> Result<RequestId, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    to_id(value)
        .ok_or_else(|| serde::de::Error::custom("id must be an unsigned integer or a string"))
}

impl Message {
    /// Parses one frame body.
    pub fn parse(body: &[u8]) -> Result<Message, InvalidMessage> {
        let invalid = |id: RequestId, msg: String| InvalidMessage {
            id,
            error: RpcError::invalid_request(msg),
        };
        let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first == Some(b'[') {
            // Still tell a client that sent garbage from one that sent a batch.
            return match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => Err(invalid(
                    Id::Null,
                    "batch requests are not supported; send one message per frame".into(),
                )),
                Err(e) => Err(InvalidMessage {
                    id: Id::Null,
                    error: RpcError::parse_error(format!("invalid JSON: {e}")),
                }),
            };
        }
        let env: Envelope = match serde_json::from_slice(body) {
            Ok(env) => env,
            Err(e) if e.is_data() => {
                return Err(invalid(
                    Id::Null,
                    format!("not a JSON-RPC 2.0 message: {e}"),
                ));
            }
            Err(e) => {
                return Err(InvalidMessage {
                    id: Id::Null,
                    error: RpcError::parse_error(format!("invalid JSON: {e}")),
                });
            }
        };
        let id = match env.id {
            None => None,
            Some(v) => match to_id(v) {
                Some(id) => Some(id),
                None => {
                    return Err(invalid(
                        Id::Null,
                        "id must be an unsigned integer or a string".into(),
                    ));
                }
            },
        };
        if env.jsonrpc.as_deref() != Some("2.0") {
            return Err(invalid(
                id.unwrap_or(Id::Null),
                "the \"jsonrpc\" member must be exactly \"2.0\"".into(),
            ));
        }
        match (env.method, id) {
            (Some(serde_json::Value::String(method)), Some(id)) => Ok(Message::Request {
                id,
                method,
                params: env.params,
            }),
            (Some(serde_json::Value::String(method)), None) => Ok(Message::Notification {
                method,
                params: env.params,
            }),
            (Some(_), id) => Err(invalid(
                id.unwrap_or(Id::Null),
                "\"method\" must be a string".into(),
            )),
            (None, Some(id)) => match (env.result, env.error) {
                (Some(result), None) => Ok(Message::Response {
                    id,
                    result: Ok(result),
                }),
                (None, Some(error)) => Ok(Message::Response {
                    id,
                    result: Err(error),
                }),
                _ => Err(invalid(
                    id,
                    "a response needs exactly one of \"result\" and \"error\"".into(),
                )),
            },
            (None, None) => Err(invalid(
                Id::Null,
                "a message needs a \"method\" or an \"id\"".into(),
            )),
        }
    }
}

#[derive(Serialize)]
struct OutRequest<'a, P> {
    jsonrpc: TwoPointZero,
    id: &'a RequestId,
    method: &'a str,
    params: &'a P,
}

#[derive(Serialize)]
struct OutNotification<'a, P> {
    jsonrpc: TwoPointZero,
    method: &'a str,
    params: &'a P,
}

#[derive(Serialize)]
struct OutResult<'a, R> {
    jsonrpc: TwoPointZero,
    id: &'a RequestId,
    result: &'a R,
}

#[derive(Serialize)]
struct OutError<'a> {
    jsonrpc: TwoPointZero,
    id: &'a RequestId,
    error: &'a ErrorObjectOwned,
}

// Serializing our own plain structs and `serde_json::Value` cannot fail (no non-string map keys,
// no failing `Serialize` impls), so a failure here is a programming error reported as an
// internal error rather than a panic.
fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    match serde_json::to_vec(value) {
        Ok(v) => Bytes::from(v),
        Err(e) => Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","method":"$/serializationFailure","params":{{"error":{}}}}}"#,
            serde_json::Value::String(e.to_string())
        )),
    }
}

pub fn encode_request<P: Serialize>(id: &RequestId, method: &str, params: &P) -> Bytes {
    to_bytes(&OutRequest {
        jsonrpc: TwoPointZero,
        id,
        method,
        params,
    })
}

pub fn encode_notification<P: Serialize>(method: &str, params: &P) -> Bytes {
    to_bytes(&OutNotification {
        jsonrpc: TwoPointZero,
        method,
        params,
    })
}

pub fn encode_result<R: Serialize>(id: &RequestId, result: &R) -> Bytes {
    to_bytes(&OutResult {
        jsonrpc: TwoPointZero,
        id,
        result,
    })
}

pub fn encode_error(id: &RequestId, error: RpcError) -> Bytes {
    let error: ErrorObjectOwned = error.into();
    to_bytes(&OutError {
        jsonrpc: TwoPointZero,
        id,
        error: &error,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::error::ErrorCode;

    fn err_code(body: &str) -> i32 {
        Message::parse(body.as_bytes()).unwrap_err().error.code
    }

    #[test]
    fn classifies_messages() {
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"a","params":{}}"#).unwrap(),
            Message::Request {
                id: Id::Number(1),
                ..
            }
        ));
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"2.0","method":"a"}"#).unwrap(),
            Message::Notification { .. }
        ));
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"2.0","id":"x","result":null}"#).unwrap(),
            Message::Response { result: Ok(_), .. }
        ));
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"m"}}"#)
                .unwrap(),
            Message::Response { result: Err(_), .. }
        ));
    }

    #[test]
    fn rejects_what_is_not_jsonrpc() {
        assert_eq!(err_code("{not json"), ErrorCode::ParseError.code());
        assert_eq!(err_code("[1,2"), ErrorCode::ParseError.code());
        assert_eq!(
            err_code(r#"[{"jsonrpc":"2.0","id":1,"method":"a"}]"#),
            ErrorCode::InvalidRequest.code()
        );
        assert_eq!(
            err_code(r#"{"id":1,"method":"a"}"#),
            ErrorCode::InvalidRequest.code()
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":{},"method":"a"}"#),
            ErrorCode::InvalidRequest.code()
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1,"method":5}"#),
            ErrorCode::InvalidRequest.code()
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0"}"#),
            ErrorCode::InvalidRequest.code()
        );
        assert_eq!(err_code("42"), ErrorCode::InvalidRequest.code());
    }

    #[test]
    fn keeps_the_id_of_an_invalid_request() {
        let e = Message::parse(br#"{"jsonrpc":"1.0","id":7,"method":"a"}"#).unwrap_err();
        assert_eq!(e.id, Id::Number(7));
    }

    #[test]
    fn encodes_round_trip() {
        let b = encode_request(&Id::Number(3), "x/y", &serde_json::json!({"a": 1}));
        assert!(
            matches!(Message::parse(&b).unwrap(), Message::Request { method, .. } if method == "x/y")
        );
        let b = encode_error(&Id::Str("k".into()), RpcError::invalid_params("bad"));
        match Message::parse(&b).unwrap() {
            Message::Response { result: Err(e), .. } => assert_eq!(e.code(), -32602),
            other => panic!("{other:?}"),
        }
    }
}
