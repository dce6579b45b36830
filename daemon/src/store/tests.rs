#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn migrates_an_empty_file_and_uses_wal() {
    let (_d, store) = temp_store().await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(fk, 1);
}

#[tokio::test]
async fn workspaces_are_unique_by_path_and_refreshed() {
    let (_d, store) = temp_store().await;
    let a = store.open_workspace("/p/a").await.unwrap();
    let again = store.open_workspace("/p/a").await.unwrap();
    assert_eq!(a.id, again.id);
    assert!(again.last_opened_at >= a.last_opened_at);
    store.open_workspace("/p/b").await.unwrap();
    assert_eq!(store.list_workspaces().await.unwrap().len(), 2);
    assert_eq!(
        store.get_workspace(&a.id).await.unwrap().unwrap().path,
        "/p/a"
    );
    assert!(store.get_workspace("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn sessions_crud_and_cascade_delete() {
    let (_d, store) = temp_store().await;
    let ws = store.open_workspace("/p").await.unwrap();
    let s = store
        .create_session(&ws.id, "first", Some("echo"))
        .await
        .unwrap();
    assert_eq!(store.get_session(&s.id).await.unwrap().unwrap(), s);
    let renamed = store
        .rename_session(&s.id, "renamed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.title, "renamed");
    assert!(
        store
            .rename_session("missing", "x")
            .await
            .unwrap()
            .is_none()
    );
    let m = store
        .insert_message(NewMessage {
            session_id: &s.id,
            role: "user",
            parts: "[]",
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(store.accept_run(new_run("r1", &s.id)).await.unwrap());
    assert_eq!(
        store
            .get_session(&s.id)
            .await
            .unwrap()
            .unwrap()
            .message_count,
        1
    );
    assert!(store.delete_session(&s.id).await.unwrap());
    assert!(!store.delete_session(&s.id).await.unwrap());
    assert!(
        store.get_message(&m.id).await.unwrap().is_none(),
        "messages cascade"
    );
    assert!(store.get_run("r1").await.unwrap().is_none(), "runs cascade");
}

#[tokio::test]
async fn messages_paginate_oldest_first_within_a_page() {
    let (_d, store) = temp_store().await;
    let ws = store.open_workspace("/p").await.unwrap();
    let s = store.create_session(&ws.id, "t", None).await.unwrap();
    for i in 0..7 {
        let parts = format!(r#"[{{"type":"text","text":"{i}"}}]"#);
        store
            .insert_message(NewMessage {
                session_id: &s.id,
                role: "user",
                parts: &parts,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let page = store.list_messages(&s.id, None, 3).await.unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    assert!(page.has_more);
    let page = store.list_messages(&s.id, Some(5), 3).await.unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert!(page.has_more);
    let page = store.list_messages(&s.id, Some(2), 3).await.unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1]
    );
    assert!(!page.has_more);
}

/// A run's row through the writes the driver makes: accepted, started by its turn, ended by it.
#[tokio::test]
async fn runs_record_their_lifecycle() {
    let (_d, store) = temp_store().await;
    let ws = store.open_workspace("/p").await.unwrap();
    let s = store.create_session(&ws.id, "t", None).await.unwrap();
    assert!(store.accept_run(new_run("r", &s.id)).await.unwrap());
    assert_eq!(store.get_run("r").await.unwrap().unwrap().state, "accepted");
    let started = store
        .start_turn(&StartTurn {
            run_id: "r",
            session_id: &s.id,
            prompt: "prompt",
            user_parts: "[]",
            model: "m",
            provider: "p",
            title: Some("prompt"),
        })
        .await
        .unwrap();
    let (u, a) = (started.user, started.assistant);
    assert!(!started.titled, "a session created with a title keeps it");
    let run = store.get_run("r").await.unwrap().unwrap();
    assert_eq!(run.state, "running");
    assert_eq!(run.user_message_id.as_deref(), Some(u.id.as_str()));
    assert!(run.started_at.is_some());
    // The accepted parts (an image's base64 among them) now live in the user message only.
    let kept: Option<String> = sqlx::query_scalar("SELECT user_parts FROM runs WHERE run_id = 'r'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(kept, None, "the run row no longer holds the user's parts");
    store
        .finish_turn(&FinishTurn {
            session_id: &s.id,
            message_id: Some(&a.id),
            parts: "[]",
            finish_reason: crush_protocol::FinishReason::EndTurn,
            error: Some("boom"),
            run_state: crush_protocol::RunState::Failed,
            stop_reason: None,
            run_ids: &["r"],
            usage: TurnUsage::default(),
        })
        .await
        .unwrap();
    let run = store.get_run("r").await.unwrap().unwrap();
    assert_eq!(
        (run.state.as_str(), run.error.as_deref()),
        ("failed", Some("boom"))
    );
    assert!(run.finished_at.is_some());
}

#[tokio::test]
async fn reopening_marks_unfinished_runs_interrupted_and_keeps_flushed_text() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (session, assistant) = {
        let store = Store::open(&data).await.unwrap();
        let ws = store.open_workspace("/p").await.unwrap();
        let s = store.create_session(&ws.id, "t", None).await.unwrap();
        insert_run(&store, "done", &s.id, "completed", "a").await;
        insert_run(&store, "live", &s.id, "running", "b").await;
        insert_run(&store, "waiting", &s.id, "queued", "c").await;
        let a = store
            .insert_message(NewMessage {
                session_id: &s.id,
                run_id: Some("live"),
                role: "assistant",
                parts: "[]",
                ..Default::default()
            })
            .await
            .unwrap();
        store
            .update_message_parts(&a.id, r#"[{"type":"text","text":"half"}]"#)
            .await
            .unwrap();
        store.close().await;
        (s.id, a.id)
    };
    let store = Store::open(&data).await.unwrap();
    for id in ["live", "waiting"] {
        let run = store.get_run(id).await.unwrap().unwrap();
        assert_eq!(run.state, "interrupted");
        assert_eq!(run.error.as_deref(), Some(INTERRUPTED_ERROR));
    }
    assert_eq!(
        store.get_run("done").await.unwrap().unwrap().state,
        "completed"
    );
    let m = store.get_message(&assistant).await.unwrap().unwrap();
    assert_eq!(m.finish_reason.as_deref(), Some("interrupted"));
    assert!(
        m.parts.contains("half"),
        "flushed text survives: {}",
        m.parts
    );
    assert_eq!(
        store
            .get_session(&session)
            .await
            .unwrap()
            .unwrap()
            .message_count,
        1
    );
}

#[tokio::test]
async fn reopening_folds_the_appended_pieces_of_an_interrupted_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let assistant = {
        let store = Store::open(&data).await.unwrap();
        let ws = store.open_workspace("/p").await.unwrap();
        let s = store.create_session(&ws.id, "t", None).await.unwrap();
        let a = store
            .start_assistant_message(&s.id, None, None, None)
            .await
            .unwrap();
        let mut live = live::LiveMessage::new(a.id.clone(), Duration::ZERO);
        for w in ["flushed ", "in ", "pieces"] {
            live.push_text(w);
            live.flush(&store).await.unwrap();
        }
        live.push_text(" (never flushed)");
        store.close().await;
        a.id
    };
    let store = Store::open(&data).await.unwrap();
    let m = store.get_message(&assistant).await.unwrap().unwrap();
    assert_eq!(m.finish_reason.as_deref(), Some("interrupted"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&m.parts).unwrap(),
        serde_json::json!([{"type": "text", "text": "flushed in pieces"}])
    );
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM message_pieces")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 0, "the pieces are in the message's parts now");
}

#[tokio::test]
async fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = Store::open(&data).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (9999, 'from the future', 1, x'00', 0)",
        )
        .execute(store.pool())
        .await
        .unwrap();
        store.close().await;
    }
    let err = Store::open(&data).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 9999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer crushd"), "{err}");
}

#[tokio::test]
async fn refuses_a_corrupt_file_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(DB_FILE), vec![0x42u8; 8192]).unwrap();
    let err = Store::open(&data).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&data.join(DB_FILE).display().to_string()),
        "{msg}"
    );
    assert!(matches!(err, StoreError::Corrupt { .. }), "{msg}");
}

