//! `mcp list|restart`: the daemon's MCP servers (`mcp/list`, `mcp/restart`).

use crush_client::Client;
use crush_protocol::{McpRestartParams, McpServerInfo, NoParams, request};

use crate::Global;

pub async fn list(g: &Global, json: bool) -> anyhow::Result<u8> {
    let client = Client::connect(g.options(true)).await?;
    let servers = client.request::<request::McpList>(NoParams).await?.servers;
    if json {
        for s in &servers {
            crate::outln!("{}", serde_json::to_string(s)?)?;
        }
        return Ok(0);
    }
    if servers.is_empty() {
        crate::outln!(
            "No MCP servers are configured (add [mcp.servers.NAME] tables to the config file; \
             see docs/cli.md)."
        )?;
        return Ok(0);
    }
    for s in &servers {
        print_server(s)?;
    }
    Ok(0)
}

pub async fn restart(g: &Global, name: &str, json: bool) -> anyhow::Result<u8> {
    let client = Client::connect(g.options(true)).await?;
    let s = client
        .request::<request::McpRestart>(McpRestartParams {
            name: name.to_owned(),
            ..McpRestartParams::default()
        })
        .await?;
    if json {
        crate::outln!("{}", serde_json::to_string(&s)?)?;
    } else {
        crate::outln!("restarting {} (it was {})", s.name, s.state)?;
    }
    Ok(0)
}

fn print_server(s: &McpServerInfo) -> anyhow::Result<()> {
    let pid = s.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
    crate::outln!(
        "{}  {}  {} tools  ({}{pid})  {}",
        s.name,
        s.state,
        s.tool_count,
        s.scope,
        s.command
    )?;
    if let Some(e) = &s.last_error {
        crate::outln!("  last error: {e}")?;
    }
    if !s.tools.is_empty() {
        crate::outln!("  tools: {}", s.tools.join(", "))?;
    }
    for t in &s.rejected_tools {
        crate::outln!("  not offered: {} ({})", t.name, t.reason)?;
    }
    Ok(())
}
