//! `run`, `send`, `wait` and `cancel`: prompts and their runs.
//!
//! `run` subscribes to the session, sends with its own `runId` and follows only that run (and a
//! run it was steered into): events of other runs in the session, and permission prompts for
//! them, are left to their own clients. It is built on [`ReconnectingClient`], so a dropped
//! connection costs nothing: replayed events continue the text where it stopped, a resync is
//! bridged with the streaming snapshot and `session/messages`, and the run's outcome comes
//! exactly once; the text tracker prints every byte of the answer once whichever way it came.

use std::collections::{HashSet, VecDeque};
use std::io::{IsTerminal, Read};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crush_client::{
    ClientError, ClientEvent, OutcomeState, ReconnectingClient, Resync, RunOutcome,
};
use crush_protocol::{
    AgentCancelParams, AgentSendParams, ErrorCode, ImageInput, PermissionDecision,
    PermissionRequestParams, PermissionRequestResult, PermissionResolution,
    PermissionRespondParams, RunRef, RunState, SendMode, SessionCreateParams, SessionEvent,
    SessionInfo, SessionMessagesParams, SessionRef, SessionSetSandboxParams,
    SessionSubscribeParams, SessionUpdateParams, ToolStatus, WorkspaceInfo, request,
};

use crate::prompts::{PromptRequest, decided, permission_handler};
use crate::question;
use crate::render::{TextTracker, first_line, text_of, tool_summary};
use crate::ui::{DIM, GREEN, RED, Term, Ui, YELLOW};
use crate::{
    EXIT_CANCELLED, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, Exit, Global, PromptArgs, RunArgs,
    SendArgs, WorkspaceArg, get_session, leave, list_sessions, open_workspace, usage,
};

/// The prompt: piped stdin (if any), a blank line, then the words of the command line.
pub fn read_prompt(words: &[String]) -> anyhow::Result<String> {
    let arg = words.join(" ");
    let mut piped = String::new();
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        stdin
            .lock()
            .read_to_string(&mut piped)
            .map_err(|e| usage(format!("cannot read stdin: {e}")))?;
    }
    let prompt = match (piped.trim().is_empty(), arg.trim().is_empty()) {
        (true, true) => {
            return Err(usage(
                "no prompt: give it as an argument (`crushctl run \"…\"`) or on stdin",
            ));
        }
        (true, false) => arg,
        (false, true) => piped.trim_end().to_owned(),
        (false, false) => format!("{}\n\n{arg}", piped.trim_end()),
    };
    Ok(prompt)
}

/// The session `-s`/`-c` names (not created yet when it is to be new).
async fn existing_session(
    client: &ReconnectingClient,
    p: &PromptArgs,
    ws: &WorkspaceInfo,
) -> anyhow::Result<Option<SessionInfo>> {
    if let Some(id) = &p.session {
        return Ok(Some(get_session(client, id).await?));
    }
    if p.continue_ {
        return Ok(list_sessions(client, &ws.workspace_id)
            .await?
            .into_iter()
            .next());
    }
    Ok(None)
}

/// The session to send to, the model to send with, and whether the session was made for this
/// prompt (so it can be removed again if the prompt is refused).
async fn prepare(
    client: &ReconnectingClient,
    p: &PromptArgs,
    prompt: &str,
) -> anyhow::Result<(SessionInfo, Option<String>, bool)> {
    let ws = open_workspace(client, &p.ws).await?;
    let existing = existing_session(client, p, &ws).await?;
    let model = crate::model::choose(
        client,
        p.model.as_deref(),
        existing.as_ref().and_then(|s| s.model.as_deref()),
    )
    .await?;
    let (session, created) = match existing {
        Some(s) => (s, false),
        None => {
            // The daemon titles a new session from its prompt's first line. When stdin was
            // piped in front of the command-line words, those words say better what the
            // session is about than the first line of the piped text: name it after them.
            let words = p.prompt.join(" ");
            let title =
                (prompt != words && !words.trim().is_empty()).then(|| first_line(words.trim(), 60));
            let s = client
                .request::<request::SessionCreate>(SessionCreateParams {
                    workspace_id: ws.workspace_id.clone(),
                    title,
                    model: None,
                    yolo: false,
                })
                .await?;
            (s, true)
        }
    };
    if p.sandbox.is_some() || p.no_network {
        let st = client
            .request::<request::SessionSetSandbox>(SessionSetSandboxParams {
                session_id: session.session_id.clone(),
                mode: p.sandbox,
                network: p.no_network.then_some(false),
            })
            .await?;
        if let Some(w) = &st.warning {
            crate::errln!("crushctl: sandbox: {w}");
        }
    }
    Ok((session, model, created))
}

