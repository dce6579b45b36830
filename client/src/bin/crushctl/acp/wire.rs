//! ACP on the wire: newline-delimited JSON-RPC 2.0 on stdin/stdout. The envelope is a few
//! lines of ours; the payloads are [`super::schema`]'s types, picked by method name.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::schema;

/// The ACP protocol version this bridge speaks. `initialize` answers with it whatever the
/// client asks for: the client's own version when that is 1, and our latest otherwise, as the
/// spec's version negotiation says (we never echo a version we do not speak).
pub const PROTOCOL_VERSION: u16 = 1;

/// JSON-RPC and ACP error codes the bridge answers with.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// ACP: the session (or another resource) does not exist.
    pub const RESOURCE_NOT_FOUND: i64 = -32002;
}

/// An error answer: a JSON-RPC code and a message for a person.
#[derive(Debug, Clone)]
pub struct WireError {
    pub code: i64,
    pub message: String,
}

impl WireError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_PARAMS, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(code::INTERNAL_ERROR, message)
    }
}

/// One line from the client.
#[derive(Debug)]
pub enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
    /// The answer to a request of ours (`session/request_permission`).
    Response {
        id: Value,
        result: Result<Value, Value>,
    },
}

/// Reads one line. An unreadable line yields the error response to write back (with the
/// request's id when it could be read, `null` otherwise).
pub fn parse(line: &str) -> Result<Incoming, String> {
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            return Err(error_line(
                &Value::Null,
                &WireError::new(code::PARSE_ERROR, format!("not JSON: {e}")),
            ));
        }
    };
    let Value::Object(mut m) = v else {
        return Err(error_line(
            &Value::Null,
            &WireError::new(
                code::INVALID_REQUEST,
                "a message must be one JSON object (batches are not used by ACP)",
            ),
        ));
    };
    let id = m.remove("id");
    let bad = |id: &Option<Value>, why: &str| {
        error_line(
            id.as_ref().unwrap_or(&Value::Null),
            &WireError::new(code::INVALID_REQUEST, why),
        )
    };
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(bad(&id, "\"jsonrpc\": \"2.0\" is missing"));
    }
    let params = m.remove("params").unwrap_or(Value::Null);
    match (m.remove("method"), id) {
        (Some(Value::String(method)), Some(id)) => Ok(Incoming::Request { id, method, params }),
        (Some(Value::String(method)), None) => Ok(Incoming::Notification { method, params }),
        (Some(_), id) => Err(bad(&id, "\"method\" must be a string")),
        (None, Some(id)) => {
            let result = match (m.remove("result"), m.remove("error")) {
                (_, Some(e)) => Err(e),
                (Some(r), None) => Ok(r),
                (None, None) => Ok(Value::Null),
            };
            Ok(Incoming::Response { id, result })
        }
        (None, None) => Err(bad(
            &None,
            "neither a request, a notification nor a response",
        )),
    }
}

/// A request the client sent, with its payload decoded.
#[derive(Debug)]
pub enum ClientRequest {
    Initialize(schema::InitializeRequest),
    NewSession(schema::NewSessionRequest),
    LoadSession(schema::OpenSessionRequest),
    ResumeSession(schema::OpenSessionRequest),
    ListSessions(schema::ListSessionsRequest),
    DeleteSession(schema::SessionRef),
    Prompt(schema::PromptRequest),
}

fn params<T: DeserializeOwned>(method: &str, params: &Value) -> Result<T, WireError> {
    serde_json::from_value(params.clone())
        .map_err(|e| WireError::invalid_params(format!("{method}: {e}")))
}

/// Decodes a request by its method name.
pub fn client_request(method: &str, p: &Value) -> Result<ClientRequest, WireError> {
    use ClientRequest as R;
    Ok(match method {
        "initialize" => R::Initialize(params(method, p)?),
        "session/new" => R::NewSession(params(method, p)?),
        "session/load" => R::LoadSession(params(method, p)?),
        "session/resume" => R::ResumeSession(params(method, p)?),
        // Every parameter is optional: no params reads as `{}`.
        "session/list" if p.is_null() => R::ListSessions(schema::ListSessionsRequest::default()),
        "session/list" => R::ListSessions(params(method, p)?),
        "session/delete" => R::DeleteSession(params(method, p)?),
        "session/prompt" => R::Prompt(params(method, p)?),
        _ => {
            return Err(WireError::new(
                code::METHOD_NOT_FOUND,
                format!("crushctl acp does not handle {method:?} (see docs/acp.md)"),
            ));
        }
    })
}

/// A notification the client sent that the bridge acts on: `session/cancel`. Others
/// (`$/cancel_request` for our answers, `_…` extensions) need nothing.
pub fn cancel_notification(method: &str, p: &Value) -> Option<schema::SessionRef> {
    (method == "session/cancel")
        .then(|| serde_json::from_value(p.clone()).ok())
        .flatten()
}

pub fn result_line(id: &Value, result: impl Serialize) -> String {
    let result = serde_json::to_value(result).unwrap_or(Value::Null);
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

pub fn error_line(id: &Value, e: &WireError) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": e.code, "message": e.message}}).to_string()
}

pub fn notification_line(method: &str, params: impl Serialize) -> String {
    let params = serde_json::to_value(params).unwrap_or(Value::Null);
    json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string()
}

pub fn request_line(id: u64, method: &str, params: impl Serialize) -> String {
    let params = serde_json::to_value(params).unwrap_or(Value::Null);
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// `session/update` for one session.
pub fn update_line(session_id: &str, update: schema::SessionUpdate) -> String {
    notification_line(
        "session/update",
        schema::SessionNotification { session_id, update },
    )
}

/// Withdraws a request of ours the client has not answered (ACP's `$/cancel_request`).
pub fn cancel_request_line(id: u64) -> String {
    notification_line("$/cancel_request", json!({"requestId": id}))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn bad_lines_get_errors_with_the_id_when_known() {
        let e = parse("{nope").unwrap_err();
        assert!(e.contains("-32700") && e.contains("\"id\":null"), "{e}");
        let e = parse(r#"{"jsonrpc":"2.0","id":7,"method":3}"#).unwrap_err();
        assert!(e.contains("-32600") && e.contains("\"id\":7"), "{e}");
        let e = parse("[1]").unwrap_err();
        assert!(e.contains("-32600"), "{e}");
    }

    #[test]
    fn unknown_methods_are_method_not_found_and_bad_params_invalid_params() {
        let e = client_request("session/frobnicate", &json!({})).unwrap_err();
        assert_eq!(e.code, code::METHOD_NOT_FOUND);
        let e = client_request("session/prompt", &json!({"sessionId": 3})).unwrap_err();
        assert_eq!(e.code, code::INVALID_PARAMS);
        assert!(client_request("session/list", &Value::Null).is_ok());
    }
}
