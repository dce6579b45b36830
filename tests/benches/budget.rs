//! Context budget benchmark (figures, not assertions). Against a release `crushd` whose model is
//! the loopback mock (which counts every request's prompt tokens with the daemon's estimate), it
//! runs the same 200-turn session twice — each turn a ~220-token prompt, a `view` of a file
//! (~450 tokens of output) and an answer — once on a model with an 8,000-token window (the budget
//! compacts) and once on one with a 10M-token window (nothing is ever compacted: what every
//! request would be without a budget). The mock answers the daemon's summary requests at once
//! with a short summary. It prints the request size per turn for both, how many summaries were
//! written and how many model calls each took, the turn time (send → `$/runComplete`) for both
//! and, on the budgeted model, for turns with and without a summary (what a summary adds to its
//! step besides the model's own time), and the tokenizer's cost per request: building the o200k
//! encoding once, and counting a request with it and with the estimate.
//!
//! Run: `cargo build --release --bins && cargo bench -p crush-tests --bench budget`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(unix)]
fn main() {
    bench::run();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the budget benchmark needs Unix sockets");
}

#[cfg(unix)]
mod bench {
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use crush_tests::mock_llm::{MockLlm, RecordedRequest, Script};
    use crush_tests::{RawConn, TestEnv, percentile as pct};

    const TURNS: usize = 200;
    const SHOWN: &[usize] = &[1, 10, 25, 50, 100, 150, 200];

    async fn session(c: &mut RawConn, workspace: &str, model: &str) -> String {
        let s = c
            .request(
                "session/create",
                json!({"workspaceId": workspace, "model": model, "yolo": true}),
            )
            .await;
        let id = s["result"]["sessionId"].as_str().unwrap().to_owned();
        c.request("session/subscribe", json!({"sessionId": id}))
            .await;
        id
    }

    /// One turn as measured.
    struct Turn {
        time: Duration,
        /// Token counts of the turn's step requests.
        sizes: Vec<u64>,
        /// Summary requests the turn made.
        summary_calls: usize,
    }

    /// Runs the session; returns each turn.
    async fn long_session(c: &mut RawConn, mock: &MockLlm, session: &str) -> Vec<Turn> {
        let mut turns = Vec::new();
        for i in 0..TURNS {
            let first = mock.requests().len();
            mock.push(Script::default().tool_call(
                &format!("c{i}"),
                "view",
                r#"{"path":"big.rs"}"#,
            ));
            mock.push(Script::text(&format!("Viewed it, turn {i}.")));
            let prompt = format!(
                "prompt-{i}: {}",
                "please look at big.rs again and tell me what changed in the values; ".repeat(12)
            );
            let t = Instant::now();
            let r = c
                .request(
                    "agent/send",
                    json!({"sessionId": session, "prompt": prompt}),
                )
                .await;
            let run = r["result"]["runId"].as_str().unwrap().to_owned();
            let done = c.run_complete(&run).await;
            let time = t.elapsed();
            assert!(done.get("error").is_none(), "turn {i}: {done}");
            let reqs: Vec<RecordedRequest> = mock.requests()[first..].to_vec();
            turns.push(Turn {
                time,
                sizes: reqs
                    .iter()
                    .filter(|r| !r.summary)
                    .map(|r| r.tokens.unwrap_or(0))
                    .collect(),
                summary_calls: reqs.iter().filter(|r| r.summary).count(),
            });
        }
        turns
    }

    fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }

    /// Every text the daemon counts in a recorded OpenAI request.
    fn texts(body: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for m in body["messages"].as_array().into_iter().flatten() {
            out.extend(m["content"].as_str().map(str::to_owned));
            for t in m["tool_calls"].as_array().into_iter().flatten() {
                out.extend(t["function"]["arguments"].as_str().map(str::to_owned));
            }
        }
        for t in body["tools"].as_array().into_iter().flatten() {
            out.push(t["function"].to_string());
        }
        out
    }

    fn cost(label: &str, texts: &[String], count: &dyn Fn(&str) -> u64) {
        let reps = 20;
        let mut samples = Vec::new();
        let mut n = 0;
        for _ in 0..reps {
            let t = Instant::now();
            n = texts.iter().map(|s| count(s)).sum::<u64>();
            samples.push(t.elapsed());
        }
        println!(
            "| {label} | {n} | {} | {} |",
            ms(pct(&mut samples, 0.5)),
            ms(pct(&mut samples, 0.99))
        );
    }

    pub fn run() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let env = TestEnv::new();
            let mock = MockLlm::start().await;
            // Counting on, never refusing: the budgeted session must fit by itself.
            mock.set_context_window(Some(u64::MAX / 4));
            mock.answer_summaries();
            env.use_model_with(
                &mock.base_url(),
                "openai",
                "[providers.mock.models.\"mock-8k\"]\ncontext_window = 8000\nmax_output_tokens = 500\n\
                 [providers.mock.models.\"mock-huge\"]\ncontext_window = 10000000\nmax_output_tokens = 500\n",
            );
            let daemon = env.spawn_daemon(&[]);
            let project = env.dir.path().join("project");
            std::fs::create_dir_all(&project).unwrap();
            let big: String = (0..40)
                .map(|i| format!("let value_{i} = compute({i}, \"text\");\n"))
                .collect();
            std::fs::write(project.join("big.rs"), big).unwrap();
            let mut c = RawConn::initialized(&env.socket).await;
            let ws = c.request("workspace/open", json!({"path": project})).await;
            let workspace = ws["result"]["workspaceId"].as_str().unwrap().to_owned();
            println!("crushd pid {} (release build expected), {TURNS} turns", daemon.pid());

            let s = session(&mut c, &workspace, "mock/mock-8k").await;
            let with = long_session(&mut c, &mock, &s).await;
            let last_budgeted = mock.requests().last().unwrap().body.clone();
            let s = session(&mut c, &workspace, "mock/mock-huge").await;
            let without = long_session(&mut c, &mock, &s).await;
            let last_unbudgeted = mock.requests().last().unwrap().body.clone();
            let mut t_budget: Vec<Duration> = with.iter().map(|t| t.time).collect();
            let mut t_none: Vec<Duration> = without.iter().map(|t| t.time).collect();
            let mut t_summary: Vec<Duration> =
                with.iter().filter(|t| t.summary_calls > 0).map(|t| t.time).collect();
            let mut t_plain: Vec<Duration> =
                with.iter().filter(|t| t.summary_calls == 0).map(|t| t.time).collect();

            println!("\n| turn | with budget (8k window): tokens of the turn's last request | without budget |");
            println!("|---|---|---|");
            for &i in SHOWN {
                println!(
                    "| {i} | {} | {} |",
                    with[i - 1].sizes.last().unwrap(),
                    without[i - 1].sizes.last().unwrap()
                );
            }
            let peak = with.iter().flat_map(|t| &t.sizes).max().unwrap();
            println!("\npeak request with budget: {peak} tokens (hard limit 8000 − 500 − 800 = 6700)");
            let compacted = c
                .kept()
                .iter()
                .filter(|m| m["params"]["kind"] == "compacted")
                .count();
            println!("compacted events: {compacted}");
            let summaries = c
                .kept()
                .iter()
                .filter(|m| m["params"]["kind"] == "compacted" && m["params"]["summaryMessageId"].is_string())
                .count();
            let calls: usize = with.iter().map(|t| t.summary_calls).sum();
            println!(
                "summaries written: {summaries} ({calls} model calls; turns with one: {})",
                t_summary.len()
            );
            if !t_summary.is_empty() {
                println!(
                    "budgeted turn time p50/p99: with a summary {} / {}, without {} / {}",
                    ms(pct(&mut t_summary, 0.5)),
                    ms(pct(&mut t_summary, 0.99)),
                    ms(pct(&mut t_plain, 0.5)),
                    ms(pct(&mut t_plain, 0.99))
                );
            }
            println!(
                "turn time p50/p99: with budget {} / {}, without {} / {}",
                ms(pct(&mut t_budget, 0.5)),
                ms(pct(&mut t_budget, 0.99)),
                ms(pct(&mut t_none, 0.5)),
                ms(pct(&mut t_none, 0.99))
            );

            // The tokenizer's cost.
            let t = Instant::now();
            let bpe = tiktoken_rs::o200k_base().unwrap();
            println!("\nbuilding the o200k encoding (once per daemon): {}", ms(t.elapsed()));
            println!("\n| counting | tokens | p50 | p99 |\n|---|---|---|---|");
            for (label, body) in [("budgeted request", &last_budgeted), ("unbudgeted request", &last_unbudgeted)] {
                let texts = texts(body);
                cost(&format!("{label}, o200k"), &texts, &|s| bpe.encode_ordinary(s).len() as u64);
                cost(&format!("{label}, estimate"), &texts, &|s| crushd::model::tokens::estimate(s));
            }
        });
    }
}
