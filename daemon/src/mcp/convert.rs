//! Between MCP's JSON and what the model and the session see: a server's tools become
//! `mcp__<server>__<tool>` specs (or a reason they cannot be offered), and a `tools/call` result
//! becomes the text the model reads plus metadata for editors.

use serde_json::{Value, json};

use crate::model::image::{MAX_IMAGE_BYTES, MAX_IMAGES, decoded_len};
use crate::model::{Image, ToolSpec};

/// The prefix of every MCP tool's name as the model sees it.
pub(crate) const PREFIX: &str = "mcp__";

/// The longest tool name the providers accept (OpenAI's limit; Anthropic's is longer).
const MAX_NAME: usize = 64;

/// The longest description sent to the model; a longer one is cut (servers sometimes put whole
/// manuals there, and every step pays for it).
const MAX_DESCRIPTION: usize = 2048;

/// The name the model calls a server's tool by.
pub(crate) fn full_name(server: &str, tool: &str) -> String {
    format!("{PREFIX}{server}__{tool}")
}

/// `mcp__<server>__<tool>` split into server and tool. Server names never contain `__`, so the
/// first `__` after the prefix ends the server's name.
pub(crate) fn split_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (server, tool) = rest.split_once("__")?;
    (!server.is_empty() && !tool.is_empty()).then_some((server, tool))
}

/// A server's tool, converted: the spec offered to the model, or why it is not offered.
pub(crate) fn tool_spec(server: &str, tool: &Value) -> Result<ToolSpec, (String, String)> {
    let name = tool
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let reject = |why: String| Err((name.clone(), why));
    if name.is_empty() {
        return reject("the tool has no name".to_owned());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return reject(
            "its name has characters model APIs refuse in tool names (only letters, digits, \
             `_` and `-`)"
                .to_owned(),
        );
    }
    let full = full_name(server, &name);
    if full.len() > MAX_NAME {
        return reject(format!(
            "{full} is longer than the {MAX_NAME} characters model APIs accept"
        ));
    }
    let schema = tool.get("inputSchema").cloned().unwrap_or(Value::Null);
    if let Err(why) = check_schema(&schema) {
        return reject(format!("its input schema would be refused: {why}"));
    }
    let mut description = tool
        .get("description")
        .and_then(Value::as_str)
        .or_else(|| tool.get("title").and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned();
    if description.len() > MAX_DESCRIPTION {
        let mut end = MAX_DESCRIPTION;
        while !description.is_char_boundary(end) {
            end -= 1;
        }
        description.truncate(end);
        description.push('…');
    }
    Ok(ToolSpec {
        name: full,
        description: format!("(MCP server {server}) {description}"),
        parameters: schema,
    })
}

/// What the providers require of a tool's parameters: a JSON object schema whose `properties`,
/// if present, is an object and whose `required`, if present, is a list of names.
fn check_schema(schema: &Value) -> Result<(), String> {
    let Some(obj) = schema.as_object() else {
        return Err("it is not a JSON object".to_owned());
    };
    match obj.get("type") {
        Some(Value::String(t)) if t == "object" => {}
        Some(t) => return Err(format!("its type is {t}, not \"object\"")),
        None => return Err("it has no `type: \"object\"`".to_owned()),
    }
    if let Some(p) = obj.get("properties")
        && !p.is_object()
    {
        return Err("`properties` is not an object".to_owned());
    }
    if let Some(r) = obj.get("required")
        && !r.as_array().is_some_and(|r| r.iter().all(Value::is_string))
    {
        return Err("`required` is not a list of names".to_owned());
    }
    Ok(())
}

/// A `tools/call` result as the model sees it (text and images) and as editors see it
/// (metadata).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Converted {
    pub text: String,
    pub is_error: bool,
    pub metadata: Value,
    /// Images a model that accepts images is shown (PNG, JPEG, GIF or WebP within the size
    /// limit; others become a note in `text`).
    pub images: Vec<Image>,
}