/// Sends; a refused prompt in a session made for it removes the session again. A model the
/// daemon cannot use is a configuration error (exit 2) whose message says what to do.
async fn send_prompt(
    client: &ReconnectingClient,
    params: AgentSendParams,
    created: bool,
) -> anyhow::Result<()> {
    let session_id = params.session_id.clone();
    match client.send(params).await {
        Ok(_) => Ok(()),
        Err(e) => {
            if created {
                let _ = client
                    .request::<request::SessionDelete>(SessionRef { session_id })
                    .await;
            }
            match e {
                ClientError::Rpc(r) if r.code == ErrorCode::ModelNotConfigured as i32 => {
                    let hint = crate::model::env_hint(client, &r.message)
                        .await
                        .map(|h| format!("\n{h}"))
                        .unwrap_or_default();
                    Err(Exit {
                        code: EXIT_USAGE,
                        message: format!(
                            "{}{hint}\n(`-m echo` runs the offline diagnostic model)",
                            r.message
                        ),
                    }
                    .into())
                }
                e => Err(e.into()),
            }
        }
    }
}

/// The `agent/send` of a prompt command (`run` and `send` share it).
fn send_params(
    p: &PromptArgs,
    session_id: &str,
    prompt: String,
    run_id: &str,
    model: Option<String>,
    images: Vec<ImageInput>,
) -> AgentSendParams {
    AgentSendParams {
        session_id: session_id.to_owned(),
        prompt,
        images,
        run_id: Some(run_id.to_owned()),
        mode: if p.steer {
            SendMode::Steer
        } else {
            SendMode::Queue
        },
        model,
        yolo: p.yolo,
        ..AgentSendParams::default()
    }
}

/// SIGINT (Ctrl-C), registered before anything is sent so that none is lost.
pub struct Interrupts {
    #[cfg(unix)]
    sig: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            sig: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?,
        })
    }

    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            self.sig.recv().await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub fn outcome_code(state: OutcomeState) -> u8 {
    match state {
        OutcomeState::Ended(RunState::Completed) => 0,
        OutcomeState::Ended(RunState::Cancelled) => EXIT_CANCELLED,
        _ => EXIT_FAILED,
    }
}

