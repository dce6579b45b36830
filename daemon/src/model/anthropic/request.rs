//! The request body of one step: a [`TurnRequest`] as the Messages API wants it — `max_tokens`
//! always set, consecutive messages of a role merged (tool results and the user text after them
//! become one user message), only signed thinking handed back, no empty text anywhere.

use serde_json::{Value, json};

use crate::model::{ChatMessage, Reasoning, ToolCall, TurnRequest};

/// `max_tokens` when neither the request nor the model's configuration bounds the output: the
/// API refuses a request without it, and every current Claude model can produce this many.
pub(super) const FALLBACK_MAX_TOKENS: u32 = 8192;

/// Stands in for an assistant message with nothing in it, which the API refuses.
const NO_OUTPUT: &str = "(no output)";
/// Stands in for an empty user message or tool result: the API refuses empty text blocks and
/// an error tool result without content.
const EMPTY: &str = "(empty)";

/// The request body for a step; `default_max_tokens` applies when the request sets no bound.
pub(super) fn request_body(model: &str, request: &TurnRequest, default_max_tokens: u32) -> Value {
    let max_tokens = request
        .max_output_tokens
        .filter(|n| *n > 0)
        .unwrap_or(default_max_tokens)
        .max(1);
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": messages(&request.messages),
        "stream": true,
    });
    if !request.system.is_empty() {
        body["system"] = json!(request.system);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                // The API requires an object schema; a tool declared without one takes no input.
                let schema = if t.parameters.is_object() {
                    t.parameters.clone()
                } else {
                    json!({"type": "object", "properties": {}})
                };
                let mut tool = json!({"name": t.name, "input_schema": schema});
                if !t.description.is_empty() {
                    tool["description"] = json!(t.description);
                }
                tool
            })
            .collect();
    }
    body
}

/// One message of the request while it is assembled: consecutive messages of a role become one.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

impl Turn {
    fn into_json(mut self) -> Value {
        if self.blocks.is_empty() {
            let text = if self.role == "assistant" {
                NO_OUTPUT
            } else {
                EMPTY
            };
            self.blocks.push(text_block(text));
        }
        if self.role == "user" {
            // The API wants a user message's tool results before any text in it.
            self.blocks
                .sort_by_key(|b| b.get("type").and_then(Value::as_str) != Some("tool_result"));
            if let [only] = self.blocks.as_slice()
                && only["type"] == "text"
            {
                return json!({"role": "user", "content": only["text"]});
            }
        }
        json!({"role": self.role, "content": self.blocks})
    }
}

fn messages(history: &[ChatMessage]) -> Vec<Value> {
    let mut turns: Vec<Turn> = Vec::with_capacity(history.len());
    for m in history {
        let (role, blocks) = match m {
            ChatMessage::User { content, images } => {
                // Images first: the API's guidance is image, then the question about it.
                let mut blocks: Vec<Value> = images.iter().map(image_block).collect();
                blocks.extend((!content.is_empty()).then(|| text_block(content)));
                ("user", blocks)
            }
            ChatMessage::Assistant {
                text,
                reasoning,
                tool_calls,
            } => (
                "assistant",
                assistant_blocks(text, reasoning.as_ref(), tool_calls),
            ),
            ChatMessage::ToolResult {
                call_id,
                content,
                is_error,
                images,
                ..
            } => {
                let content = if content.is_empty() { EMPTY } else { content };
                let content = if images.is_empty() {
                    json!(content)
                } else {
                    let mut blocks = vec![text_block(content)];
                    blocks.extend(images.iter().map(image_block));
                    Value::Array(blocks)
                };
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": call_id,
                    "content": content,
                    "is_error": is_error,
                });
                ("user", vec![block])
            }
        };
        match turns.last_mut() {
            Some(turn) if turn.role == role => turn.blocks.extend(blocks),
            _ => turns.push(Turn { role, blocks }),
        }
    }
    turns.into_iter().map(Turn::into_json).collect()
}

fn image_block(image: &crate::model::Image) -> Value {
    json!({
        "type": "image",
        "source": {"type": "base64", "media_type": image.mime_type, "data": image.data},
    })
}