/// Many writers at once wait for each other within the busy timeout; none sees "database is
/// locked".
#[tokio::test]
async fn concurrent_writers_never_surface_busy() {
    let (_d, store) = temp_store().await;
    let ws = store.open_workspace("/p").await.unwrap();
    let shared = store.create_session(&ws.id, "shared", None).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let store = store.clone();
        let ws_id = ws.id.clone();
        let shared_id = shared.id.clone();
        tasks.push(tokio::spawn(async move {
            let own = store.create_session(&ws_id, &format!("s{i}"), None).await?;
            for _ in 0..20 {
                for sid in [&own.id, &shared_id] {
                    let m = store
                        .insert_message(NewMessage {
                            session_id: sid,
                            role: "assistant",
                            parts: "[]",
                            ..Default::default()
                        })
                        .await?;
                    store
                        .update_message_parts(&m.id, r#"[{"type":"text","text":"x"}]"#)
                        .await?;
                }
            }
            Ok::<_, StoreError>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let page = store.list_messages(&shared.id, None, 1000).await.unwrap();
    let seqs: Vec<i64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=640).collect::<Vec<_>>(),
        "every message got its own seq"
    );
}

/// Each turn's token usage adds to its session's totals. Cost is not tracked: no write adds to
/// it, so it stays zero.
#[tokio::test]
async fn session_usage_accumulates() {
    let (_d, store) = temp_store().await;
    let ws = store.open_workspace("/p").await.unwrap();
    let s = store.create_session(&ws.id, "t", Some("m")).await.unwrap();
    for (prompt_tokens, completion_tokens) in [(100, 20), (10, 2)] {
        store
            .finish_turn(&FinishTurn {
                session_id: &s.id,
                message_id: None,
                parts: "[]",
                finish_reason: crush_protocol::FinishReason::EndTurn,
                error: None,
                run_state: crush_protocol::RunState::Completed,
                stop_reason: None,
                run_ids: &[],
                usage: TurnUsage {
                    input_tokens: prompt_tokens,
                    output_tokens: completion_tokens,
                    ..TurnUsage::default()
                },
            })
            .await
            .unwrap();
    }
    let got = store.get_session(&s.id).await.unwrap().unwrap();
    assert_eq!(
        (got.prompt_tokens, got.completion_tokens, got.cost),
        (110, 22, 0.0)
    );
    assert!(got.updated_at >= s.updated_at);
}

/// The turn's usage lands on its own run, not on the runs folded into it, and adds to the
/// session's totals; tokens at an unknown price make the session's total cost unknown.
#[tokio::test]
async fn turn_usage_goes_to_its_run_and_the_session() {
    let (_d, store) = temp_store().await;
    let ws = store.open_workspace("/p").await.unwrap();
    let s = store.create_session(&ws.id, "t", None).await.unwrap();
    for id in ["r", "folded"] {
        assert!(store.accept_run(new_run(id, &s.id)).await.unwrap());
    }
    let priced = TurnUsage {
        input_tokens: 1000,
        output_tokens: 50,
        cached_tokens: 400,
        reasoning_tokens: 20,
        cost: Some(0.25),
    };
    let finish = |run_ids: &'static [&'static str], usage| FinishTurn {
        session_id: "",
        message_id: None,
        parts: "[]",
        finish_reason: crush_protocol::FinishReason::EndTurn,
        error: None,
        run_state: crush_protocol::RunState::Completed,
        stop_reason: None,
        run_ids,
        usage,
    };
    store
        .finish_turn(&FinishTurn {
            session_id: &s.id,
            ..finish(&["r", "folded"], priced)
        })
        .await
        .unwrap();
    let run = store.get_run("r").await.unwrap().unwrap();
    assert_eq!(run.usage(), Some(priced.into()));
    assert_eq!(
        store.get_run("folded").await.unwrap().unwrap().usage(),
        None
    );
    let got = store.get_session(&s.id).await.unwrap().unwrap().usage();
    assert_eq!(got, priced.into());

    store
        .finish_turn(&FinishTurn {
            session_id: &s.id,
            ..finish(
                &[],
                TurnUsage {
                    input_tokens: 7,
                    output_tokens: 3,
                    ..TurnUsage::default()
                },
            )
        })
        .await
        .unwrap();
    let row = store.get_session(&s.id).await.unwrap().unwrap();
    assert_eq!((row.prompt_tokens, row.completion_tokens), (1007, 53));
    assert_eq!(row.cost, 0.25, "the priced part is still summed");
    assert_eq!(row.usage().cost, None, "but the total is unknown");
}

/// A session created without a title takes its first turn's, once; one created with a title,
/// or renamed before its first turn, keeps it.
#[tokio::test]
async fn the_first_turn_titles_an_untitled_session_once() {
    let (_d, store) = temp_store().await;
    let ws = store.open_workspace("/p").await.unwrap();
    let start = |session_id: &str, run_id: &'static str, title: &'static str| {
        let session_id = session_id.to_owned();
        let store = store.clone();
        async move {
            store
                .start_turn(&StartTurn {
                    run_id,
                    session_id: &session_id,
                    prompt: title,
                    user_parts: "[]",
                    model: "m",
                    provider: "p",
                    title: Some(title),
                })
                .await
                .unwrap()
                .titled
        }
    };
    let s = store
        .create_untitled_session(&ws.id, "New session", None)
        .await
        .unwrap();
    assert!(start(&s.id, "r1", "first prompt").await);
    assert!(!start(&s.id, "r2", "second prompt").await);
    let got = store.get_session(&s.id).await.unwrap().unwrap();
    assert_eq!(got.title, "first prompt");

    let renamed = store
        .create_untitled_session(&ws.id, "New session", None)
        .await
        .unwrap();
    store.rename_session(&renamed.id, "Mine").await.unwrap();
    assert!(!start(&renamed.id, "r3", "a prompt").await);
    let got = store.get_session(&renamed.id).await.unwrap().unwrap();
    assert_eq!(got.title, "Mine");

    // A model-written title replaces the prompt's, not a title given since, and its cost
    // counts in the session's totals either way.
    let spent = TurnUsage {
        input_tokens: 40,
        output_tokens: 5,
        cached_tokens: 0,
        reasoning_tokens: 0,
        cost: Some(0.25),
    };
    let row = store
        .retitle(&s.id, "first prompt", "Parser work", &spent)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.title, "Parser work");
    assert_eq!(row.prompt_tokens, 40);
    assert!(
        store
            .retitle(&renamed.id, "a prompt", "Model title", &spent)
            .await
            .unwrap()
            .is_none()
    );
    let got = store.get_session(&renamed.id).await.unwrap().unwrap();
    assert_eq!(got.title, "Mine");
    assert_eq!(got.completion_tokens, 5);
}