/// The terminal a permission question can be asked on, if any.
fn open_tty() -> Option<std::fs::File> {
    #[cfg(unix)]
    {
        std::fs::File::open("/dev/tty").ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

pub async fn run(g: &Global, a: RunArgs) -> anyhow::Result<u8> {
    let prompt = read_prompt(&a.p.prompt)?;
    let images = crate::images::load(&a.p.images)?;
    let term = Term::detect();
    let activity = term.stderr_tty && !a.quiet && !a.json;
    let ui = Ui::new(term, activity);
    let interactive = term.stderr_tty && open_tty().is_some();
    let interrupts = Interrupts::new()?;
    let run_id = uuid::Uuid::now_v7().to_string();
    let (prompt_tx, prompt_rx) = mpsc::unbounded_channel();
    let mut opts = g.options(true);
    opts.request_handler = Some(permission_handler(prompt_tx, "crushctl"));
    let client = g.reconnecting(opts).await?;
    let Some(events) = client.take_events() else {
        anyhow::bail!("the client's event stream was already taken");
    };
    let (session, model, created) = match prepare(&client, &a.p, &prompt).await {
        Ok(x) => x,
        Err(e) => {
            leave(client).await;
            return Err(e);
        }
    };
    let mut view = RunView {
        ui,
        json: a.json,
        activity,
        quiet: a.quiet,
        interactive,
        session_id: session.session_id.clone(),
        run_id: run_id.clone(),
        followed: HashSet::from([run_id.clone()]),
        text: TextTracker::default(),
        messages: Vec::new(),
        prompts: VecDeque::new(),
        asking: None,
        responding: false,
    };
    let result = async {
        client
            .subscribe(SessionSubscribeParams {
                session_id: session.session_id.clone(),
                after_seq: None,
                epoch: None,
            })
            .await?;
        if view.json {
            view.emit(
                json!({"type": JsonLine::Run, "sessionId": session.session_id, "runId": run_id,
                "workspaceId": session.workspace_id, "model": model}),
            );
        }
        view.ui.spin(Some("sending"));
        send_prompt(
            &client,
            send_params(&a.p, &session.session_id, prompt, &run_id, model, images),
            created,
        )
        .await?;
        view.ui.spin(Some("thinking"));
        view.follow(&client, events, prompt_rx, interrupts).await
    }
    .await;
    view.ui.spin(None);
    match result {
        // A second Ctrl-C: quit at once, without the polite goodbye.
        Ok(Flow::Quit) => Ok(EXIT_CANCELLED),
        Ok(Flow::Done(code)) => {
            leave(client).await;
            Ok(code)
        }
        Err(e) => {
            leave(client).await;
            Err(e)
        }
    }
}

enum Flow {
    Done(u8),
    Quit,
}

struct RunView {
    ui: Ui,
    json: bool,
    activity: bool,
    quiet: bool,
    interactive: bool,
    session_id: String,
    run_id: String,
    /// This run and a run it was steered into.
    followed: HashSet<String>,
    text: TextTracker,
    /// Assistant messages whose text was printed, in order.
    messages: Vec<String>,
    /// Permission questions waiting for the terminal.
    prompts: VecDeque<Question>,
    /// The question on the terminal now.
    asking: Option<Question>,
    /// An answer is on its way as `permission/respond`: the next question waits for its result.
    responding: bool,
}

/// A permission question for the terminal, and how its answer goes to the daemon.
type Question = (PermissionRequestParams, Answering);

enum Answering {
    /// As the reply to the daemon's `permission/request`.
    Reply(oneshot::Sender<PermissionRequestResult>),
    /// As a `permission/respond` request, whose error (a pattern the daemon refuses) comes back
    /// to us: the request was answered `deferred` already.
    Respond,
}

/// A `permission/respond` on its way, yielding its answer and what it answered.
type RespondFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Responding, Result<(), ClientError>)> + 'a>,
>;

/// An answer sent as `permission/respond`, with what to say once it is taken.
struct Responding {
    params: PermissionRequestParams,
    said: String,
    answer: PermissionRespondParams,
}

impl RunView {
    fn emit(&self, v: Value) {
        self.ui.out_line(&v.to_string());
    }

    fn notice(&self, sgr: &str, s: &str) {
        if !self.quiet && !self.json {
            self.ui
                .err_line(&self.ui.paint_err(sgr, &format!("crushctl: {s}")));
        }
    }

    fn activity_line(&self, sgr: &str, s: &str) {
        if self.activity {
            self.ui.err_line(&self.ui.paint_err(sgr, s));
        }
    }

    fn print_text(&mut self, message_id: &str, new: String) {
        if new.is_empty() {
            return;
        }
        if self.json {
            self.emit(
                json!({"type": JsonLine::Text, "runId": self.run_id, "messageId": message_id, "text": new}),
            );
            return;
        }
        if !self.messages.iter().any(|m| m == message_id) {
            // A later step's text starts on its own line.
            if !self.messages.is_empty() && !self.ui.at_line_start() {
                self.ui.out("\n");
            }
            self.messages.push(message_id.to_owned());
        }
        self.ui.out(&new);
    }

    async fn follow(
        &mut self,
        client: &ReconnectingClient,
        mut events: mpsc::UnboundedReceiver<ClientEvent>,
        mut prompts: mpsc::UnboundedReceiver<PromptRequest>,
        mut interrupts: Interrupts,
    ) -> anyhow::Result<Flow> {
        let (answers_tx, mut answers) = mpsc::unbounded_channel::<(String, String)>();
        let mut interrupted = 0;
        // The `permission/respond` in flight, if any (one at a time: the next question waits).
        let mut responding: Option<RespondFuture<'_>> = None;
        loop {
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else {
                        return Err(Exit { code: EXIT_UNREACHABLE, message: "the connection to crushd closed".to_owned() }.into());
                    };
                    if let Some(code) = self.event(client, ev).await? {
                        return Ok(Flow::Done(code));
                    }
                }
                Some(p) = prompts.recv() => self.permission(p, &answers_tx),
                Some((request_id, line)) = answers.recv() => {
                    if let Some(r) = self.answered(&request_id, &line, &answers_tx) {
                        responding = Some(Box::pin(async move {
                            let result = client.request::<request::PermissionRespond>(r.answer.clone()).await;
                            (r, result.map(|_| ()))
                        }));
                    }
                }
                (r, result) = async {
                    match responding.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if responding.is_some() => {
                    responding = None;
                    self.responded(r, result, &answers_tx);
                }
                _ = crate::ui::wait_stdout_closed() => {
                    // Nobody reads the answer any more (`| head`): cancel this run only, as
                    // Ctrl-C would, and end at once with the status of a closed pipe.
                    self.ui.spin(None);
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        client.request::<request::AgentCancel>(AgentCancelParams {
                            session_id: self.session_id.clone(),
                            run_id: Some(self.run_id.clone()),
                        }),
                    )
                    .await;
                    return Ok(Flow::Done(crate::ui::EXIT_PIPE));
                }
                _ = interrupts.recv() => {
                    interrupted += 1;
                    if interrupted > 1 {
                        self.ui.spin(None);
                        self.ui.err_line("crushctl: quit without waiting for the run to end");
                        return Ok(Flow::Quit);
                    }
                    self.ui.err_line(&self.ui.paint_err(YELLOW, "crushctl: cancelling the run (Ctrl-C again to quit at once)"));
                    self.ui.spin(Some("cancelling"));
                    client
                        .request::<request::AgentCancel>(AgentCancelParams {
                            session_id: self.session_id.clone(),
                            // Only this run: other clients' runs in the session go on.
                            run_id: Some(self.run_id.clone()),
                        })
                        .await?;
                }
            }
        }
    }

    /// One event; `Some(exit code)` when the run has ended.
    async fn event(
        &mut self,
        client: &ReconnectingClient,
        ev: ClientEvent,
    ) -> anyhow::Result<Option<u8>> {
        match ev {
            ClientEvent::Update(u) => self.update(u),
            ClientEvent::Resync(r) if r.session_id == self.session_id => {
                self.resync(client, r).await?
            }
            ClientEvent::RunOutcome(o) if o.run_id == self.run_id => {
                return Ok(Some(self.outcome(o)));
            }
            ClientEvent::Disconnected { reason } => {
                self.notice(
                    YELLOW,
                    &format!("lost the connection to crushd ({reason}); reconnecting"),
                );
                if self.json {
                    self.emit(json!({"type": JsonLine::Disconnected, "reason": reason}));
                }
            }
            ClientEvent::Reconnected(r) => {
                self.notice(DIM, "reconnected to crushd");
                if self.json {
                    self.emit(
                        json!({"type": JsonLine::Reconnected, "daemonRestarted": r.epoch_changed}),
                    );
                }
            }
            ClientEvent::GaveUp { error } => {
                return Err(Exit {
                    code: EXIT_UNREACHABLE,
                    message: error,
                }
                .into());
            }
            ClientEvent::SubscriptionLost { session_id, error }
                if session_id == self.session_id =>
            {
                return Err(Exit {
                    code: EXIT_FAILED,
                    message: format!("lost the session: {error}"),
                }
                .into());
            }
            _ => {}
        }
        Ok(None)
    }

    fn update(&mut self, u: SessionUpdateParams) {
        let Some(run) = u.run_id.as_deref() else {
            return;
        };
        if u.session_id != self.session_id || !self.followed.contains(run) {
            return;
        }
        let run = run.to_owned();
        match u.event {
            SessionEvent::AssistantStarted { message_id, .. } => self.text.started(&message_id),
            SessionEvent::TextDelta { message_id, text } => {
                let new = self.text.delta(&message_id, &text);
                self.print_text(&message_id, new);
            }
            SessionEvent::ReasoningDelta { message_id, text } => {
                if self.json {
                    self.emit(json!({"type": JsonLine::Reasoning, "runId": run, "messageId": message_id, "text": text}));
                }
            }
            SessionEvent::ToolCallStarted {
                tool,
                tool_call_id,
                input,
                ..
            } => {
                if self.json {
                    self.emit(json!({"type": JsonLine::ToolCall, "runId": run, "toolCallId": tool_call_id, "tool": tool, "input": input}));
                }
                self.activity_line(DIM, &format!("⚙ {}", tool_summary(&tool, &input)));
                self.ui.spin(Some(&format!("running {tool}")));
            }
            SessionEvent::ToolCallFinished {
                tool,
                tool_call_id,
                status,
                output,
                ..
            } => {
                if self.json {
                    self.emit(json!({"type": JsonLine::ToolResult, "runId": run, "toolCallId": tool_call_id, "tool": tool, "status": status, "output": output}));
                }
                if status == ToolStatus::Completed {
                    self.activity_line(GREEN, &format!("  ✓ {tool}"));
                } else {
                    self.activity_line(
                        RED,
                        &format!("  ✗ {tool} {status}: {}", first_line(&output, 100)),
                    );
                }
                self.ui.spin(Some("thinking"));
            }
            SessionEvent::RunQueued { position, .. } => {
                if self.json {
                    self.emit(
                        json!({"type": JsonLine::Queued, "runId": run, "position": position}),
                    );
                }
                self.ui.spin(Some(&format!(
                    "queued behind {} run(s) of this session",
                    position + 1
                )));
            }
            SessionEvent::RunFolded { into } => {
                if self.json {
                    self.emit(json!({"type": JsonLine::Folded, "runId": run, "into": into}));
                }
                self.followed.insert(into);
            }
            SessionEvent::RunStarted => self.ui.spin(Some("thinking")),
            SessionEvent::Retrying {
                attempt,
                max_attempts,
                delay_ms,
                error,
            } => {
                if self.json {
                    self.emit(json!({"type": JsonLine::Retrying, "runId": run, "attempt": attempt, "maxAttempts": max_attempts, "delayMs": delay_ms, "error": error}));
                }
                let line = crate::render::retry_line(attempt, max_attempts, delay_ms, &error);
                self.activity_line(YELLOW, &line);
                // A sign of life while it waits (short: a spinner line must not wrap).
                self.ui.spin(Some(&format!(
                    "retrying {attempt}/{max_attempts} in {}",
                    crate::render::human_delay(delay_ms)
                )));
            }
            SessionEvent::PermissionResolved {
                request_id,
                decision,
                by,
            } => self.resolved_elsewhere(&request_id, decision, &by),
            SessionEvent::UserMessage { .. }
            | SessionEvent::CancelRequested { .. }
            | SessionEvent::PermissionRequested { .. }
            | SessionEvent::RunFinished { .. }
            | SessionEvent::MessageFinished { .. }
            | SessionEvent::SessionUpdated { .. }
            | SessionEvent::Forked { .. }
            | SessionEvent::Reverted { .. }
            | SessionEvent::Unreverted { .. } => {}
            SessionEvent::Compacted {
                summary_message_id: Some(id),
                tokens_before,
                tokens_after,
                ..
            } => {
                if self.json {
                    self.emit(
                        json!({"type": JsonLine::Compacted, "runId": run, "summaryMessageId": id,
                        "tokensBefore": tokens_before, "tokensAfter": tokens_after}),
                    );
                }
                self.activity_line(DIM, "≡ older messages summarised to fit the context window");
            }
            SessionEvent::Compacted { .. } => {}
        }
    }

    /// Events were missed: print what of this run's text was not printed yet, from the stored
    /// messages and the streaming snapshot.
    async fn resync(&mut self, client: &ReconnectingClient, r: Resync) -> anyhow::Result<()> {
        let page = client
            .request::<request::SessionMessages>(SessionMessagesParams {
                session_id: self.session_id.clone(),
                before: None,
                limit: Some(200),
            })
            .await?;
        let streaming_id = r.streaming.as_ref().map(|s| s.message_id.clone());
        for m in page.messages {
            let ours = m
                .run_id
                .as_deref()
                .is_some_and(|id| self.followed.contains(id));
            // The stored copy of the streaming message may lag behind: the snapshot wins.
            if ours && m.role == "assistant" && Some(&m.message_id) != streaming_id.as_ref() {
                let new = self.text.snapshot(&m.message_id, &text_of(&m.parts));
                self.print_text(&m.message_id, new);
            }
        }
        if let Some(s) = r.streaming
            && s.run_id
                .as_deref()
                .is_some_and(|id| self.followed.contains(id))
        {
            let new = self.text.snapshot(&s.message_id, &text_of(&s.parts));
            self.print_text(&s.message_id, new);
        }
        Ok(())
    }

    fn outcome(&mut self, o: RunOutcome) -> u8 {
        self.ui.spin(None);
        if let (Some(mid), Some(text)) = (&o.message_id, &o.text) {
            let new = self.text.snapshot(mid, text);
            self.print_text(mid, new);
        }
        let code = outcome_code(o.state);
        if self.json {
            self.emit(result_json(&o));
            return code;
        }
        self.ui.end_line();
        // On a terminal only: a pipe gets the answer and nothing else.
        if self.activity
            && let Some(u) = &o.usage
        {
            self.ui
                .err_line(&self.ui.paint_err(DIM, &crate::render::usage_line(u)));
        }
        match o.state {
            OutcomeState::Ended(RunState::Completed) => {}
            OutcomeState::Ended(RunState::Cancelled) => self
                .ui
                .err_line(&self.ui.paint_err(YELLOW, "crushctl: the run was cancelled")),
            state => {
                let why = o.error.unwrap_or_else(|| "no reason given".to_owned());
                self.ui.err_line(
                    &self
                        .ui
                        .paint_err(RED, &format!("crushctl: run {state}: {why}")),
                );
            }
        }
        code
    }

    /// A permission request: ask on the terminal, or deny and say so.
    fn permission(&mut self, p: PromptRequest, answers: &mpsc::UnboundedSender<(String, String)>) {
        let (params, reply) = p;
        if !self.followed.contains(&params.run_id) || params.session_id != self.session_id {
            // Another client's run: its own clients answer.
            let _ = reply.send(decided(PermissionDecision::Deferred));
            return;
        }
        if !self.interactive {
            let _ = reply.send(decided(PermissionDecision::Deny));
            if self.json {
                self.emit(json!({"type": JsonLine::Permission, "runId": params.run_id, "tool": params.tool,
                    "title": params.title, "decision": PermissionDecision::Deny, "reason": "not a terminal; pass --yolo to allow tool calls"}));
            }
            // Said even with --quiet: an action the user asked for was not done.
            self.ui.err_line(&self.ui.paint_err(
                YELLOW,
                &format!(
                    "crushctl: denied {:?} ({}): nobody can be asked without a terminal; pass --yolo to allow tool calls without asking",
                    params.title, params.tool
                ),
            ));
            return;
        }
        self.prompts.push_back((params, Answering::Reply(reply)));
        self.next_question(answers);
    }

    fn next_question(&mut self, answers: &mpsc::UnboundedSender<(String, String)>) {
        if self.asking.is_some() || self.responding {
            return;
        }
        let Some((params, how)) = self.prompts.pop_front() else {
            return;
        };
        if let Some(diff) = &params.diff {
            self.ui.err_line(&self.ui.paint_err(DIM, diff.trim_end()));
        }
        if let Some(e) = &params.escalation {
            // A second question about a call that already ran confined: say what was refused.
            self.ui.err_line(&self.ui.paint_err(
                DIM,
                &format!("the sandbox ({}) refused: {}", e.mode, e.refused.join("; ")),
            ));
        }
        self.ui.ask(&format!(
            "{} {}\n{}",
            self.ui.paint_err(YELLOW, "permission:"),
            params.title,
            question::choices(&params)
        ));
        let id = params.request_id.clone();
        let tx = answers.clone();
        // A terminal read cannot be cancelled; if the question is answered elsewhere first, the
        // line typed later is discarded.
        std::thread::spawn(move || {
            let mut line = String::new();
            if let Some(tty) = open_tty() {
                let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(tty), &mut line);
            }
            let _ = tx.send((id, line));
        });
        self.asking = Some((params, how));
    }

    /// A line typed for the question with `request_id`. An answer with the user's own rule
    /// pattern goes as `permission/respond` (returned for the caller to send), so that a
    /// pattern the daemon refuses is said and the question asked again.
    fn answered(
        &mut self,
        request_id: &str,
        line: &str,
        answers: &mpsc::UnboundedSender<(String, String)>,
    ) -> Option<Responding> {
        if self
            .asking
            .as_ref()
            .is_none_or(|(p, _)| p.request_id != request_id)
        {
            return None;
        }
        let (params, how) = self.asking.take()?;
        let (answer, said) = question::answer(&params, line);
        let how = match how {
            Answering::Reply(reply) if answer.pattern.is_some() => {
                let _ = reply.send(decided(PermissionDecision::Deferred));
                Answering::Respond
            }
            how => how,
        };
        match how {
            Answering::Reply(reply) => {
                let decision = answer.decision;
                let _ = reply.send(answer);
                self.said(decision, &said, &params.title);
                self.next_question(answers);
                None
            }
            Answering::Respond => {
                self.responding = true;
                let answer = PermissionRespondParams {
                    request_id: params.request_id.clone(),
                    decision: answer.decision,
                    scope: answer.scope,
                    pattern: answer.pattern,
                };
                Some(Responding {
                    params,
                    said,
                    answer,
                })
            }
        }
    }

    /// The daemon's answer to a `permission/respond`: taken, or refused (a bad pattern: said,
    /// and the question asked again; resolved meanwhile by another client: said).
    fn responded(
        &mut self,
        r: Responding,
        result: Result<(), ClientError>,
        answers: &mpsc::UnboundedSender<(String, String)>,
    ) {
        self.responding = false;
        match result {
            Ok(()) => self.said(r.answer.decision, &r.said, &r.params.title),
            Err(ClientError::Rpc(e)) if e.code == ErrorCode::InvalidParams.code() => {
                self.ui
                    .err_line(&self.ui.paint_err(RED, &format!("  {}", e.message)));
                self.prompts.push_front((r.params, Answering::Respond));
            }
            Err(e) => self.ui.err_line(
                &self
                    .ui
                    .paint_err(YELLOW, &format!("  {}: not answered: {e}", r.params.title)),
            ),
        }
        self.next_question(answers);
    }

    /// Says what the terminal's answer did.
    fn said(&self, decision: PermissionDecision, said: &str, title: &str) {
        let sgr = if decision == PermissionDecision::Deny {
            RED
        } else {
            GREEN
        };
        self.ui
            .err_line(&self.ui.paint_err(sgr, &format!("  {said}: {title}")));
        self.ui.spin(Some("thinking"));
    }

    fn resolved_elsewhere(&mut self, request_id: &str, decision: PermissionResolution, by: &str) {
        if by == crate::client_name() {
            return;
        }
        if self
            .asking
            .as_ref()
            .is_some_and(|(p, _)| p.request_id == request_id)
            && let Some((params, how)) = self.asking.take()
        {
            if let Answering::Reply(reply) = how {
                let _ = reply.send(decided(PermissionDecision::Deferred));
            }
            self.ui.err_line("");
            self.ui.err_line(&self.ui.paint_err(
                DIM,
                &format!(
                    "  {}: {}",
                    params.title,
                    crate::render::resolution(decision, by)
                ),
            ));
        }
        self.prompts.retain(|(p, _)| p.request_id != request_id);
    }
}

