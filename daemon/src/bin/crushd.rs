//! The `crushd` binary: flags → config → logging → runtime → `server::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};

use crushd::config::{self, Config, DaemonSection, DaemonSettings};
use crushd::server::DaemonError;
use crushd::setting::IdleTimeout;
use crushd::transport::TransportError;

/// Exit status when another daemon already runs (EX_TEMPFAIL); crush-client relies on it.
const EXIT_ALREADY_RUNNING: u8 = 75;

/// Exit status when the config file is unusable, as with `--check-config`; crush-client relies
/// on it to report the problem as a configuration error rather than a failed start.
const EXIT_CONFIG: u8 = 2;

/// Per-user daemon that runs AI coding-agent sessions for editors and the command line.
///
/// Clients (crushctl, editor plugins) start it on demand; you rarely run it by hand. It speaks
/// JSON-RPC 2.0 with LSP framing on a private Unix socket.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Log to stderr instead of the log file.
    #[arg(long)]
    foreground: bool,
    /// Socket path [default: $XDG_RUNTIME_DIR/crushd/crushd.sock].
    #[arg(long, env = crush_protocol::paths::SOCKET_ENV)]
    socket: Option<PathBuf>,
    /// Config file [default: $XDG_CONFIG_HOME/crushd/config.toml].
    #[arg(long)]
    config: Option<PathBuf>,
    // The next three set `[daemon]` keys: their help is the key's doc in config.rs
    // (`DAEMON_KEY_FLAGS`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, value_parser = parse_idle)]
    idle_timeout: Option<IdleTimeout>,
    #[arg(long)]
    max_message_size: Option<usize>,
    /// Check the config file (and the default model it names) and exit: 0 when it is usable,
    /// 2 with every problem named (file, line, key) when it is not. Starts nothing.
    #[arg(long)]
    check_config: bool,
    /// Enable the debug/* diagnostic methods (for tests and client development).
    #[arg(long, hide = true)]
    debug_methods: bool,
    /// Internal: standard input carries the provider keys (the daemon re-ran itself to take
    /// them out of its environment block; see crushd::secrets::handover).
    #[arg(long = "secrets-on-stdin", hide = true)]
    secrets_on_stdin: bool,
}

/// The flags that set a `[daemon]` key of the same name.
const DAEMON_KEY_FLAGS: [&str; 3] = ["data_dir", "idle_timeout", "max_message_size"];

/// The command line, with each `[daemon]` flag's help taken from its setting's row, so the flag
/// and the config file describe a key in the same words, written once.
fn command() -> clap::Command {
    DAEMON_KEY_FLAGS.iter().fold(Args::command(), |cmd, key| {
        cmd.mut_arg(*key, |a| a.help(DaemonSettings::doc(key)))
    })
}

fn parse_idle(s: &str) -> Result<IdleTimeout, String> {
    s.parse()
}

