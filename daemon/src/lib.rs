//! crushd: a per-user daemon that runs AI coding-agent sessions for editors and the command
//! line. This library holds everything; the `crushd` binary only parses flags and calls
//! [`server::run`]. See ARCHITECTURE.md for the map.

pub mod clients;
pub mod config;
pub(crate) mod connection;
pub mod inbound;
pub mod logging;
pub mod mcp;
pub mod model;
pub mod outbound;
pub mod peer;
pub mod permission_rules;
pub(crate) mod rpc;
pub(crate) mod runs;
pub mod secrets;
pub mod server;
pub mod setting;
pub(crate) mod shared;
pub mod snapshots;
pub mod store;
pub mod sync;
pub mod tools;
pub mod transport;
