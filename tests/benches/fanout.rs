//! Multi-client fan-out benchmark (figures, not assertions). One run streams 10 000 text deltas
//! from the loopback mock model through a release `crushd` to N = 1, 10, 100 clients subscribed
//! to the same session, each on its own connection and its own reading task. For each N it
//! reports:
//! - delivery throughput: deltas per second per client (first chunk sent → that client's last
//!   byte of text) and in aggregate (N × 10 000 over the slowest client's time);
//! - lag from the mock's write of a chunk to a client's receipt of the event that carries it,
//!   pooled over all clients (p50, p99, max). A slow reader gets consecutive deltas merged into
//!   one event, so events are matched to chunks by text offset: an event covering bytes [a, b)
//!   of the reply gives every chunk that ends in that range the lag "event read − chunk sent";
//! - events received against deltas sent (the merge ratio);
//! - the daemon's CPU time over the run (`utime + stime` of `/proc/<pid>/stat`) and its peak
//!   resident memory (`VmHWM`), and the bench process's own CPU time (mock and clients).
//!
//! Two variants: **unpaced** (the mock writes the 10 000 chunks as fast as it can: a throughput
//! and saturation test, where lag is mostly backlog) and **paced** (a chunk every 100 µs asked,
//! ≈1.25 ms achieved with tokio's timer, so ≈800 deltas/s: a fast model, where lag is
//! latency). Each case gets a fresh daemon and database and one 500-chunk warm-up run with the
//! same clients before the measured one.
//!
//! Correctness check: every client's concatenated `textDelta` text of the run must equal the
//! reply, with increasing seqs, and its `$/runComplete` must carry the same text.
//!
//! Clients only frame what they read (LSP headers) and timestamp it; the JSON is parsed after
//! the run, so the clients' work competes as little as possible with the daemon's on the shared
//! cores. The mock runs on its own runtime thread so busy clients do not delay its writes.
//!
//! Run: `cargo build --release --bins && cargo bench -p crush-tests --bench fanout`
//! (`FANOUT_ONLY=unpaced` or `FANOUT_ONLY=paced` runs one variant, `FANOUT_N=100` one client
//! count; each case prints the daemon's pid on stderr, for a profiler to attach.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(unix)]
fn main() {
    bench::run();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the fan-out benchmark needs Unix sockets");
}

#[cfg(unix)]
mod bench {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use futures::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio::net::UnixStream;
    use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
    use tokio_util::codec::{FramedRead, FramedWrite};

    use crush_protocol::LspCodec;
    use crush_tests::mock_llm::{MockLlm, Script};
    use crush_tests::{DaemonProcess, TestEnv, percentile as pct};

    /// Deltas in the measured run.
    const DELTAS: usize = 10_000;
    /// Deltas in the warm-up run.
    const WARMUP: usize = 500;
    const CLIENTS: [usize; 3] = [1, 10, 100];
    /// Pacing of the paced variant. tokio's timer has millisecond resolution and rounds a sleep
    /// up to the next tick, so 100 µs comes out as ≈1.25 ms per chunk on the project's VM (and
    /// 1 ms as ≈2 ms); the achieved rate is printed.
    const PACE: Duration = Duration::from_micros(100);
    /// Linux's `USER_HZ`: the unit of `utime`/`stime` in `/proc/<pid>/stat`.
    const TICKS_PER_SEC: f64 = 100.0;
    /// How long a client waits for a run before the bench fails.
    const RUN_DEADLINE: Duration = Duration::from_secs(120);

    /// A reply of `n` small chunks: `"{tag}0"`, `" {tag}1"`, … (2–6 bytes each for 10 000).
    fn reply(tag: &str, n: usize, delay: Duration) -> Script {
        let chunks = (0..n)
            .map(|i| {
                if i == 0 {
                    format!("{tag}0")
                } else {
                    format!(" {tag}{i}")
                }
            })
            .collect();
        Script {
            chunks,
            chunk_delay: delay,
            usage: Some((10, n as u64)),
            ..Script::default()
        }
    }

