//! Order-keeping parallel map over a few worker threads: each worker signs with one HSM session
//! at a time, so this is how issuance and trust-anchor updates sign in parallel.
//!
//! The workers are long-lived (one rayon pool per worker count, made on first use). The first
//! version spawned fresh scoped threads for every chunk: in the API server that was two threads
//! born and gone per 1,000 certificates, and each departing thread left its allocator pages
//! behind with blocks still in use elsewhere (the certificates it built). Measured with
//! mimalloc's statistics, those abandoned pages were most of the server's resident memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

/// The pool with `workers` threads, made once.
fn pool(workers: usize) -> Arc<rayon::ThreadPool> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    pools
        .entry(workers)
        .or_insert_with(|| {
            Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(workers)
                    .thread_name(|i| format!("meterpki-sign-{i}"))
                    .build()
                    .expect("starting the signing threads"),
            )
        })
        .clone()
}

/// Maps `f` over `items` on `workers` threads, keeping order. A panic in `f` is raised here.
pub(crate) fn par_map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> R + Sync + Send,
) -> Vec<R> {
    if workers <= 1 || items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    // One item per task: an item is a signature, long enough to be worth a task of its own.
    pool(workers).install(|| items.par_iter().with_max_len(1).map(f).collect())
}

/// `par_map` over owned items.
pub(crate) fn par_map_owned<T: Send, R: Send>(
    items: Vec<T>,
    workers: usize,
    f: impl Fn(T) -> R + Sync + Send,
) -> Vec<R> {
    if workers <= 1 || items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    pool(workers).install(|| items.into_par_iter().with_max_len(1).map(f).collect())
}
