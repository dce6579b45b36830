//! The JSON-RPC envelope parse on arbitrary bodies: it never panics, and what it accepts as a
//! request or notification survives our own encoder unchanged (method, id and params).
#![no_main]

use crush_protocol::message::{self, Message};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fn params_value(p: &Option<Box<RawValue>>) -> Option<serde_json::Value> {
    p.as_ref()
        .map(|p| serde_json::from_str(p.get()).unwrap_or(serde_json::Value::Null))
}

fuzz_target!(|data: &[u8]| {
    match Message::parse(data) {
        Ok(Message::Request { id, method, params }) => {
            let out = match &params {
                Some(p) => message::encode_request(&id, &method, p),
                None => message::encode_request(&id, &method, &serde_json::Value::Null),
            };
            match Message::parse(&out) {
                Ok(Message::Request {
                    id: id2,
                    method: m2,
                    params: p2,
                }) => {
                    assert_eq!(id, id2);
                    assert_eq!(method, m2);
                    if params.is_some() {
                        assert_eq!(params_value(&params), params_value(&p2));
                    }
                }
                other => panic!("re-encoded request parsed as {other:?}"),
            }
        }
        Ok(Message::Notification { method, params }) => {
            let out = match &params {
                Some(p) => message::encode_notification(&method, p),
                None => message::encode_notification(&method, &serde_json::Value::Null),
            };
            match Message::parse(&out) {
                Ok(Message::Notification {
                    method: m2,
                    params: p2,
                }) => {
                    assert_eq!(method, m2);
                    if params.is_some() {
                        assert_eq!(params_value(&params), params_value(&p2));
                    }
                }
                other => panic!("re-encoded notification parsed as {other:?}"),
            }
        }
        Ok(Message::Response { .. }) => {}
        Err(invalid) => {
            // Every refusal is answerable: a JSON-RPC error object that serializes.
            let _ = message::encode_error(&invalid.id, invalid.error);
        }
    }
});
