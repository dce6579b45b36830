//! `config path|show|check`. `show` asks the running daemon (`config/get`, keys redacted by the
//! daemon); `check` runs `crushd --check-config`, so the file is judged by the daemon's own
//! parser without this crate depending on the daemon's library (and its database stack).

use std::path::Path;

use crush_client::{Client, autostart};
use crush_protocol::{NoParams, request};

use crate::{EXIT_USAGE, Exit, Global, default_config_path};

pub fn path() -> anyhow::Result<u8> {
    match default_config_path() {
        Some(p) => {
            crate::outln!("{}", p.display())?;
            if !p.is_file() {
                crate::errln!("(no file there yet: the daemon uses its defaults)");
            }
            Ok(0)
        }
        None => Err(Exit {
            code: EXIT_USAGE,
            message: "no home directory: cannot tell where the config file would be".to_owned(),
        }
        .into()),
    }
}

pub async fn show(g: &Global, json: bool) -> anyhow::Result<u8> {
    let client = Client::connect(g.options(true)).await?;
    let cfg = client.request::<request::ConfigGet>(NoParams).await?.config;
    if json {
        crate::outln!("{}", serde_json::to_string(&cfg)?)?;
    } else {
        crate::outln!("{}", serde_json::to_string_pretty(&cfg)?)?;
    }
    Ok(0)
}

pub fn check(file: Option<&Path>) -> anyhow::Result<u8> {
    let Some(crushd) = autostart::find_daemon_binary() else {
        return Err(crush_client::ClientError::DaemonNotFound.into());
    };
    let mut cmd = std::process::Command::new(crushd);
    cmd.arg("--check-config");
    if let Some(f) = file {
        cmd.arg("--config").arg(f);
    }
    let status = cmd.status()?;
    Ok(match status.code() {
        Some(0) => 0,
        Some(2) => EXIT_USAGE,
        _ => crate::EXIT_FAILED,
    })
}
