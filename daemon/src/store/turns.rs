//! Runs and the writes of their turns: the run row, and each write of a turn (start, step
//! boundary, end, or an end without a turn) as one transaction with the messages it adds.

use crush_protocol::{FinishReason, RunState, RunStopReason};
use sqlx::SqliteConnection;

use super::messages::insert_message_in;
use super::{MessageRow, NewMessage, Result, Store, WriteTx, new_id, now_ms, pieces};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunRow {
    pub(crate) run_id: String,
    pub(crate) session_id: String,
    pub(crate) state: String,
    pub(crate) prompt: String,
    pub(crate) error: Option<String>,
    pub(crate) user_message_id: Option<String>,
    pub(crate) assistant_message_id: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
    pub(crate) folded_into: Option<String>,
    /// The turn's tokens and cost, once it ended (see the migration `0005_usage.sql`).
    pub(crate) input_tokens: Option<i64>,
    pub(crate) output_tokens: Option<i64>,
    pub(crate) cached_tokens: Option<i64>,
    pub(crate) reasoning_tokens: Option<i64>,
    pub(crate) cost: Option<f64>,
    /// `RunStopReason`'s name, when a limit stopped the run (`0010_run_stop_reason.sql`).
    pub(crate) stop_reason: Option<String>,
}

impl Store {
    // ---- runs ----

    pub(crate) async fn get_run(&self, run_id: &str) -> Result<Option<RunRow>> {
        Ok(sqlx::query_as!(
            RunRow,
            "SELECT run_id, session_id, state, prompt, error, user_message_id, assistant_message_id,
                    created_at, started_at, finished_at, folded_into,
                    input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost, stop_reason
             FROM runs WHERE run_id = ?",
            run_id
        )
        .fetch_optional(self.pool())
        .await?)
    }

    // ---- turns: the writes of a run, each one transaction ----