pub async fn send(g: &Global, a: SendArgs) -> anyhow::Result<u8> {
    let prompt = read_prompt(&a.p.prompt)?;
    let images = crate::images::load(&a.p.images)?;
    let client = g.reconnecting(g.options(true)).await?;
    let result = async {
        let (session, model, created) = prepare(&client, &a.p, &prompt).await?;
        let run_id = uuid::Uuid::now_v7().to_string();
        send_prompt(
            &client,
            send_params(&a.p, &session.session_id, prompt, &run_id, model, images),
            created,
        )
        .await?;
        if a.json {
            crate::outln!(
                "{}",
                json!({"runId": run_id, "sessionId": session.session_id})
            )?;
        } else {
            crate::outln!("{run_id}")?;
        }
        Ok(0)
    }
    .await;
    leave(client).await;
    result
}

/// The kinds of line `--json` writes (docs/cli.md, "`--json` shapes"): crushctl's own output
/// vocabulary, spelled once. Each line stays a `json!` object, so its keys keep their order.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
enum JsonLine {
    Run,
    Text,
    Disconnected,
    Reconnected,
    Reasoning,
    ToolCall,
    ToolResult,
    Queued,
    Folded,
    Retrying,
    Compacted,
    Permission,
    Result,
}

/// The `--json` line of a run's outcome; `usage` only when the daemon reported it.
fn result_json(o: &RunOutcome) -> Value {
    let mut v = json!({"type": JsonLine::Result, "sessionId": o.session_id, "runId": o.run_id,
        "state": o.state, "text": o.text, "error": o.error});
    if let Some(u) = &o.usage {
        v["usage"] = json!(u);
    }
    v
}

