//! Locking shared by the daemon's modules.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning: a poisoned lock only means a panic elsewhere mid-update, and
/// every structure behind our locks stays usable after one (no invariant spans a panic point).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