/// Converts a `CallToolResult`. Text blocks are kept as they are; images are passed on (a model
/// that does not accept images is told one was left out, in `Conversation`), audio and images of
/// other types become a note; resource links and embedded resources a line naming them (with an
/// embedded text resource's text); structured content is sent as JSON text when the server gave
/// no text.
pub(crate) fn result(server: &str, tool: &str, result: &Value) -> Converted {
    let mut parts: Vec<String> = Vec::new();
    let mut shown: Vec<Image> = Vec::new();
    let mut images = Vec::new();
    let mut links = Vec::new();
    let mut any_text = false;
    let blocks = result
        .get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let s = |b: &Value, k: &str| {
        b.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    for b in blocks {
        match b.get("type").and_then(Value::as_str).unwrap_or_default() {
            "text" => {
                any_text = true;
                parts.push(s(b, "text"));
            }
            kind @ ("image" | "audio") => {
                let (mime, data) = (s(b, "mimeType"), s(b, "data"));
                // base64: 4 characters for 3 bytes.
                let bytes = data.len() / 4 * 3;
                images.push(json!({"type": kind, "mimeType": mime, "bytes": bytes}));
                let showable = kind == "image"
                    && Image::supported_type(&mime)
                    && shown.len() < MAX_IMAGES
                    && decoded_len(&data).is_some_and(|n| n > 0 && n <= MAX_IMAGE_BYTES);
                if showable {
                    shown.push(Image {
                        mime_type: mime,
                        data,
                    });
                } else {
                    parts.push(format!(
                        "[{kind} ({mime}, about {bytes} bytes) returned by the tool; it cannot be \
                         shown to you here]"
                    ));
                }
            }
            "resource_link" => {
                let (uri, name) = (s(b, "uri"), s(b, "name"));
                let mut line = format!("[resource link: {name} <{uri}>");
                if let Some(m) = b.get("mimeType").and_then(Value::as_str) {
                    line.push_str(&format!(" ({m})"));
                }
                if let Some(d) = b.get("description").and_then(Value::as_str) {
                    line.push_str(&format!(": {d}"));
                }
                line.push(']');
                parts.push(line);
                links.push(json!({"uri": uri, "name": name}));
            }
            "resource" => {
                let r = b.get("resource").cloned().unwrap_or(Value::Null);
                let uri = s(&r, "uri");
                match r.get("text").and_then(Value::as_str) {
                    Some(text) => {
                        any_text = true;
                        parts.push(format!("[resource <{uri}>]\n{text}"));
                    }
                    None => parts.push(format!(
                        "[binary resource <{uri}> ({}); it cannot be shown to you here]",
                        s(&r, "mimeType")
                    )),
                }
                links.push(json!({"uri": uri}));
            }
            other => parts.push(format!(
                "[content of type {other:?} that crushd does not read]"
            )),
        }
    }
    let structured = result.get("structuredContent").filter(|v| !v.is_null());
    if let Some(v) = structured
        && !any_text
    {
        parts.push(v.to_string());
    }
    let is_error = result
        .get("isError")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut text = parts.join("\n");
    if text.is_empty() && !shown.is_empty() {
        text = format!("(the tool returned {} image(s))", shown.len());
    } else if text.is_empty() {
        text = if is_error {
            "The tool failed without saying why.".to_owned()
        } else {
            "(the tool returned no content)".to_owned()
        };
    }
    let mut metadata = json!({"mcpServer": server, "mcpTool": tool});
    if let Some(v) = structured {
        metadata["structuredContent"] = v.clone();
    }
    if !images.is_empty() {
        metadata["media"] = Value::Array(images);
    }
    if !links.is_empty() {
        metadata["resources"] = Value::Array(links);
    }
    Converted {
        text,
        is_error,
        metadata,
        images: shown,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = full_name("fs", "read_file");
        assert_eq!(n, "mcp__fs__read_file");
        assert_eq!(split_name(&n), Some(("fs", "read_file")));
        assert_eq!(split_name("mcp__fs__a__b"), Some(("fs", "a__b")));
        assert_eq!(split_name("bash"), None);
        assert_eq!(split_name("mcp__fs"), None);
    }

    #[test]
    fn offers_good_tools_and_reports_bad_ones() {
        let ok = tool_spec(
            "s",
            &json!({"name": "echo", "description": "Echo", "inputSchema": {"type": "object", "properties": {"m": {"type": "string"}}}}),
        )
        .unwrap();
        assert_eq!(ok.name, "mcp__s__echo");
        assert!(ok.description.ends_with("Echo"));
        let bad = |t: Value| tool_spec("s", &t).unwrap_err().1;
        assert!(bad(json!({"name": "a b", "inputSchema": {"type": "object"}})).contains("name"));
        assert!(bad(json!({"name": "a", "inputSchema": {"type": "string"}})).contains("schema"));
        assert!(bad(json!({"name": "a"})).contains("schema"));
        assert!(
            bad(json!({"name": "x".repeat(70), "inputSchema": {"type": "object"}}))
                .contains("longer")
        );
    }

    #[test]
    fn converts_every_content_kind() {
        let r = json!({
            "content": [
                {"type": "text", "text": "hello"},
                {"type": "image", "data": "AAAA", "mimeType": "image/png"},
                {"type": "resource_link", "uri": "file:///a", "name": "a"},
                {"type": "resource", "resource": {"uri": "file:///b", "text": "bee"}}
            ],
            "isError": false
        });
        let c = result("s", "t", &r);
        assert!(!c.is_error);
        assert_eq!(
            c.images,
            [Image {
                mime_type: "image/png".into(),
                data: "AAAA".into()
            }]
        );
        assert!(c.text.starts_with("hello\n[resource link"), "{}", c.text);
        assert!(c.text.contains("[resource link: a <file:///a>]"));
        assert!(c.text.contains("[resource <file:///b>]\nbee"));
        assert_eq!(c.metadata["media"][0]["mimeType"], "image/png");
        let s = result(
            "s",
            "t",
            &json!({"content": [], "structuredContent": {"t": 1}}),
        );
        assert_eq!(s.text, "{\"t\":1}");
        assert_eq!(s.metadata["structuredContent"]["t"], 1);
        let e = result("s", "t", &json!({"content": [], "isError": true}));
        assert!(e.is_error);
        // What no provider takes stays a note.
        let odd = result(
            "s",
            "t",
            &json!({"content": [
                {"type": "image", "data": "AAAA", "mimeType": "image/svg+xml"},
                {"type": "audio", "data": "AAAA", "mimeType": "audio/wav"},
                {"type": "image", "data": "not base64!", "mimeType": "image/png"}
            ]}),
        );
        assert!(odd.images.is_empty());
        assert_eq!(
            odd.text.matches("cannot be shown").count(),
            3,
            "{}",
            odd.text
        );
        let only = result(
            "s",
            "t",
            &json!({"content": [{"type": "image", "data": "AAAA", "mimeType": "image/gif"}]}),
        );
        assert_eq!(only.text, "(the tool returned 1 image(s))");
    }
}