pub async fn wait(g: &Global, run_id: &str, json_out: bool) -> anyhow::Result<u8> {
    let client = g.reconnecting(g.options(true)).await?;
    let Some(mut events) = client.take_events() else {
        anyhow::bail!("the client's event stream was already taken");
    };
    let mut interrupts = Interrupts::new()?;
    let result = async {
        let run_id = crate::ids::run(&client, run_id).await?;
        let run_id = run_id.as_str();
        client.watch_run(run_id).await?;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ClientEvent::RunOutcome(o)) if o.run_id == run_id => {
                        let code = outcome_code(o.state);
                        if json_out {
                            crate::outln!("{}", result_json(&o))?;
                        } else {
                            if let Some(t) = &o.text {
                                crate::ui::write_out(format_args!("{t}"))?;
                                if !t.ends_with('\n') {
                                    crate::outln!()?;
                                }
                            }
                            match o.state {
                                OutcomeState::Ended(RunState::Completed) => {}
                                OutcomeState::Ended(RunState::Cancelled) => crate::errln!("crushctl: the run was cancelled"),
                                s => crate::errln!("crushctl: run {s}: {}", o.error.as_deref().unwrap_or("no reason given")),
                            }
                        }
                        return Ok(code);
                    }
                    Some(ClientEvent::GaveUp { error }) => {
                        return Err(Exit { code: EXIT_UNREACHABLE, message: error }.into());
                    }
                    Some(_) => {}
                    None => return Err(Exit { code: EXIT_UNREACHABLE, message: "the connection to crushd closed".to_owned() }.into()),
                },
                _ = interrupts.recv() => return Ok(EXIT_CANCELLED),
            }
        }
    }
    .await;
    leave(client).await;
    result
}