/// A run row in any state with nothing else: the state an older daemon, or one killed between
/// writes, can leave behind, which no single write of this one produces.
async fn insert_run(store: &Store, run_id: &str, session_id: &str, state: &str, prompt: &str) {
    let now = now_ms();
    sqlx::query!(
        "INSERT INTO runs (run_id, session_id, state, prompt, created_at) VALUES (?, ?, ?, ?, ?)",
        run_id,
        session_id,
        state,
        prompt,
        now
    )
    .execute(store.pool())
    .await
    .unwrap();
}

fn new_run(id: &str, session: &str) -> NewRun {
    NewRun {
        run_id: id.to_owned(),
        session_id: session.to_owned(),
        prompt: format!("prompt of {id}"),
        user_parts: r#"[{"type":"text","text":"x"}]"#.to_owned(),
        created_at: now_ms(),
    }
}

/// Accepts sent together share one write; within it a repeated id is new only once, and a row
/// that cannot be written (its session is gone) fails alone.
#[tokio::test]
async fn accepts_of_a_burst_each_get_their_own_answer() {
    let (_d, store) = temp_store().await;
    let ws = store.open_workspace("/p").await.unwrap();
    let s = store.create_session(&ws.id, "t", None).await.unwrap();
    let runs = [
        new_run("a", &s.id),
        new_run("b", &s.id),
        new_run("a", &s.id),
        new_run("c", "no-such-session"),
        new_run("d", &s.id),
    ];
    let answers =
        futures::future::join_all(runs.iter().cloned().map(|r| store.accept_run(r))).await;
    assert!(matches!(answers[0], Ok(true)), "{answers:?}");
    assert!(matches!(answers[1], Ok(true)), "{answers:?}");
    assert!(
        matches!(answers[2], Ok(false)),
        "the repeat is not new: {answers:?}"
    );
    assert!(answers[3].is_err(), "no session, no run: {answers:?}");
    assert!(matches!(answers[4], Ok(true)), "{answers:?}");
    assert!(matches!(
        store.accept_run(new_run("b", &s.id)).await,
        Ok(false)
    ));
    let row = store.get_run("d").await.unwrap().unwrap();
    assert_eq!(row.state, "accepted");
    assert_eq!(row.prompt, "prompt of d");
    assert!(store.get_run("c").await.unwrap().is_none());
}