fn main() -> ExitCode {
    // `crushd --tool-guard -c COMMAND`: the daemon runs its own binary as the guard of a bash
    // tool call (daemon/src/tools/guard.rs). Not a clap flag: it is internal, and the command
    // must reach the shell untouched.
    #[cfg(unix)]
    {
        let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
        if raw.get(1).is_some_and(|a| a == crushd::tools::guard::FLAG) {
            return crushd::tools::guard::main(&raw[2..]);
        }
    }
    // First of all: no other process of this user (a tool command above all) may read this
    // one's memory, environment or descriptors (ARCHITECTURE.md "Secrets").
    if let Err(e) = crushd::secrets::make_undumpable() {
        eprintln!("crushd: cannot make the process non-dumpable: {e}");
        return ExitCode::FAILURE;
    }
    let args = Args::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    if args.check_config {
        return check_config(&args);
    }
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crushd: {e:#}");
            tracing::error!("{e:#}");
            let already_running = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<DaemonError>(),
                    Some(DaemonError::Transport(
                        TransportError::AlreadyRunning { .. }
                    ))
                ) || matches!(
                    c.downcast_ref::<TransportError>(),
                    Some(TransportError::AlreadyRunning { .. })
                )
            });
            let bad_config = e
                .chain()
                .any(|c| c.downcast_ref::<config::ConfigError>().is_some());
            if already_running {
                // Tells an autostarting client it lost the start race and should just connect.
                ExitCode::from(EXIT_ALREADY_RUNNING)
            } else if bad_config {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `--check-config`: what the daemon would say about its config file at start-up, and whether
/// the default model it names can be used with this environment.
fn check_config(args: &Args) -> ExitCode {
    let (path, must_exist) = match &args.config {
        Some(p) => (Some(p.clone()), true),
        None => (config::default_config_path(), false),
    };
    let Some(path) = path else {
        println!("no config file location (no home directory); the defaults apply");
        return ExitCode::SUCCESS;
    };
    let mut cfg = Config::new(crush_protocol::paths::resolve_socket(
        args.socket.as_deref(),
    ));
    match config::load_file(&path, must_exist) {
        Ok(None) => {
            println!("{}: no such file; the defaults apply", path.display());
            return ExitCode::SUCCESS;
        }
        Ok(Some(file)) => cfg.apply_file(&file),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    cfg.apply_env();
    let models = crushd::model::Models::from_config(&cfg.models);
    match models.default_name() {
        Some(name) => {
            if let Err(e) = models.check(name) {
                eprintln!(
                    "{}: default_model {name:?}: {} (checked in this environment)",
                    path.display(),
                    e.message
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            println!("{}: ok (default model {name})", path.display());
        }
        None => println!("{}: ok (no default model)", path.display()),
    }
    ExitCode::SUCCESS
}

fn real_main(args: Args) -> anyhow::Result<()> {
    let mut cfg = Config::new(crush_protocol::paths::resolve_socket(
        args.socket.as_deref(),
    ));
    let (config_path, must_exist) = match &args.config {
        Some(p) => (Some(p.clone()), true),
        None => (config::default_config_path(), false),
    };
    if let Some(path) = config_path
        && let Some(file) = config::load_file(&path, must_exist)?
    {
        cfg.apply_file(&file);
    }
    cfg.apply_env();
    // The flags are `[daemon]` keys given on the command line: the same overlay as the file's.
    cfg.daemon.apply(&DaemonSection {
        idle_timeout: args.idle_timeout,
        max_message_size: args.max_message_size,
        data_dir: args.data_dir,
        ..DaemonSection::default()
    });
    cfg.debug_methods = args.debug_methods;
    take_keys_out_of_the_environment(args.secrets_on_stdin, &cfg)?;
    // Everything the daemon creates (database, logs, lock) is private whatever umask it was
    // started with; tools get the user's umask back (crushd::tools::user_umask). After the
    // re-run above, which keeps the umask, so this reads the user's.
    #[cfg(unix)]
    {
        let user = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        crushd::tools::set_user_umask(user.bits() & 0o777);
    }
    crushd::tools::set_allow_env(cfg.permissions.allow_env.clone());

    #[cfg(unix)]
    if !args.foreground {
        // Detach from the starting client's session so its terminal closing does not reach us.
        // Fails harmlessly when we already lead a session.
        let _ = rustix::process::setsid();
    }
    let _guard = crushd::logging::init(args.foreground, &cfg.state_dir)?;
    // Bash tool calls run under a guard started from this binary, so they die with the daemon.
    #[cfg(unix)]
    if let Some(program) = crushd::tools::guard::own_program() {
        crushd::tools::guard::install(program);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crushd")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(crushd::server::run(cfg))?;
    Ok(())
}

/// Puts the provider keys in the in-memory key store and makes sure this process's environment
/// block holds no secret: when it does, re-runs this binary in place without them (Linux; see
/// `crushd::secrets::handover`). Elsewhere the keys are read from the environment as it is.
fn take_keys_out_of_the_environment(secrets_on_stdin: bool, cfg: &Config) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use crushd::secrets::handover;
        if secrets_on_stdin {
            let keys = handover::receive().context("cannot read the keys handed over on stdin")?;
            crushd::secrets::install(keys);
            return Ok(());
        }
        let mut key_vars = crushd::model::Models::from_config(&cfg.models).key_variables();
        // The variables MCP servers' HTTP headers are read from are handed over like API keys.
        key_vars.extend(cfg.mcp.iter().flat_map(|m| m.headers_env.values().cloned()));
        let plan = handover::plan(
            std::env::vars_os().collect(),
            &key_vars,
            &cfg.permissions.allow_env,
        );
        if plan.must_reexec {
            let mut argv = std::env::args_os();
            let argv0 = argv.next().unwrap_or_else(|| "crushd".into());
            let original: Vec<std::ffi::OsString> = argv.collect();
            let e = handover::reexec(&plan, &argv0, &original);
            anyhow::bail!("cannot re-run crushd without the secrets in its environment: {e}");
        }
        crushd::secrets::install(plan.keys);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (secrets_on_stdin, cfg);
    Ok(())
}
