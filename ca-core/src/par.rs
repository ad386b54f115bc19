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

/// Which pool: the signing threads (one per HSM session), or the CPU threads that parse
/// requests. Kept apart because a stage that only computes (checking a chunk's CSRs) would
/// otherwise take every signing thread, and the HSMs would wait with nothing to sign: measured
/// with two tokens limited to 1,500 signatures/s each, issuance reached 83 % of their rate with
/// one pool, whatever its size, because each chunk's CSR checks stopped all signing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Pool {
    /// Signing: `workers` threads.
    Sign,
    /// Parsing: as many threads as the machine has cores.
    Cpu,
}

/// The pool of `kind` with `workers` threads, made once.
fn pool(kind: Pool, workers: usize) -> Arc<rayon::ThreadPool> {
    type Pools = HashMap<(Pool, usize), Arc<rayon::ThreadPool>>;
    static POOLS: OnceLock<Mutex<Pools>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    pools
        .entry((kind, workers))
        .or_insert_with(|| {
            Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(workers)
                    .thread_name(move |i| match kind {
                        Pool::Sign => format!("meterpki-sign-{i}"),
                        Pool::Cpu => format!("meterpki-cpu-{i}"),
                    })
                    .build()
                    .expect("starting the signing threads"),
            )
        })
        .clone()
}

/// The machine's cores (the CPU pool's size).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// `par_map` on the CPU pool: work that never waits on an HSM.
pub(crate) fn par_map_cpu<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> R + Sync + Send,
) -> Vec<R> {
    let workers = cores();
    if workers <= 1 || items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    pool(Pool::Cpu, workers).install(|| items.par_iter().map(f).collect())
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
    pool(Pool::Sign, workers).install(|| items.par_iter().with_max_len(1).map(f).collect())
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
    pool(Pool::Sign, workers).install(|| items.into_par_iter().with_max_len(1).map(f).collect())
}