/// A run accepted but never started has its prompt put into its session by crash recovery.
#[tokio::test]
async fn recovery_puts_never_started_prompts_into_their_sessions() {
    let (d, store) = temp_store().await;
    let ws = store.open_workspace("/p").await.unwrap();
    let s = store.create_session(&ws.id, "t", None).await.unwrap();
    for id in ["r1", "r2"] {
        assert!(store.accept_run(new_run(id, &s.id)).await.unwrap());
    }
    store.close().await;
    let store = Store::open(&d.path().join("data")).await.unwrap();
    for id in ["r1", "r2"] {
        let run = store.get_run(id).await.unwrap().unwrap();
        assert_eq!(run.state, "interrupted");
        assert!(run.user_message_id.is_some());
    }
    let page = store.list_messages(&s.id, None, 100).await.unwrap();
    let users: Vec<_> = page
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.run_id.as_deref()))
        .collect();
    assert_eq!(users, [("user", Some("r1")), ("user", Some("r2"))]);
}

fn rule(
    id: &str,
    scope: crush_protocol::RuleScope,
    ws: Option<&str>,
    session: Option<&str>,
) -> crush_protocol::PermissionRule {
    crush_protocol::PermissionRule {
        id: id.into(),
        scope,
        workspace_id: ws.map(str::to_owned),
        session_id: session.map(str::to_owned),
        tool: "bash".into(),
        pattern: Some("cargo test".into()),
        created_at: 1,
        created_by: "test".into(),
    }
}

