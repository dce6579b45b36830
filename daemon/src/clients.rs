//! Who holds what: every client the daemon knows by its `clientId`, the workspaces it claims,
//! and what a client whose connection dropped leaves behind for its grace period (its claims,
//! and its subscriptions with the seq the daemon last wrote to it).
//!
//! A client that reconnects with the same `clientId` within the grace period takes all of it
//! back ([`Clients::attach`]); after the grace period it is released ([`Clients::expire`]). A
//! clean `shutdown`, or a connection that never gave a `clientId` (it cannot come back as the
//! same client), releases everything at once.
//!
//! Architecture invariant: claims only keep a workspace loaded; they never own runs. A run
//! belongs to its workspace and ends the same whether zero or ten clients hold a claim.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crush_protocol::WorkspaceClaim;

use crate::peer::Peer;
use crate::sync::lock;

/// At most this many disconnected clients are kept for their grace period at once.
pub const MAX_PARKED: usize = 1024;

/// One subscription a client had: the session and the seq of the last event written to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptSubscription {
    pub session_id: String,
    pub cursor: Option<u64>,
}

/// What a reconnecting client gets back.
#[derive(Debug, Default)]
pub struct Resumed {
    pub claims: usize,
    pub subscriptions: Vec<KeptSubscription>,
}

/// What became of a client whose connection closed.
#[derive(Debug)]
pub enum Detached {
    /// Nothing is kept (clean shutdown, no `clientId`, or no grace period).
    Released,
    /// Kept until the expiry.
    Parked(Expiry),
    /// Another connection already speaks for the client.
    TakenOver(Arc<Peer>),
    /// The connection never registered (it did not initialize).
    Unknown,
}

/// A client gone quiet: when to release it, and which detach parked it.
#[derive(Debug, Clone)]
pub struct Expiry {
    pub client_id: String,
    pub generation: u64,
    pub at: Instant,
    /// Fired when the client is no longer parked before `at` (it came back, or was released
    /// early), so its timer ends at once instead of sleeping out the grace period.
    pub gone: CancellationToken,
}

#[derive(Debug)]
struct ClientState {
    name: Option<String>,
    /// The connection speaking for the client now (`None` while parked).
    conn: Option<Arc<Peer>>,
    claims: BTreeSet<String>,
    parked: Option<Parked>,
}

#[derive(Debug)]
struct Parked {
    subscriptions: Vec<KeptSubscription>,
    expires: Instant,
    generation: u64,
    gone: CancellationToken,
}

pub struct Clients {
    grace: Duration,
    map: Mutex<HashMap<String, ClientState>>,
    next_generation: Mutex<u64>,
    /// Number of parked clients (the daemon's idle exit waits for them).
    parked: watch::Sender<usize>,
    /// Parked clients released before their grace period ended, to stay under [`MAX_PARKED`].
    released_early: AtomicU64,
}

