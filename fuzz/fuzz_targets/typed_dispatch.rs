//! Typed dispatch (method name × params) on arbitrary input: `ClientRequest::parse`,
//! `ClientNotification::parse` and the client side's `DaemonNotification::parse` never panic, and
//! a known method is never reported as unknown.
//!
//! Input layout: byte 0 picks a known method (or, past the end of the list, takes the method and
//! params from the rest parsed as a whole JSON-RPC message); the rest is the params JSON.
#![no_main]

use crush_protocol::message::{self, Message};
use crush_protocol::methods::{ClientNotification, ClientRequest, DaemonNotification};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fn dispatch(method: &str, params: Option<&RawValue>) {
    let known_request = ClientRequest::METHODS.contains(&method);
    match ClientRequest::parse(method, params) {
        Ok(Some(req)) => assert_eq!(req.method(), method),
        Ok(None) => assert!(!known_request, "{method} reported unknown"),
        Err(e) => {
            assert!(known_request, "unknown {method} failed instead of Ok(None)");
            let _ = message::encode_error(&crush_protocol::Id::Number(1), e);
        }
    }
    match ClientNotification::parse(method, params) {
        Ok(None) => assert!(!ClientNotification::METHODS.contains(&method)),
        Ok(Some(_)) | Err(_) => assert!(ClientNotification::METHODS.contains(&method)),
    }
    match DaemonNotification::parse(method, params) {
        Ok(None) => assert!(!DaemonNotification::METHODS.contains(&method)),
        Ok(Some(_)) | Err(_) => assert!(DaemonNotification::METHODS.contains(&method)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let methods: Vec<&str> = ClientRequest::METHODS
        .iter()
        .chain(ClientNotification::METHODS)
        .chain(DaemonNotification::METHODS)
        .copied()
        .collect();
    match methods.get(usize::from(pick)) {
        Some(method) => {
            if rest.is_empty() {
                dispatch(method, None);
            } else if let Ok(text) = std::str::from_utf8(rest)
                && let Ok(raw) = RawValue::from_string(text.to_owned())
            {
                dispatch(method, Some(&raw));
            }
        }
        None => match Message::parse(rest) {
            Ok(Message::Request { method, params, .. })
            | Ok(Message::Notification { method, params }) => {
                dispatch(&method, params.as_deref());
            }
            _ => {}
        },
    }
});