#[tokio::test]
async fn permission_rules_survive_a_reopen_and_go_with_their_session() {
    use crush_protocol::RuleScope;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Store::open(&data).await.unwrap();
    let ws = store.open_workspace("/p").await.unwrap();
    let s = store.create_session(&ws.id, "t", None).await.unwrap();
    let global = rule("r1", RuleScope::Global, None, None);
    let in_ws = rule("r2", RuleScope::Workspace, Some(&ws.id), None);
    let in_session = rule("r3", RuleScope::Session, Some(&ws.id), Some(&s.id));
    for r in [&global, &in_ws, &in_session] {
        store.insert_permission_rule(r).await.unwrap();
    }
    // The schema refuses a rule whose scope and ids disagree.
    let bad = rule("r4", RuleScope::Global, Some(&ws.id), None);
    assert!(store.insert_permission_rule(&bad).await.is_err());
    store.close().await;

    let store = Store::open(&data).await.unwrap();
    assert_eq!(
        store.permission_rules().await.unwrap(),
        vec![global.clone(), in_ws.clone(), in_session]
    );
    store.delete_session(&s.id).await.unwrap();
    assert_eq!(
        store.permission_rules().await.unwrap(),
        vec![global, in_ws.clone()]
    );
    assert!(store.remove_permission_rule("r1").await.unwrap());
    assert!(!store.remove_permission_rule("r1").await.unwrap());
    assert_eq!(store.permission_rules().await.unwrap(), vec![in_ws]);
}

#[tokio::test]
async fn the_permission_log_reads_back_newest_first_and_filters() {
    use crush_protocol::{PermissionLogEntry, PermissionResolution, PermissionSource};
    let (_d, store) = temp_store().await;
    let entry = |session: &str, ws: &str, title: &str| PermissionLogEntry {
        at: 5,
        session_id: session.into(),
        workspace_id: ws.into(),
        run_id: "run".into(),
        tool_call_id: "call".into(),
        tool: "bash".into(),
        title: title.into(),
        decision: PermissionResolution::AllowAlways,
        source: PermissionSource::Prompt,
        rule: Some("bash \"ls\" (workspace)".into()),
        rule_id: Some("r".into()),
        client: Some("crush.nvim".into()),
        connection: Some(7),
    };
    let first = entry("s1", "w1", "first");
    let second = entry("s2", "w1", "second");
    let third = entry("s3", "w2", "third");
    for e in [&first, &second, &third] {
        store.log_permission(e).await.unwrap();
    }
    assert_eq!(
        store.permission_log(None, None, 10).await.unwrap(),
        vec![third.clone(), second.clone(), first.clone()]
    );
    assert_eq!(
        store.permission_log(None, Some("w1"), 10).await.unwrap(),
        vec![second.clone(), first]
    );
    assert_eq!(
        store.permission_log(Some("s3"), None, 10).await.unwrap(),
        vec![third.clone()]
    );
    assert_eq!(
        store.permission_log(None, None, 1).await.unwrap(),
        vec![third]
    );
}