impl Clients {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            map: Mutex::default(),
            next_generation: Mutex::new(0),
            parked: watch::Sender::new(0),
            released_early: AtomicU64::new(0),
        }
    }

    pub fn watch_parked(&self) -> watch::Receiver<usize> {
        self.parked.subscribe()
    }

    fn count_parked(&self, map: &HashMap<String, ClientState>) {
        let n = map.values().filter(|c| c.parked.is_some()).count();
        self.parked.send_if_modified(|cur| {
            let changed = *cur != n;
            *cur = n;
            changed
        });
    }

    /// An initialized connection speaks for its client from now on. When the client was parked
    /// (or another connection still spoke for it), what it held is returned.
    pub fn attach(&self, peer: &Arc<Peer>) -> Option<Resumed> {
        let id = peer.client_id();
        let name = peer.identity().and_then(|i| i.name);
        let mut map = lock(&self.map);
        let entry = map.entry(id).or_insert_with(|| ClientState {
            name: name.clone(),
            conn: None,
            claims: BTreeSet::new(),
            parked: None,
        });
        entry.name = name;
        let resumed = if let Some(p) = entry.parked.take() {
            p.gone.cancel();
            Some(Resumed {
                claims: entry.claims.len(),
                subscriptions: p.subscriptions,
            })
        } else if let Some(old) = entry.conn.as_ref().filter(|old| old.id != peer.id) {
            // The old connection has not noticed it is dead yet: take over what it follows.
            Some(Resumed {
                claims: entry.claims.len(),
                subscriptions: kept_subscriptions(old),
            })
        } else {
            None
        };
        entry.conn = Some(peer.clone());
        self.count_parked(&map);
        resumed.filter(|r| r.claims > 0 || !r.subscriptions.is_empty())
    }

    /// The connection's client claims the workspace. Returns the number of claims on it.
    pub fn claim(&self, peer: &Peer, workspace_id: &str) -> usize {
        let mut map = lock(&self.map);
        if let Some(c) = map.get_mut(&peer.client_id()) {
            c.claims.insert(workspace_id.to_owned());
        }
        map.values()
            .filter(|c| c.claims.contains(workspace_id))
            .count()
    }

    /// Releases the client's claim. Returns whether it held one and how many others remain.
    pub fn release(&self, peer: &Peer, workspace_id: &str) -> (bool, usize) {
        let mut map = lock(&self.map);
        let released = map
            .get_mut(&peer.client_id())
            .is_some_and(|c| c.claims.remove(workspace_id));
        let remaining = map
            .values()
            .filter(|c| c.claims.contains(workspace_id))
            .count();
        (released, remaining)
    }

    /// The connection closed. A clean shutdown, or a client without a chosen id, releases
    /// everything; otherwise the client is parked with `subscriptions` until the returned
    /// expiry. Nothing happens when another connection already took the client over.
    pub fn detach(
        &self,
        peer: &Peer,
        clean: bool,
        subscriptions: Vec<KeptSubscription>,
    ) -> Detached {
        let id = peer.client_id();
        let explicit = peer.identity().is_some_and(|i| i.explicit_id);
        let mut map = lock(&self.map);
        let Some(entry) = map.get_mut(&id) else {
            return Detached::Unknown;
        };
        match &entry.conn {
            Some(c) if c.id == peer.id => {}
            Some(c) => return Detached::TakenOver(c.clone()),
            None => return Detached::Unknown,
        }
        entry.conn = None;
        // A client that holds nothing has nothing to come back to: parking it would only
        // delay the idle exit (and let a flood of throwaway ids pile up).
        let holds_nothing = entry.claims.is_empty() && subscriptions.is_empty();
        if clean || !explicit || self.grace.is_zero() || holds_nothing {
            map.remove(&id);
            self.count_parked(&map);
            return Detached::Released;
        }
        // `entry` is not parked yet, so making room never releases it.
        self.make_room(&mut map);
        let Some(entry) = map.get_mut(&id) else {
            return Detached::Unknown;
        };
        let generation = {
            let mut g = lock(&self.next_generation);
            *g += 1;
            *g
        };
        // A grace period too long to represent is as good as a day.
        let now = Instant::now();
        let at = now
            .checked_add(self.grace)
            .unwrap_or(now + Duration::from_secs(86_400));
        let gone = CancellationToken::new();
        entry.parked = Some(Parked {
            subscriptions,
            expires: at,
            generation,
            gone: gone.clone(),
        });
        self.count_parked(&map);
        Detached::Parked(Expiry {
            client_id: id,
            generation,
            at,
            gone,
        })
    }

    /// Keeps the parked clients under [`MAX_PARKED`] by releasing the one closest to its
    /// expiry: a flood of clients that claim something and vanish cannot grow the map without
    /// bound (each would otherwise stay for the whole grace period).
    fn make_room(&self, map: &mut HashMap<String, ClientState>) {
        // `count_parked` keeps the watched count current after every change to the map.
        if *self.parked.borrow() < MAX_PARKED {
            return;
        }
        let oldest = map
            .iter()
            .filter_map(|(id, c)| c.parked.as_ref().map(|p| (p.expires, id.clone())))
            .min();
        if let Some((_, id)) = oldest {
            if let Some(p) = map.remove(&id).and_then(|c| c.parked) {
                p.gone.cancel();
            }
            // Logged at the 1st, 2nd, 4th, 8th… time, so a flood cannot fill the disk with it.
            let n = self.released_early.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(
                    client = %id,
                    limit = MAX_PARKED,
                    released_early = n,
                    "too many disconnected clients waiting to reconnect; released the oldest early"
                );
            }
        }
    }

    /// The grace period of a parked client ended: release it, unless it came back (or was
    /// parked again since). Returns whether it was released.
    pub fn expire(&self, e: &Expiry) -> bool {
        let mut map = lock(&self.map);
        let gone = map
            .get(&e.client_id)
            .and_then(|c| c.parked.as_ref())
            .is_some_and(|p| p.generation == e.generation);
        if gone {
            map.remove(&e.client_id);
            self.count_parked(&map);
        }
        gone
    }

    /// Whether any client, connected or parked, claims the workspace.
    pub fn holds(&self, workspace_id: &str) -> bool {
        lock(&self.map)
            .values()
            .any(|c| c.claims.contains(workspace_id))
    }

    /// Sessions parked clients will want back.
    pub fn parked_sessions(&self) -> HashSet<String> {
        lock(&self.map)
            .values()
            .filter_map(|c| c.parked.as_ref())
            .flat_map(|p| p.subscriptions.iter().map(|s| s.session_id.clone()))
            .collect()
    }

    /// The claims on a workspace, for `workspace/list`.
    pub fn claims_on(&self, workspace_id: &str) -> Vec<WorkspaceClaim> {
        let now = Instant::now();
        let map = lock(&self.map);
        let mut out: Vec<WorkspaceClaim> = map
            .iter()
            .filter(|(_, c)| c.claims.contains(workspace_id))
            .map(|(id, c)| WorkspaceClaim {
                client_id: id.clone(),
                name: c.name.clone(),
                connected: c.conn.is_some(),
                expires_in_ms: c
                    .parked
                    .as_ref()
                    .map(|p| p.expires.saturating_duration_since(now).as_millis() as u64),
            })
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }
}

