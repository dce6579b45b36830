//! Choosing a model when nobody chose one. The daemon has no default model until the config
//! file (or `CRUSHD_MODEL`) names one; `crushctl run` should still just work with a provider key
//! in the environment or a local Ollama. So when neither `-m`, the session nor the daemon names a
//! model, pick the first usable one — a well-known model of a provider whose key the daemon has,
//! else a model a reachable Ollama serves — and otherwise fail (exit 2) saying exactly what to set.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crush_client::ReconnectingClient;
use crush_protocol::{NoParams, request};

use crate::{EXIT_USAGE, Exit};

/// Tried in this order when the daemon has their provider's key.
const PREFERRED: &[&str] = &[
    "anthropic/claude-sonnet-4-5",
    "openai/gpt-5",
    "openrouter/anthropic/claude-sonnet-4.5",
];

/// The model to send with the prompt: `None` leaves it to the session or the daemon.
pub async fn choose(
    client: &ReconnectingClient,
    requested: Option<&str>,
    session_model: Option<&str>,
) -> anyhow::Result<Option<String>> {
    if let Some(m) = requested {
        return Ok(Some(m.to_owned()));
    }
    if session_model.is_some() {
        return Ok(None);
    }
    let list = client.request::<request::ModelList>(NoParams).await?;
    if list.default.is_some() {
        return Ok(None);
    }
    let usable = |name: &str| {
        list.models
            .iter()
            .any(|m| m.name == name && m.unavailable.is_none())
    };
    if let Some(m) = PREFERRED.iter().find(|m| usable(m)) {
        return Ok(Some((*m).to_owned()));
    }
    // A provider of the config file, or another model of a preset, that has what it needs.
    // Ollama needs no key, so "usable" says nothing about whether it runs: it is probed below.
    if let Some(m) = list
        .models
        .iter()
        .find(|m| m.unavailable.is_none() && m.api != "echo" && m.provider != "ollama")
    {
        return Ok(Some(m.name.clone()));
    }
    let config = client.request::<request::ConfigGet>(NoParams).await?.config;
    let ollama_url = config
        .pointer("/providers/ollama/baseUrl")
        .and_then(Value::as_str)
        .unwrap_or("http://127.0.0.1:11434/v1")
        .to_owned();
    if let Some(model) = ollama_model(&ollama_url).await {
        return Ok(Some(format!("ollama/{model}")));
    }
    Err(no_model(&config, &ollama_url).into())
}

/// Exit 2 with what to set.
fn no_model(config: &Value, ollama_url: &str) -> Exit {
    let mut vars: Vec<(String, String)> = config["providers"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(id, p)| {
            p["apiKeyEnv"]
                .as_str()
                .map(|v| (v.to_owned(), id.to_owned()))
        })
        .collect();
    vars.sort();
    vars.dedup_by(|a, b| a.0 == b.0);
    let mut msg = String::from("no model is available. Set one of these in the environment:\n");
    for (var, provider) in &vars {
        msg.push_str(&format!("  {var:<22} ({provider})\n"));
    }
    msg.push_str(&format!(
        "or start Ollama ({}) with a model pulled, or set `default_model = \"<provider>/<model>\"` in {}.\n",
        ollama_url.trim_end_matches("/v1"),
        crate::default_config_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the daemon's config file".to_owned())
    ));
    let here: Vec<&str> = vars
        .iter()
        .map(|(v, _)| v.as_str())
        .filter(|v| std::env::var(v).is_ok_and(|x| !x.trim().is_empty()))
        .collect();
    if !here.is_empty() {
        msg.push_str(&format!(
            "{} is set here but not in the running daemon's environment: `crushctl daemon restart` \
             starts it again from this shell.\n",
            here.join(", ")
        ));
    }
    msg.push_str(
        "To try crushctl offline, add `-m echo`: a diagnostic model that echoes the prompt.",
    );
    Exit {
        code: EXIT_USAGE,
        message: msg,
    }
}

/// For a daemon's "model not usable" message: the key variables of the config's providers
/// (built-in and custom alike) that the message names and that are set in *this* environment —
/// the usual cause is a daemon started before the key was exported.
pub async fn env_hint(client: &ReconnectingClient, message: &str) -> Option<String> {
    let config = client
        .request::<request::ConfigGet>(NoParams)
        .await
        .ok()?
        .config;
    let mut here: Vec<String> = config["providers"]
        .as_object()?
        .values()
        .filter_map(|p| p["apiKeyEnv"].as_str())
        .filter(|v| message.contains(*v))
        .filter(|v| std::env::var(v).is_ok_and(|x| !x.trim().is_empty()))
        .map(str::to_owned)
        .collect();
    here.sort();
    here.dedup();
    (!here.is_empty()).then(|| {
        format!(
            "{} is set here but not in the running daemon's environment: `crushctl daemon \
             restart` starts it again from this shell.",
            here.join(", ")
        )
    })
}

/// The first model a reachable Ollama (OpenAI-compatible `GET /models`) serves, if any. Plain
/// HTTP on the loopback only; anything unexpected means "no".
async fn ollama_model(base_url: &str) -> Option<String> {
    let rest = base_url.strip_prefix("http://")?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, String::new()),
    };
    let addr = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
        let req = format!(
            "GET {}/models HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n",
            path.trim_end_matches('/')
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.") || !head.split(' ').nth(1)?.starts_with('2') {
            return None;
        }
        let v: Value = serde_json::from_str(body.trim()).ok()?;
        v["data"]
            .as_array()?
            .iter()
            .find_map(|m| m["id"].as_str())
            .map(str::to_owned)
    };
    tokio::time::timeout(Duration::from_millis(1500), fetch)
        .await
        .ok()
        .flatten()
}
