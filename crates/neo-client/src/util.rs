//! Small helpers shared by the modules.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use neo_net::Token;

/// Locks a mutex; a panic while it was held cannot leave our maps in a
/// state worse than a lost update, so poisoning is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A token no other request of the client carries: answers are routed by
/// token, which must not repeat on a connection.
pub(crate) fn next_token() -> Token {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Token(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// xorshift64*: enough randomness to spread reads over replicas, without a
/// dependency or a shared generator lock.
pub(crate) fn next_random(state: &AtomicU64) -> u64 {
    let mut x = state.load(Ordering::Relaxed);
    loop {
        let mut next = x;
        next ^= next >> 12;
        next ^= next << 25;
        next ^= next >> 27;
        match state.compare_exchange_weak(x, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next.wrapping_mul(0x2545_f491_4f6c_dd1d),
            Err(current) => x = current,
        }
    }
}

/// A seed for [`next_random`]: never zero.
pub(crate) fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ (std::process::id() as u64).rotate_left(32)) | 1
}