/// A connection's subscriptions (as they were when it began to close, if it did) with the seq
/// last written to it.
pub fn kept_subscriptions(peer: &Peer) -> Vec<KeptSubscription> {
    let written = peer.outbound().written();
    let mut subs: Vec<KeptSubscription> = peer
        .followed()
        .into_iter()
        .map(|s| KeptSubscription {
            cursor: written.get(s.as_str()).copied(),
            session_id: s,
        })
        .collect();
    subs.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    subs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::outbound::Outbound;
    use crate::peer::ClientIdentity;

    fn peer(conn: u64, client_id: &str) -> Arc<Peer> {
        let p = Arc::new(Peer::new(conn, Outbound::with_merging(usize::MAX, false)));
        p.set_identity(ClientIdentity {
            name: None,
            version: None,
            client_id: client_id.to_owned(),
            explicit_id: true,
        });
        p
    }

    fn parked(c: &Clients) -> usize {
        *c.watch_parked().borrow()
    }

    #[test]
    fn a_client_that_holds_nothing_is_released_at_once() {
        let c = Clients::new(Duration::from_secs(30));
        let p = peer(1, "empty");
        assert!(c.attach(&p).is_none());
        assert!(matches!(
            c.detach(&p, false, Vec::new()),
            Detached::Released
        ));
        assert_eq!(parked(&c), 0, "nothing keeps the daemon up for it");
        assert!(lock(&c.map).get("empty").is_none(), "forgotten, not kept");
    }

    #[tokio::test]
    async fn a_client_with_a_claim_or_a_subscription_is_parked_and_resumes() {
        let c = Clients::new(Duration::from_secs(30));
        let a = peer(1, "claims");
        c.attach(&a);
        c.claim(&a, "ws-1");
        assert!(matches!(
            c.detach(&a, false, Vec::new()),
            Detached::Parked(_)
        ));
        let b = peer(2, "subscribes");
        c.attach(&b);
        let kept = vec![KeptSubscription {
            session_id: "s".into(),
            cursor: Some(7),
        }];
        assert!(matches!(
            c.detach(&b, false, kept.clone()),
            Detached::Parked(_)
        ));
        assert_eq!(parked(&c), 2);
        let r = c.attach(&peer(3, "claims")).unwrap();
        assert_eq!(r.claims, 1);
        let r = c.attach(&peer(4, "subscribes")).unwrap();
        assert_eq!(r.subscriptions, kept);
        assert_eq!(parked(&c), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn parked_clients_are_bounded_and_the_oldest_goes_first() {
        let c = Clients::new(Duration::from_secs(30));
        let mut expiries = Vec::new();
        for i in 0..MAX_PARKED + 10 {
            let p = peer(i as u64 + 1, &format!("c{i}"));
            c.attach(&p);
            c.claim(&p, "ws");
            match c.detach(&p, false, Vec::new()) {
                Detached::Parked(e) => expiries.push(e),
                other => panic!("{other:?}"),
            }
            // Distinct expiries, so "oldest" is well defined.
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(parked(&c), MAX_PARKED);
        assert!(
            expiries[..10].iter().all(|e| e.gone.is_cancelled()),
            "the timers of the clients released early end at once"
        );
        assert!(!expiries[10].gone.is_cancelled());
        // The first ten were released early; the eleventh and the last are still kept.
        assert!(c.attach(&peer(100_000, "c0")).is_none());
        assert!(c.attach(&peer(100_001, "c9")).is_none());
        assert!(c.attach(&peer(100_002, "c10")).is_some());
        let last = format!("c{}", MAX_PARKED + 9);
        assert!(c.attach(&peer(100_003, &last)).is_some());
    }
}