pub async fn cancel(
    g: &Global,
    session: Option<String>,
    run: Option<String>,
    ws: &WorkspaceArg,
) -> anyhow::Result<u8> {
    let client = g.reconnecting(g.options(true)).await?;
    let result = async {
        let run = match run {
            Some(r) => Some(crate::ids::run(&client, &r).await?),
            None => None,
        };
        let session_id = match (session, &run) {
            (Some(id), _) => get_session(&client, &id).await?.session_id,
            // The run knows its session.
            (None, Some(run_id)) => {
                client
                    .request::<request::RunGet>(RunRef {
                        run_id: run_id.clone(),
                    })
                    .await?
                    .session_id
            }
            (None, None) => {
                let w = open_workspace(&client, ws).await?;
                match w.busy_sessions.as_slice() {
                    [one] => one.session_id.clone(),
                    [] => match list_sessions(&client, &w.workspace_id).await?.first() {
                        Some(s) => s.session_id.clone(),
                        None => return Err(usage(format!("no session in {}", w.path))),
                    },
                    many => {
                        let ids: Vec<&str> = many.iter().map(|b| b.session_id.as_str()).collect();
                        return Err(usage(format!(
                            "several sessions of {} are busy; name one: {}",
                            w.path,
                            ids.join(", ")
                        )));
                    }
                }
            }
        };
        let r = client
            .request::<request::AgentCancel>(AgentCancelParams {
                session_id: session_id.clone(),
                run_id: run.clone(),
            })
            .await?;
        if r.cancelled.is_empty() {
            match &run {
                Some(run_id) => crate::outln!("nothing to cancel: run {run_id} has already ended")?,
                None => crate::outln!("nothing to cancel in session {session_id}")?,
            }
        } else {
            crate::outln!("cancelled {}", r.cancelled.join(", "))?;
        }
        Ok(0)
    }
    .await;
    leave(client).await;
    result
}
