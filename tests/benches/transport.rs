//! Transport benchmark (figures, not assertions). In one run it measures:
//! (a) JSON-RPC round trip of `daemon/status` to a real `crushd` over its real socket, p50/p99,
//!     sequentially and with 8 concurrent connections;
//! (b) a raw Unix-socket echo of the same request bytes by a separate process — the floor;
//! (c) decode throughput of the LSP framing codec.
//!
//! Run: `cargo build --release --bins && cargo bench -p crush-tests --bench transport`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(unix)]
fn main() {
    if let Some(path) = std::env::var_os("CRUSH_BENCH_ECHO_SERVER") {
        echo_server(std::path::Path::new(&path));
        return;
    }
    if let Some(path) = std::env::var_os("CRUSH_BENCH_BLOCKING_ECHO_SERVER") {
        blocking_echo_server(std::path::Path::new(&path));
        return;
    }
    bench::run();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the transport benchmark needs Unix sockets");
}

/// The floor: a separate process on the same kind of tokio runtime as crushd that writes back
/// every byte it reads, one task per connection. No framing, no JSON.
#[cfg(unix)]
fn echo_server(path: &std::path::Path) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        println!("ready");
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
}

/// The kernel's floor: blocking reads and writes on plain threads, no async runtime at all.
#[cfg(unix)]
fn blocking_echo_server(path: &std::path::Path) {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    println!("ready");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { break };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

#[cfg(unix)]
mod bench {
    use std::io::BufRead;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use bytes::BytesMut;
    use futures::{SinkExt, StreamExt};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    use tokio_util::codec::{Decoder, FramedRead, FramedWrite};

    use crush_protocol::LspCodec;
    use crush_tests::TestEnv;

    const SEQ_REQUESTS: usize = 20_000;
    const CONC: usize = 8;
    const CONC_REQUESTS_EACH: usize = 5_000;
    const WARMUP: usize = 1_000;

    fn request_bytes(id: u64) -> Vec<u8> {
        let body =
            serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "method": "daemon/status"}))
                .unwrap();
        crush_protocol::codec::frame(&body)
    }

    pub struct Stats {
        pub p50: Duration,
        pub p99: Duration,
        pub n: usize,
        pub wall: Duration,
    }

    fn stats(mut samples: Vec<Duration>, wall: Duration) -> Stats {
        samples.sort_unstable();
        let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        Stats {
            p50: pick(0.50),
            p99: pick(0.99),
            n: samples.len(),
            wall,
        }
    }

    async fn rpc_client(socket: PathBuf, n: usize) -> Vec<Duration> {
        let stream = UnixStream::connect(&socket).await.unwrap();
        let (r, w) = stream.into_split();
        let mut reader = FramedRead::new(r, LspCodec::default());
        let mut writer = FramedWrite::new(w, LspCodec::default());
        let init = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}),
        )
        .unwrap();
        writer.send(bytes::Bytes::from(init)).await.unwrap();
        reader.next().await.unwrap().unwrap();
        let mut samples = Vec::with_capacity(n);
        for i in 0..(n + WARMUP) as u64 {
            let body = serde_json::to_vec(
                &json!({"jsonrpc": "2.0", "id": i + 1, "method": "daemon/status"}),
            )
            .unwrap();
            let t = Instant::now();
            writer.send(bytes::Bytes::from(body)).await.unwrap();
            let resp = reader.next().await.unwrap().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
            let el = t.elapsed();
            assert_eq!(v["id"], i + 1);
            if i as usize >= WARMUP {
                samples.push(el);
            }
        }
        samples
    }

    async fn echo_client(socket: PathBuf, n: usize) -> Vec<Duration> {
        let mut stream = UnixStream::connect(&socket).await.unwrap();
        let mut samples = Vec::with_capacity(n);
        let mut buf = vec![0u8; 4096];
        for i in 0..(n + WARMUP) as u64 {
            let req = request_bytes(i + 1);
            let t = Instant::now();
            stream.write_all(&req).await.unwrap();
            stream.read_exact(&mut buf[..req.len()]).await.unwrap();
            let el = t.elapsed();
            if i as usize >= WARMUP {
                samples.push(el);
            }
        }
        samples
    }

    fn blocking_echo_client(socket: &Path, n: usize) -> Stats {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
        let mut samples = Vec::with_capacity(n);
        let mut buf = vec![0u8; 4096];
        let t0 = Instant::now();
        for i in 0..(n + WARMUP) as u64 {
            let req = request_bytes(i + 1);
            let t = Instant::now();
            stream.write_all(&req).unwrap();
            stream.read_exact(&mut buf[..req.len()]).unwrap();
            if i as usize >= WARMUP {
                samples.push(t.elapsed());
            }
        }
        stats(samples, t0.elapsed())
    }

    fn spawn_echo(env_var: &str, path: &Path) -> std::process::Child {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(env_var, path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        child
    }

    async fn measure<F, Fut>(socket: &Path, conns: usize, each: usize, f: F) -> Stats
    where
        F: Fn(PathBuf, usize) -> Fut,
        Fut: std::future::Future<Output = Vec<Duration>> + Send + 'static,
    {
        let t = Instant::now();
        let handles: Vec<_> = (0..conns)
            .map(|_| tokio::spawn(f(socket.to_path_buf(), each)))
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        stats(all, t.elapsed())
    }

    /// Decode throughput as a connection sees it: the wire arrives in 8 KiB reads (tokio-util's
    /// read size) that are appended to the buffer and decoded, so the copy into the buffer and
    /// the header scan are both counted.
    fn codec_throughput(body_len: usize, total_bytes: usize) -> f64 {
        let body = vec![b'x'; body_len];
        let frame = crush_protocol::codec::frame(&body);
        let count = total_bytes / frame.len();
        let mut wire = Vec::with_capacity(frame.len() * count);
        for _ in 0..count {
            wire.extend_from_slice(&frame);
        }
        let mut best = f64::MAX;
        for _ in 0..5 {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut codec = LspCodec::new(usize::MAX);
            let t = Instant::now();
            let mut n = 0;
            for chunk in wire.chunks(8 * 1024) {
                buf.extend_from_slice(chunk);
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    n += f.len();
                }
            }
            best = best.min(t.elapsed().as_secs_f64());
            assert_eq!(n, body_len * count);
        }
        wire.len() as f64 / best / 1e6
    }

    fn us(d: Duration) -> String {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    }

    pub fn run() {
        let env = TestEnv::new();
        let mut daemon = env.command("crushd");
        daemon
            .arg("--foreground")
            .arg("--idle-timeout")
            .arg("0")
            .env("CRUSHD_LOG", "warn");
        let daemon = crush_tests::DaemonProcess::spawn(daemon);
        // The warn-level filter hides "listening": wait for the socket to accept instead.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&env.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "crushd did not start: {}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }

        let echo_path = env.dir.path().join("echo.sock");
        let mut echo = spawn_echo("CRUSH_BENCH_ECHO_SERVER", &echo_path);
        let blocking_path = env.dir.path().join("blocking-echo.sock");
        let mut blocking_echo = spawn_echo("CRUSH_BENCH_BLOCKING_ECHO_SERVER", &blocking_path);

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (rpc_seq, echo_seq, rpc_conc, echo_conc) = rt.block_on(async {
            let rpc_seq = measure(&env.socket, 1, SEQ_REQUESTS, rpc_client).await;
            let echo_seq = measure(&echo_path, 1, SEQ_REQUESTS, echo_client).await;
            let rpc_conc = measure(&env.socket, CONC, CONC_REQUESTS_EACH, rpc_client).await;
            let echo_conc = measure(&echo_path, CONC, CONC_REQUESTS_EACH, echo_client).await;
            (rpc_seq, echo_seq, rpc_conc, echo_conc)
        });
        let kernel_seq = blocking_echo_client(&blocking_path, SEQ_REQUESTS);
        for child in [&mut echo, &mut blocking_echo] {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(daemon);

        let small = codec_throughput(200, 64 << 20);
        let large = codec_throughput(64 << 10, 256 << 20);

        println!("## Transport benchmark\n");
        println!("| case | requests | p50 | p99 | throughput |");
        println!("|---|---|---|---|---|");
        for (name, s) in [
            ("(a) JSON-RPC `daemon/status`, 1 connection", &rpc_seq),
            (
                "(b) raw echo (tokio server and client), 1 connection",
                &echo_seq,
            ),
            (
                "(b0) raw echo (blocking threads, no runtime), 1 connection",
                &kernel_seq,
            ),
            ("(a) JSON-RPC `daemon/status`, 8 connections", &rpc_conc),
            (
                "(b) raw echo (tokio server and client), 8 connections",
                &echo_conc,
            ),
        ] {
            println!(
                "| {name} | {} | {} | {} | {:.0} req/s |",
                s.n,
                us(s.p50),
                us(s.p99),
                s.n as f64 / s.wall.as_secs_f64()
            );
        }
        println!();
        println!(
            "Ratio (a)/(b), p50: sequential {:.2}×, 8 connections {:.2}×; p99: sequential {:.2}×, 8 connections {:.2}×",
            rpc_seq.p50.as_secs_f64() / echo_seq.p50.as_secs_f64(),
            rpc_conc.p50.as_secs_f64() / echo_conc.p50.as_secs_f64(),
            rpc_seq.p99.as_secs_f64() / echo_seq.p99.as_secs_f64(),
            rpc_conc.p99.as_secs_f64() / echo_conc.p99.as_secs_f64(),
        );
        println!(
            "Ratio (a)/(b0), p50, sequential: {:.2}× (against blocking threads, no async runtime)",
            rpc_seq.p50.as_secs_f64() / kernel_seq.p50.as_secs_f64()
        );
        println!();
        println!(
            "(c) codec decode: {small:.0} MB/s with 200-byte bodies, {large:.0} MB/s with 64 KiB bodies"
        );
    }
}