    /// Deletes the row of a run accepted but then refused before it was admitted. A run that
    /// already moved past `accepted` is left alone.
    pub(crate) async fn withdraw_accept(&self, run_id: &str) -> Result<()> {
        sqlx::query!(
            "DELETE FROM runs WHERE run_id = ? AND state = 'accepted'",
            run_id
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Starts a turn: the run's user message, the empty assistant message it streams into, the
    /// run row marked running, and the session titled from the prompt if it still has the
    /// default title nobody chose, in one transaction.
    pub async fn start_turn(&self, t: &StartTurn<'_>) -> Result<StartedTurn> {
        let now = now_ms();
        let mut tx = WriteTx::begin(self.pool()).await?;
        let user = insert_message_in(
            &mut tx,
            &new_id(),
            &NewMessage {
                session_id: t.session_id,
                run_id: Some(t.run_id),
                role: "user",
                parts: t.user_parts,
                model: None,
                provider: None,
            },
            now,
        )
        .await?;
        let assistant = insert_message_in(
            &mut tx,
            &new_id(),
            &NewMessage {
                session_id: t.session_id,
                run_id: Some(t.run_id),
                role: "assistant",
                parts: "[]",
                model: Some(t.model),
                provider: Some(t.provider),
            },
            now,
        )
        .await?;
        upsert_running_run(
            &mut tx,
            t.run_id,
            t.session_id,
            t.prompt,
            &user.id,
            &assistant.id,
            None,
            now,
        )
        .await?;
        let titled =
            match t.title {
                Some(title) => sqlx::query!(
                    "UPDATE sessions SET title = ?, auto_title = 0 WHERE id = ? AND auto_title = 1",
                    title,
                    t.session_id
                )
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    > 0,
                None => false,
            };
        // A prompt after a revert makes it final.
        super::reverts::finalize_reverts_in(&mut tx, t.session_id).await?;
        tx.commit().await?;
        Ok(StartedTurn {
            user,
            assistant,
            titled,
        })
    }

    /// A further step of a turn, in one transaction: the previous assistant message finished,
    /// the step's tool results as a `tool` message, the user messages of steered runs folded in
    /// (their run rows marked running and `folded_into` the turn's run), then a new empty
    /// assistant message.
    pub(crate) async fn add_step(&self, n: &NextStep<'_>) -> Result<(Vec<MessageRow>, MessageRow)> {
        let now = now_ms();
        let mut tx = WriteTx::begin(self.pool()).await?;
        sqlx::query!(
            "UPDATE messages SET parts = ?, finish_reason = ?, error = ?, updated_at = ?, finished_at = ?
                 WHERE id = ?",
            n.previous_parts,
            n.previous_finish.as_str(),
            None::<String>,
            now,
            now,
            n.previous_id
        )
        .execute(&mut *tx)
        .await?;
        pieces::delete_pieces_in(&mut tx, n.previous_id).await?;
        if let Some(results) = n.tool_results {
            insert_message_in(
                &mut tx,
                &new_id(),
                &NewMessage {
                    session_id: n.session_id,
                    run_id: Some(n.run_id),
                    role: "tool",
                    parts: results,
                    model: None,
                    provider: None,
                },
                now,
            )
            .await?;
        }
        let mut users = Vec::with_capacity(n.folded.len());
        for f in n.folded {
            let user = insert_message_in(
                &mut tx,
                &new_id(),
                &NewMessage {
                    session_id: n.session_id,
                    run_id: Some(f.run_id),
                    role: "user",
                    parts: f.user_parts,
                    model: None,
                    provider: None,
                },
                now,
            )
            .await?;
            users.push(user);
        }
        let assistant = insert_message_in(
            &mut tx,
            &new_id(),
            &NewMessage {
                session_id: n.session_id,
                run_id: Some(n.run_id),
                role: "assistant",
                parts: "[]",
                model: Some(n.model),
                provider: Some(n.provider),
            },
            now,
        )
        .await?;
        for (f, user) in n.folded.iter().zip(&users) {
            upsert_running_run(
                &mut tx,
                f.run_id,
                n.session_id,
                f.prompt,
                &user.id,
                &assistant.id,
                Some(n.run_id),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok((users, assistant))
    }

    /// Ends a turn: the last assistant message's final parts and finish reason, the terminal
    /// state of every run that took part, the turn's usage on its own run (the first of
    /// `run_ids`) and added to the session's, in one transaction.
    pub async fn finish_turn(&self, f: &FinishTurn<'_>) -> Result<()> {
        let now = now_ms();
        let mut tx = WriteTx::begin(self.pool()).await?;
        if let Some(id) = f.message_id {
            sqlx::query!(
                "UPDATE messages SET parts = ?, finish_reason = ?, error = ?, updated_at = ?, finished_at = ?
                 WHERE id = ?",
                f.parts,
                f.finish_reason.as_str(),
                f.error,
                now,
                now,
                id
            )
            .execute(&mut *tx)
            .await?;
            pieces::delete_pieces_in(&mut tx, id).await?;
        }
        let u = &f.usage;
        let stop_reason = f.stop_reason.map(RunStopReason::as_str);
        if let Some((run_id, folded)) = f.run_ids.split_first() {
            sqlx::query!(
                "UPDATE runs SET state = ?, error = ?, stop_reason = ?, finished_at = ?,
                        assistant_message_id = COALESCE(?, assistant_message_id),
                        input_tokens = ?, output_tokens = ?, cached_tokens = ?,
                        reasoning_tokens = ?, cost = ?
                 WHERE run_id = ?",
                f.run_state.as_str(),
                f.error,
                stop_reason,
                now,
                f.message_id,
                u.input_tokens,
                u.output_tokens,
                u.cached_tokens,
                u.reasoning_tokens,
                u.cost,
                run_id
            )
            .execute(&mut *tx)
            .await?;
            for run_id in folded {
                sqlx::query!(
                    "UPDATE runs SET state = ?, error = ?, stop_reason = ?, finished_at = ?,
                            assistant_message_id = COALESCE(?, assistant_message_id)
                     WHERE run_id = ?",
                    f.run_state.as_str(),
                    f.error,
                    stop_reason,
                    now,
                    f.message_id,
                    run_id
                )
                .execute(&mut *tx)
                .await?;
            }
        }
        add_session_usage_in(&mut tx, f.session_id, u, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records how runs ended that have no turn to finish: prompts dropped before they ran (a
    /// cancel cleared the queue), or runs that failed before their first write. A run that
    /// already reached a terminal state keeps it.
    pub(crate) async fn record_run_ends(&self, runs: &[RunEnd<'_>]) -> Result<()> {
        let now = now_ms();
        let mut tx = WriteTx::begin(self.pool()).await?;
        for r in runs {
            sqlx::query!(
                "INSERT INTO runs (run_id, session_id, state, prompt, error, created_at, finished_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(run_id) DO UPDATE SET state = excluded.state, error = excluded.error,
                        finished_at = excluded.finished_at
                 WHERE runs.state IN ('accepted', 'queued', 'running')",
                r.run_id,
                r.session_id,
                r.state.as_str(),
                r.prompt,
                r.error,
                now,
                now
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The first write of a turn.
#[derive(Debug, Clone)]
pub struct StartTurn<'a> {
    pub run_id: &'a str,
    pub session_id: &'a str,
    pub prompt: &'a str,
    /// JSON array of the user message's parts.
    pub user_parts: &'a str,
    pub model: &'a str,
    pub provider: &'a str,
    /// The session's title if it still has the default one nobody chose.
    pub title: Option<&'a str>,
}

/// What the first write of a turn added.
#[derive(Debug, Clone)]
pub struct StartedTurn {
    pub user: MessageRow,
    pub assistant: MessageRow,
    /// The session took the title `StartTurn::title`.
    pub titled: bool,
}

/// A steered prompt joining a turn.
#[derive(Debug, Clone)]
pub(crate) struct FoldedPrompt<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) prompt: &'a str,
    pub(crate) user_parts: &'a str,
}

/// The boundary between two model steps of a turn.
#[derive(Debug, Clone)]
pub(crate) struct NextStep<'a> {
    pub(crate) session_id: &'a str,
    pub(crate) run_id: &'a str,
    /// The assistant message of the step that ended, with its final parts.
    pub(crate) previous_id: &'a str,
    pub(crate) previous_parts: &'a str,
    pub(crate) previous_finish: FinishReason,
    /// JSON array of the step's tool results, if it called tools.
    pub(crate) tool_results: Option<&'a str>,
    pub(crate) folded: &'a [FoldedPrompt<'a>],
    pub(crate) model: &'a str,
    pub(crate) provider: &'a str,
}

/// The last write of a turn.
#[derive(Debug, Clone)]
pub struct FinishTurn<'a> {
    pub session_id: &'a str,
    /// The turn's last assistant message, if one was started.
    pub message_id: Option<&'a str>,
    pub parts: &'a str,
    pub finish_reason: FinishReason,
    pub error: Option<&'a str>,
    /// `completed`, `cancelled` or `failed`.
    pub run_state: RunState,
    /// The daemon's limit that ended the turn, if one did.
    pub stop_reason: Option<RunStopReason>,
    /// The turn's run and the runs folded into it.
    pub run_ids: &'a [&'a str],
    pub usage: TurnUsage,
}

/// A turn's tokens, summed over its steps, and their cost (`None`: the price is unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TurnUsage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: Option<f64>,
}

/// How a run without a turn to finish ended (see [`Store::record_run_ends`]).
#[derive(Debug, Clone)]
pub(crate) struct RunEnd<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) session_id: &'a str,
    pub(crate) prompt: &'a str,
    /// `cancelled` or `failed`.
    pub(crate) state: RunState,
    pub(crate) error: Option<&'a str>,
}

/// Marks a run running with its turn's messages. Its accepted `user_parts` are dropped: the
/// user message holds them now, and they were kept only for a crash before this point (with an
/// image prompt they are megabytes).
#[allow(clippy::too_many_arguments)]
async fn upsert_running_run(
    tx: &mut SqliteConnection,
    run_id: &str,
    session_id: &str,
    prompt: &str,
    user_message_id: &str,
    assistant_message_id: &str,
    folded_into: Option<&str>,
    now: i64,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO runs (run_id, session_id, state, prompt, user_message_id, assistant_message_id,
                           created_at, started_at, folded_into)
         VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)
         ON CONFLICT(run_id) DO UPDATE SET state = 'running', started_at = excluded.started_at,
                user_message_id = excluded.user_message_id, user_parts = NULL,
                assistant_message_id = excluded.assistant_message_id,
                folded_into = excluded.folded_into
         WHERE runs.state IN ('accepted', 'queued')",
        run_id,
        session_id,
        prompt,
        user_message_id,
        assistant_message_id,
        now,
        now,
        folded_into
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Adds tokens a session spent to its totals (tokens without a price leave its total cost
/// unknown).
pub(super) async fn add_session_usage_in(
    tx: &mut SqliteConnection,
    session_id: &str,
    u: &TurnUsage,
    now: i64,
) -> Result<()> {
    if u.input_tokens == 0 && u.output_tokens == 0 {
        return Ok(());
    }
    let unpriced = if u.cost.is_none() {
        u.input_tokens + u.output_tokens
    } else {
        0
    };
    let cost = u.cost.unwrap_or(0.0);
    sqlx::query!(
        "UPDATE sessions SET prompt_tokens = prompt_tokens + ?, completion_tokens = completion_tokens + ?,
                cached_tokens = cached_tokens + ?, reasoning_tokens = reasoning_tokens + ?,
                cost = cost + ?, unpriced_tokens = unpriced_tokens + ?,
                updated_at = ? WHERE id = ?",
        u.input_tokens,
        u.output_tokens,
        u.cached_tokens,
        u.reasoning_tokens,
        cost,
        unpriced,
        now,
        session_id
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}
