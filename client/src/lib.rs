//! crush-client: what any Rust program needs to talk to crushd. It connects to the per-user
//! socket (starting the daemon on demand), performs the `initialize` handshake, offers typed
//! calls for every protocol method, a stream of daemon notifications, and a handler for
//! daemon→client requests. [`ReconnectingClient`] does the same across dropped connections:
//! it reconnects by itself and hands its caller every session event once and every run's end
//! exactly once. With [`ConnectOptions::remote`] both reach a daemon on another machine over
//! SSH ([`remote`]). The `crushctl` binary is a thin layer over it.

pub mod autostart;
pub mod connection;
pub mod error;
pub mod reconnect;
pub mod remote;

pub use connection::{Client, ConnectOptions, IncomingNotification, RequestHandler};
pub use error::ClientError;
pub use reconnect::{
    ClientEvent, OutcomeState, ReconnectPolicy, Reconnected, ReconnectingClient, Resync, RunOutcome,
};
pub use remote::{Remote, RemoteHost};