fn assistant_blocks(text: &str, reasoning: Option<&Reasoning>, calls: &[ToolCall]) -> Vec<Value> {
    let mut blocks = Vec::with_capacity(calls.len() + 2);
    // The API verifies thinking by its signature; unsigned thinking cannot be handed back.
    if let Some(Reasoning {
        text: thinking,
        signature: Some(signature),
    }) = reasoning
        && !signature.is_empty()
    {
        blocks.push(json!({"type": "thinking", "thinking": thinking, "signature": signature}));
    }
    if !text.is_empty() {
        blocks.push(text_block(text));
    }
    for c in calls {
        blocks.push(json!({
            "type": "tool_use",
            "id": c.id,
            "name": c.name,
            "input": tool_input(&c.input),
        }));
    }
    blocks
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// A call's input as the API wants it: an object. The model may have produced invalid JSON (the
/// tool told it so in its result); the call still has to be shown for the result to pair with.
fn tool_input(input: &str) -> Value {
    match serde_json::from_str::<Value>(input) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::model::ToolSpec;
    use crush_protocol::ModelInfo;

    fn tool_call(id: &str, input: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: "view".into(),
            input: input.into(),
        }
    }

    fn result(id: &str, content: &str, is_error: bool) -> ChatMessage {
        ChatMessage::ToolResult {
            call_id: id.into(),
            name: "view".into(),
            content: content.into(),
            is_error,
            images: Vec::new(),
        }
    }

    #[test]
    fn request_carries_system_tools_and_streaming() {
        let req = TurnRequest {
            system: "be brief".into(),
            messages: vec![ChatMessage::user("hi")],
            tools: vec![ToolSpec {
                name: "view".into(),
                description: "reads a file".into(),
                parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
            }],
            max_output_tokens: Some(100),
        };
        let b = request_body("claude-x", &req, 8192);
        assert_eq!(b["model"], "claude-x");
        assert_eq!(b["system"], "be brief");
        assert_eq!(b["stream"], true);
        assert_eq!(b["max_tokens"], 100);
        assert_eq!(
            b["tools"],
            json!([{
                "name": "view",
                "description": "reads a file",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            }])
        );
        assert_eq!(b["messages"], json!([{"role": "user", "content": "hi"}]));

        let bare = request_body("m", &TurnRequest::default(), 8192);
        assert!(bare.get("system").is_none());
        assert!(bare.get("tools").is_none());
    }

    #[test]
    fn max_tokens_falls_back_from_the_request_to_the_model_to_a_default() {
        let mut req = TurnRequest {
            max_output_tokens: Some(500),
            ..TurnRequest::default()
        };
        assert_eq!(request_body("m", &req, 64_000)["max_tokens"], 500);
        req.max_output_tokens = None;
        assert_eq!(request_body("m", &req, 64_000)["max_tokens"], 64_000);

        let info = ModelInfo {
            model: "m".into(),
            ..ModelInfo::default()
        };
        assert_eq!(info.max_output_tokens.unwrap_or(FALLBACK_MAX_TOKENS), 8192);
        assert_eq!(
            request_body("m", &req, FALLBACK_MAX_TOKENS)["max_tokens"],
            8192
        );
    }

    #[test]
    fn only_signed_reasoning_is_sent_back_and_tool_input_is_parsed() {
        let signed = ChatMessage::Assistant {
            text: "Reading.".into(),
            reasoning: Some(Reasoning {
                text: "think".into(),
                signature: Some("sig".into()),
            }),
            tool_calls: vec![tool_call("t1", r#"{"path":"a.rs"}"#)],
        };
        let unsigned = ChatMessage::Assistant {
            text: String::new(),
            reasoning: Some(Reasoning {
                text: "think".into(),
                signature: None,
            }),
            tool_calls: vec![tool_call("t2", "{not json"), tool_call("t3", "[1]")],
        };
        let req = TurnRequest {
            messages: vec![
                ChatMessage::user("go"),
                signed,
                result("t1", "fn main() {}", false),
                unsigned,
                result("t2", "bad input", true),
                result("t3", "bad input", true),
            ],
            ..TurnRequest::default()
        };
        let m = &request_body("m", &req, 8192)["messages"];
        assert_eq!(
            m[1],
            json!({"role": "assistant", "content": [
                {"type": "thinking", "thinking": "think", "signature": "sig"},
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "t1", "name": "view", "input": {"path": "a.rs"}},
            ]})
        );
        assert_eq!(
            m[3],
            json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": "t2", "name": "view", "input": {}},
                {"type": "tool_use", "id": "t3", "name": "view", "input": {}},
            ]})
        );
    }

    #[test]
    fn consecutive_tool_results_and_user_text_merge_into_one_user_message() {
        let req = TurnRequest {
            messages: vec![
                ChatMessage::user("first"),
                ChatMessage::user(""),
                ChatMessage::user("second"),
                ChatMessage::Assistant {
                    text: String::new(),
                    reasoning: None,
                    tool_calls: vec![tool_call("a", "{}"), tool_call("b", "{}")],
                },
                result("a", "one", false),
                result("b", "", true),
                ChatMessage::user("also this"),
                ChatMessage::assistant(""),
            ],
            ..TurnRequest::default()
        };
        let m = request_body("m", &req, 8192)["messages"].clone();
        assert_eq!(m.as_array().unwrap().len(), 4);
        assert_eq!(
            m[0],
            json!({"role": "user", "content": [
                {"type": "text", "text": "first"},
                {"type": "text", "text": "second"},
            ]})
        );
        assert_eq!(
            m[2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "a", "content": "one", "is_error": false},
                {"type": "tool_result", "tool_use_id": "b", "content": EMPTY, "is_error": true},
                {"type": "text", "text": "also this"},
            ]})
        );
        assert_eq!(
            m[3],
            json!({"role": "assistant", "content": [{"type": "text", "text": NO_OUTPUT}]})
        );
    }

    #[test]
    fn images_are_image_blocks_in_prompts_and_tool_results() {
        let png = crate::model::Image {
            mime_type: "image/png".into(),
            data: "AAAA".into(),
        };
        let block = json!({
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
        });
        let m = messages(&[
            ChatMessage::User {
                content: "what is this?".into(),
                images: vec![png.clone()],
            },
            ChatMessage::Assistant {
                text: String::new(),
                reasoning: None,
                tool_calls: vec![tool_call("c1", "{}")],
            },
            ChatMessage::ToolResult {
                call_id: "c1".into(),
                name: "view".into(),
                content: "a screenshot".into(),
                is_error: false,
                images: vec![png],
            },
        ]);
        assert_eq!(m[0]["content"][0], block);
        assert_eq!(
            m[0]["content"][1],
            json!({"type": "text", "text": "what is this?"})
        );
        let result = &m[2]["content"][0];
        assert_eq!(result["type"], "tool_result");
        assert_eq!(
            result["content"][0],
            json!({"type": "text", "text": "a screenshot"})
        );
        assert_eq!(result["content"][1], block);
    }
}
