//! What images cost (figures, not assertions): a prompt from `agent/send` to `$/runComplete`
//! against the loopback mock, on a model with `images = true`, three ways, interleaved:
//!
//! - **text**: a one-line prompt in a fresh session;
//! - **image**: the same prompt with one 1 MiB image (base64, ~1.4 MB on the wire): validated,
//!   stored as an `image` part, sent to the model as a `data:` URL;
//! - **after**: a text prompt in a session whose history holds that image, which every later
//!   request carries again (read from the store, counted in the budget).
//!
//! Also the database growth per image. Run: `cargo build --release --bins && cargo bench -p
//! crush-tests --bench images` (or `--profile dev` against debug binaries, an upper bound).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(unix)]
fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench::run());
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the images benchmark needs Unix sockets");
}

#[cfg(unix)]
mod bench {
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use crush_tests::mock_llm::{MockLlm, Script};
    use crush_tests::{RawConn, TestEnv, percentile};

    const ROUNDS: usize = 20;
    const IMAGE_BYTES: usize = 1024 * 1024;

    async fn session(c: &mut RawConn, ws: &Value) -> String {
        let s = c
            .request("session/create", json!({"workspaceId": ws}))
            .await;
        let id = s["result"]["sessionId"].as_str().unwrap().to_owned();
        c.request("session/subscribe", json!({"sessionId": id}))
            .await;
        id
    }

    async fn timed(c: &mut RawConn, mock: &MockLlm, params: Value) -> Duration {
        mock.push(Script::text("ok"));
        let t = Instant::now();
        let r = c.request("agent/send", params).await;
        let run = r["result"]["runId"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        c.run_complete(&run).await;
        t.elapsed()
    }

    fn db_bytes(env: &TestEnv) -> u64 {
        std::fs::read_dir(env.data_dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("crushd.db"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    pub async fn run() {
        let env = TestEnv::new();
        let mock = MockLlm::start().await;
        env.use_model_with(
            &mock.base_url(),
            "openai",
            "[providers.mock.models.\"mock-1\"]\nimages = true\n",
        );
        let _d = env.spawn_daemon(&[]);
        let mut c = RawConn::initialized(&env.socket).await;
        let ws = c
            .request("workspace/open", json!({"path": env.dir.path()}))
            .await["result"]["workspaceId"]
            .clone();
        // Base64 of IMAGE_BYTES bytes: the daemon checks the alphabet and size, not the pixels.
        let data = "AAAA".repeat(IMAGE_BYTES / 3);
        let (mut text, mut image, mut after) = (Vec::new(), Vec::new(), Vec::new());
        let mut grown = Vec::new();
        for _ in 0..ROUNDS {
            let s = session(&mut c, &ws).await;
            text.push(
                timed(
                    &mut c,
                    &mock,
                    json!({"sessionId": s, "prompt": "what is this?"}),
                )
                .await,
            );
            let s = session(&mut c, &ws).await;
            let before = db_bytes(&env);
            let images = json!([{"mimeType": "image/png", "data": data}]);
            image.push(
                timed(
                    &mut c,
                    &mock,
                    json!({"sessionId": s, "prompt": "what is this?", "images": images}),
                )
                .await,
            );
            grown.push(db_bytes(&env).saturating_sub(before));
            after.push(timed(&mut c, &mock, json!({"sessionId": s, "prompt": "and now?"})).await);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("images: {ROUNDS} rounds, one {IMAGE_BYTES}-byte image, prompt → $/runComplete");
        for (name, v) in [
            ("text", &mut text),
            ("image", &mut image),
            ("after", &mut after),
        ] {
            println!(
                "  {name:<6} p50 {:7.2} ms  p99 {:7.2} ms",
                ms(percentile(v, 0.5)),
                ms(percentile(v, 0.99))
            );
        }
        grown.sort_unstable();
        println!(
            "  database growth per image prompt: median {} KiB",
            grown[grown.len() / 2] / 1024
        );
        let last = mock.requests().pop().unwrap();
        println!(
            "  the later request carries the image again: {} image(s), body {} KiB",
            last.images().len(),
            serde_json::to_vec(last.body()).unwrap().len() / 1024
        );
    }
}