    /// CPU time (user + system) of process `pid` so far, all threads.
    fn cpu_time(pid: &str) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may contain spaces) start at field 3 (state);
        // utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').unwrap().1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / TICKS_PER_SEC)
    }

    /// A `/proc/<pid>/status` field in MiB (`VmHWM`, `VmRSS`).
    fn status_mib(pid: u32, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }

    /// A framed connection whose reading half can be handed to a task of its own.
    struct Client {
        reader: FramedRead<OwnedReadHalf, LspCodec>,
        writer: FramedWrite<OwnedWriteHalf, LspCodec>,
        next_id: u64,
    }

    impl Client {
        async fn connect(socket: &Path) -> Self {
            let (r, w) = UnixStream::connect(socket).await.unwrap().into_split();
            let mut c = Self {
                reader: FramedRead::new(r, LspCodec::new(64 << 20)),
                writer: FramedWrite::new(w, LspCodec::default()),
                next_id: 0,
            };
            c.request("initialize", json!({"clientInfo": {"name": "fanout"}}))
                .await;
            c.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}))
                .await;
            c
        }

        async fn send(&mut self, msg: Value) {
            self.writer
                .send(Bytes::from(serde_json::to_vec(&msg).unwrap()))
                .await
                .unwrap();
        }

        /// Sends a request and returns its id.
        async fn start(&mut self, method: &str, params: Value) -> u64 {
            self.next_id += 1;
            let id = self.next_id;
            self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
                .await;
            id
        }

        /// A request and its response; anything else read meanwhile is dropped (this is only
        /// used between runs).
        async fn request(&mut self, method: &str, params: Value) -> Value {
            let id = self.start(method, params).await;
            loop {
                let body = tokio::time::timeout(RUN_DEADLINE, self.reader.next())
                    .await
                    .expect("response in time")
                    .expect("connection open")
                    .unwrap();
                let m: Value = serde_json::from_slice(&body).unwrap();
                if m.get("method").is_none() && m["id"] == id {
                    assert!(m.get("result").is_some(), "{method} failed: {m}");
                    return m["result"].clone();
                }
            }
        }
    }

    /// Reads frames until one is a `$/runComplete`, stamping each as it is framed. The JSON is
    /// left for later.
    async fn collect(
        mut reader: FramedRead<OwnedReadHalf, LspCodec>,
    ) -> (FramedRead<OwnedReadHalf, LspCodec>, Vec<(Bytes, Instant)>) {
        let mut got = Vec::with_capacity(DELTAS + 16);
        loop {
            let body = tokio::time::timeout(RUN_DEADLINE, reader.next())
                .await
                .expect("the run completes in time")
                .expect("connection open")
                .unwrap();
            let at = Instant::now();
            // The method comes before the params in the daemon's encoding.
            let head = &body[..body.len().min(64)];
            let done = head.windows(13).any(|w| w == b"$/runComplete");
            got.push((body, at));
            if done {
                return (reader, got);
            }
        }
    }

    /// What one client received in the measured run: each `textDelta`'s text with its receipt
    /// time, and the `$/runComplete` text. Checks seqs increase.
    struct Received {
        deltas: Vec<(String, Instant)>,
        complete_text: String,
    }

    fn parse(frames: &[(Bytes, Instant)], run: &str) -> Received {
        let mut deltas = Vec::new();
        let mut complete_text = None;
        let mut last_seq = 0;
        for (body, at) in frames {
            let m: Value = serde_json::from_slice(body).unwrap();
            let p = &m["params"];
            if m["method"] == "$/sessionUpdate" {
                let seq = p["seq"].as_u64().unwrap();
                assert!(seq > last_seq, "seq went from {last_seq} to {seq}");
                last_seq = seq;
                if p["kind"] == "textDelta" && p["runId"] == run {
                    deltas.push((p["text"].as_str().unwrap().to_owned(), *at));
                }
            } else if m["method"] == "$/runComplete" && p["runId"] == run {
                complete_text = Some(p["text"].as_str().unwrap_or_default().to_owned());
            }
        }
        Received {
            deltas,
            complete_text: complete_text.expect("a $/runComplete of the run"),
        }
    }

    /// One daemon with N subscribed clients on one session.
    struct Case {
        _env: TestEnv,
        daemon: DaemonProcess,
        clients: Vec<Client>,
        /// Subscribed, never read after that.
        _stalled: Option<Client>,
        session: String,
    }

    /// How a case differs from the plain fan-out.
    #[derive(Clone, Copy)]
    struct Variant {
        name: &'static str,
        pace: Duration,
        /// Every chunk is `" {tag}{i}"`: a longer tag makes a bigger reply.
        tag: &'static str,
        /// Appended to the daemon's config.
        config: &'static str,
        /// One more subscriber that never reads.
        stalled: bool,
    }

    /// A tag of 100 bytes: chunks of ≈105 bytes, ≈1 MiB per 10 000-chunk reply — enough to fill
    /// a stalled client's socket buffers and pass the queue bound set in `STALL_CONFIG`.
    const BIG_TAG: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    const STALL_CONFIG: &str = "[daemon]\nmax_outbound_bytes = 262144\n";

    async fn setup(mock: &MockLlm, n: usize, v: Variant) -> Case {
        let env = TestEnv::new();
        env.use_model_with(&mock.base_url(), "openai", v.config);
        let mut cmd = env.command("crushd");
        cmd.arg("--foreground")
            .arg("--idle-timeout")
            .arg("0")
            .env("CRUSHD_LOG", "warn");
        let daemon = DaemonProcess::spawn(cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&env.socket).is_err() {
            assert!(Instant::now() < deadline, "crushd did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let project = env.dir.path().join("project");
        std::fs::create_dir_all(&project).unwrap();
        let mut clients = Vec::with_capacity(n);
        let mut session = String::new();
        for i in 0..n {
            let mut c = Client::connect(&env.socket).await;
            let ws = c.request("workspace/open", json!({"path": project})).await;
            if i == 0 {
                let s = c
                    .request(
                        "session/create",
                        json!({"workspaceId": ws["workspaceId"].clone()}),
                    )
                    .await;
                session = s["sessionId"].as_str().unwrap().to_owned();
            }
            c.request("session/subscribe", json!({"sessionId": session}))
                .await;
            clients.push(c);
        }
        let stalled = if v.stalled {
            let mut c = Client::connect(&env.socket).await;
            c.request("session/subscribe", json!({"sessionId": session}))
                .await;
            Some(c)
        } else {
            None
        };
        Case {
            _env: env,
            daemon,
            clients,
            _stalled: stalled,
            session,
        }
    }

    /// One run seen by every client: client 0 sends the prompt, every client reads on its own
    /// task until `$/runComplete`. Returns the run id and each client's frames.
    async fn run_once(case: &mut Case) -> (String, Vec<Vec<(Bytes, Instant)>>) {
        let n = case.clients.len();
        let mut tasks = Vec::with_capacity(n);
        let mut writers = Vec::with_capacity(n);
        for c in case.clients.drain(..) {
            tasks.push(tokio::spawn(collect(c.reader)));
            writers.push((c.writer, c.next_id));
        }
        let send_id = {
            let (w, next) = &mut writers[0];
            *next += 1;
            let msg = json!({"jsonrpc": "2.0", "id": *next, "method": "agent/send",
                "params": {"sessionId": case.session, "prompt": "stream"}});
            w.send(Bytes::from(serde_json::to_vec(&msg).unwrap()))
                .await
                .unwrap();
            *next
        };
        let mut frames = Vec::with_capacity(n);
        for (t, (writer, next_id)) in tasks.into_iter().zip(writers) {
            let (reader, got) = t.await.unwrap();
            case.clients.push(Client {
                reader,
                writer,
                next_id,
            });
            frames.push(got);
        }
        let run = frames[0]
            .iter()
            .filter_map(|(b, _)| serde_json::from_slice::<Value>(b).ok())
            .find(|m| m.get("method").is_none() && m["id"] == send_id)
            .and_then(|m| m["result"]["runId"].as_str().map(str::to_owned))
            .expect("the agent/send response");
        (run, frames)
    }

    struct Row {
        variant: &'static str,
        n: usize,
        /// Mock: first chunk written → last chunk written.
        produce: Duration,
        /// Median over clients of DELTAS / (first chunk sent → that client's last text).
        per_client: f64,
        aggregate: f64,
        /// First chunk sent → the slowest client's last text.
        wall: Duration,
        /// First chunk sent → the first client to receive the last chunk: about when the daemon
        /// had read and published the whole reply.
        published: Duration,
        events_mean: f64,
        events_min: usize,
        lag: [Duration; 3],
        /// Lowest and highest per-client p99.
        client_p99: (Duration, Duration),
        daemon_cpu: Duration,
        bench_cpu: Duration,
        rss_before: f64,
        rss_peak: f64,
    }

    async fn measure(mock: &MockLlm, v: Variant, n: usize) -> Row {
        let (variant, pace) = (v.name, v.pace);
        let mut case = setup(mock, n, v).await;
        let pid = case.daemon.pid();
        eprintln!("{variant} N={n}: crushd pid {pid}");

        mock.push(reply("w", WARMUP, pace));
        run_once(&mut case).await;

        let script = reply(v.tag, DELTAS, pace);
        let text = script.full_text();
        mock.clear_sent();
        mock.push(script);
        let rss_before = status_mib(pid, "VmRSS:");
        let (cpu0, own0) = (cpu_time(&pid.to_string()), cpu_time("self"));
        let (run, frames) = run_once(&mut case).await;
        let (cpu1, own1) = (cpu_time(&pid.to_string()), cpu_time("self"));
        let rss_peak = status_mib(pid, "VmHWM:");

        let sent = mock.sent_deltas();
        assert_eq!(sent.len(), DELTAS, "the mock sent every chunk");
        assert_eq!(
            sent.iter().map(|d| d.text.as_str()).collect::<String>(),
            text
        );
        // Cumulative end offset of each chunk, with its send time.
        let mut end = 0;
        let chunks: Vec<(usize, Instant)> = sent
            .iter()
            .map(|d| {
                end += d.text.len();
                (end, d.at)
            })
            .collect();
        let t_first = chunks[0].1;

        let mut lags = Vec::with_capacity(n * DELTAS);
        let mut finish = Vec::with_capacity(n);
        let mut events = Vec::with_capacity(n);
        let mut client_p99 = Vec::with_capacity(n);
        for (i, f) in frames.iter().enumerate() {
            let got = parse(f, &run);
            let joined: String = got.deltas.iter().map(|(t, _)| t.as_str()).collect();
            assert!(joined == text, "client {i}: the streamed text differs");
            assert!(
                got.complete_text == text,
                "client {i}: the $/runComplete text differs"
            );
            events.push(got.deltas.len());
            finish.push(got.deltas.last().unwrap().1.duration_since(t_first));
            let mut mine = Vec::with_capacity(DELTAS);
            let (mut k, mut covered) = (0, 0);
            for (t, at) in &got.deltas {
                covered += t.len();
                while k < chunks.len() && chunks[k].0 <= covered {
                    mine.push(at.saturating_duration_since(chunks[k].1));
                    k += 1;
                }
            }
            assert_eq!(k, DELTAS, "client {i}: every chunk matched");
            client_p99.push(pct(&mut mine, 0.99));
            lags.extend(mine);
        }
        client_p99.sort_unstable();
        let wall = *finish.iter().max().unwrap();
        let published = *finish.iter().min().unwrap();
        let rates: Vec<f64> = finish
            .iter()
            .map(|d| DELTAS as f64 / d.as_secs_f64())
            .collect();
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        let row = Row {
            variant,
            n,
            produce: chunks[DELTAS - 1].1.duration_since(t_first),
            per_client: sorted[sorted.len() / 2],
            aggregate: (n * DELTAS) as f64 / wall.as_secs_f64(),
            wall,
            published,
            events_mean: events.iter().sum::<usize>() as f64 / n as f64,
            events_min: *events.iter().min().unwrap(),
            lag: [
                pct(&mut lags, 0.5),
                pct(&mut lags, 0.99),
                *lags.last().unwrap(),
            ],
            client_p99: (client_p99[0], client_p99[n - 1]),
            daemon_cpu: cpu1 - cpu0,
            bench_cpu: own1 - own0,
            rss_before,
            rss_peak,
        };
        print_row(&row);
        if v.stalled {
            let cut = case
                .daemon
                .try_wait_for_log("client is not reading", Duration::from_secs(5))
                .is_some();
            eprintln!(
                "{variant} N={n}: the stalled subscriber was {}",
                if cut {
                    "disconnected at its bound"
                } else {
                    "NOT disconnected"
                }
            );
        }
        drop(case);
        row
    }

    fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }

    fn print_row(r: &Row) {
        println!(
            "{} N={}: mock wrote {DELTAS} chunks in {} ({:.0}/s); first client done after {}, \
             slowest after {}; per-client p99 {} … {}; daemon CPU {:.2} µs per delivered delta",
            r.variant,
            r.n,
            ms(r.produce),
            DELTAS as f64 / r.produce.as_secs_f64().max(1e-9),
            ms(r.published),
            ms(r.wall),
            ms(r.client_p99.0),
            ms(r.client_p99.1),
            r.daemon_cpu.as_secs_f64() * 1e6 / (r.n * DELTAS) as f64,
        );
    }

    pub fn run() {
        let only = std::env::var("FANOUT_ONLY").unwrap_or_default();
        let only_n: Option<usize> = std::env::var("FANOUT_N").ok().and_then(|v| v.parse().ok());
        // The mock gets a runtime (and thread) of its own: 100 busy clients must not delay its
        // writes, or the lag would start late.
        let mock_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mock = mock_rt.block_on(MockLlm::start());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut rows = Vec::new();
        rt.block_on(async {
            let plain = |name, pace| Variant {
                name,
                pace,
                tag: "t",
                config: "",
                stalled: false,
            };
            for v in [plain("unpaced", Duration::ZERO), plain("paced", PACE)] {
                if !only.is_empty() && !v.name.starts_with(&only) {
                    continue;
                }
                for n in CLIENTS {
                    if only_n.is_some_and(|o| o != n) {
                        continue;
                    }
                    rows.push(measure(&mock, v, n).await);
                }
            }
            // A stalled subscriber must not slow the run or the others: the same 1 MiB paced
            // reply to 10 clients, without and with an 11th that never reads (cut off at a
            // 256 KiB bound).
            for stalled in [false, true] {
                let v = Variant {
                    name: if stalled {
                        "stall:with"
                    } else {
                        "stall:without"
                    },
                    pace: PACE,
                    tag: BIG_TAG,
                    config: STALL_CONFIG,
                    stalled,
                };
                if !only.is_empty() && !v.name.starts_with(&only) {
                    continue;
                }
                if only_n.is_some_and(|o| o != 10) {
                    continue;
                }
                rows.push(measure(&mock, v, 10).await);
            }
        });
        drop(mock);
        drop(mock_rt);

        println!(
            "\nfan-out benchmark: one run of {DELTAS} text deltas to N subscribed clients \
             (lag pooled over all clients and chunks)\n"
        );
        println!(
            "| variant | N | per-client deltas/s (median) | aggregate deltas/s | events per client (mean / min) | deltas per event | lag p50 | lag p99 | lag max | daemon CPU | bench CPU (mock + clients) | daemon RSS before → peak |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.0} / {} | {:.2} | {} | {} | {} | {:.0} ms | {:.0} ms | {:.1} → {:.1} MiB |",
                r.variant,
                r.n,
                r.per_client,
                r.aggregate,
                r.events_mean,
                r.events_min,
                DELTAS as f64 / r.events_mean,
                ms(r.lag[0]),
                ms(r.lag[1]),
                ms(r.lag[2]),
                r.daemon_cpu.as_secs_f64() * 1e3,
                r.bench_cpu.as_secs_f64() * 1e3,
                r.rss_before,
                r.rss_peak,
            );
        }
        let goal: Vec<&Row> = rows.iter().filter(|r| r.n == 100).collect();
        for r in goal {
            println!(
                "goal p99 lag ≤ 5 ms at N = 100 ({}): {} (p99 {})",
                r.variant,
                if r.lag[1] <= Duration::from_millis(5) {
                    "met"
                } else {
                    "NOT met"
                },
                ms(r.lag[1])
            );
        }
    }
}
