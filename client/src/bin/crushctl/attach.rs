//! `attach`: follow a session like `tail -f`. It subscribes first (so nothing that happens from
//! then on is missed), prints the recent history — with the streaming message taken from the
//! subscription's snapshot, since the stored copy may lag — and then every event of every run,
//! whoever started it. Across a dropped connection the reconnecting client continues the stream;
//! after a resync the history is read again and only what was not printed is printed.

use serde_json::json;

use crush_client::ClientEvent;
use crush_protocol::{MessageInfo, SessionMessagesParams, SessionSubscribeParams, request};

use crate::render::Conversation;
use crate::run::Interrupts;
use crate::ui::{DIM, Term, Ui, YELLOW};
use crate::{
    AttachArgs, EXIT_FAILED, EXIT_UNREACHABLE, Exit, Global, get_session, leave, list_sessions,
    open_workspace, usage,
};

/// Every message of a session (`from_start`) or its newest `limit`, oldest first.
pub async fn history(
    client: &crush_client::ReconnectingClient,
    session_id: &str,
    from_start: bool,
    limit: u32,
) -> Result<Vec<MessageInfo>, crush_client::ClientError> {
    let mut out: Vec<MessageInfo> = Vec::new();
    let mut before = None;
    loop {
        let page = client
            .request::<request::SessionMessages>(SessionMessagesParams {
                session_id: session_id.to_owned(),
                before,
                limit: Some(if from_start {
                    1000
                } else {
                    limit.clamp(1, 1000)
                }),
            })
            .await?;
        let mut msgs = page.messages;
        msgs.append(&mut out);
        out = msgs;
        match page.next_before {
            Some(b) if from_start && page.has_more => before = Some(b),
            _ => return Ok(out),
        }
    }
}

pub async fn attach(g: &Global, a: AttachArgs) -> anyhow::Result<u8> {
    let term = Term::detect();
    let ui = Ui::new(term, false);
    let mut interrupts = Interrupts::new()?;
    let client = g.reconnecting(g.options(true)).await?;
    let Some(mut events) = client.take_events() else {
        anyhow::bail!("the client's event stream was already taken");
    };
    let result = async {
        let session = match &a.session {
            Some(id) => get_session(&client, id).await?,
            None => {
                let w = open_workspace(&client, &a.ws).await?;
                match list_sessions(&client, &w.workspace_id).await?.into_iter().next() {
                    Some(s) => s,
                    None => {
                        return Err(usage(format!(
                            "no session in {} yet (`crushctl run` starts one)",
                            w.path
                        )));
                    }
                }
            }
        };
        let sub = client
            .subscribe(SessionSubscribeParams {
                session_id: session.session_id.clone(),
                after_seq: None,
                epoch: None,
            })
            .await?;
        let mut conv = Conversation::new(ui.clone());
        let streaming = sub.streaming.clone();
        let show = |conv: &mut Conversation, msgs: &[MessageInfo]| {
            for m in msgs {
                let live = streaming
                    .as_ref()
                    .filter(|s| s.message_id == m.message_id)
                    .map(|s| s.parts.as_slice());
                if a.json {
                    let mut v = serde_json::to_value(m).unwrap_or_default();
                    if let Some(parts) = live {
                        v["parts"] = serde_json::to_value(parts).unwrap_or_default();
                    }
                    v["type"] = json!("message");
                    conv.ui.out_line(&v.to_string());
                } else {
                    conv.message(m, live);
                }
            }
        };
        // Said before the history: said after it, it would land in the middle of an answer
        // that is still streaming.
        ui.err_line(&ui.paint_err(
            DIM,
            &format!(
                "crushctl: following session {:?} ({}); Ctrl-C to stop",
                session.title,
                crate::ids::short(&session.session_id)
            ),
        ));
        let msgs = history(&client, &session.session_id, a.from_start, a.lines).await?;
        show(&mut conv, &msgs);
        // Messages up to here were shown or deliberately left out (`-n`): a resync must not
        // print them as if they were new.
        let shown_up_to = msgs.last().map(|m| m.seq).unwrap_or(0);
        // Connection notices wait for the end of a line of streamed text on a shared screen.
        let mut notices = Notices::default();
        loop {
            notices.flush(&ui);
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ClientEvent::Update(u)) if u.session_id == session.session_id => {
                        if a.json {
                            let mut v = serde_json::to_value(&u)?;
                            v["type"] = json!("event");
                            ui.out_line(&v.to_string());
                        } else {
                            conv.event(u.run_id.as_deref(), &u.event);
                        }
                    }
                    Some(ClientEvent::Resync(r)) if r.session_id == session.session_id => {
                        // Events were missed: the history since then, then the live stream.
                        let msgs = history(&client, &session.session_id, false, 50).await?;
                        for m in msgs.iter().filter(|m| a.json || m.seq > shown_up_to) {
                            let live = r
                                .streaming
                                .as_ref()
                                .filter(|s| s.message_id == m.message_id)
                                .map(|s| s.parts.as_slice());
                            if a.json {
                                let mut v = serde_json::to_value(m)?;
                                v["type"] = json!("message");
                                ui.out_line(&v.to_string());
                            } else {
                                // Only what was missed: the conversation remembers what it printed.
                                conv.message(m, live);
                            }
                        }
                    }
                    Some(ClientEvent::Disconnected { reason }) => notices.push(ui.paint_err(
                        YELLOW,
                        &format!("crushctl: lost the connection to crushd ({reason}); reconnecting"),
                    )),
                    Some(ClientEvent::Reconnected(_)) => {
                        notices.push(ui.paint_err(DIM, "crushctl: reconnected"))
                    }
                    Some(ClientEvent::SubscriptionLost { error, .. }) => {
                        return Err(Exit { code: EXIT_FAILED, message: format!("the session is gone: {}", g.plain(&error)) }.into());
                    }
                    Some(ClientEvent::GaveUp { error }) => {
                        return Err(Exit { code: EXIT_UNREACHABLE, message: error }.into());
                    }
                    Some(_) => {}
                    None => return Err(Exit { code: EXIT_UNREACHABLE, message: "the connection to crushd closed".to_owned() }.into()),
                },
                _ = crate::ui::wait_stdout_closed() => return Err(crate::ui::closed_error()),
                _ = interrupts.recv() => {
                    ui.end_line();
                    notices.flush(&ui);
                    return Ok(0);
                }
            }
        }
    }
    .await;
    leave(client).await;
    result
}

/// Notices about the connection. When stdout and stderr are one screen and a line of an answer
/// is still streaming, a notice printed now would split it; it waits until the line ends.
#[derive(Default)]
struct Notices(Vec<String>);

impl Notices {
    fn push(&mut self, line: String) {
        self.0.push(line);
    }

    fn flush(&mut self, ui: &Ui) {
        let shared_screen = ui.term.stdout_tty && ui.term.stderr_tty;
        if shared_screen && !ui.at_line_start() {
            return;
        }
        for line in self.0.drain(..) {
            ui.err_line(&line);
        }
    }
}
