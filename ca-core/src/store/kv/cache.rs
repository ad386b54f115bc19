//! A read-ahead view of a store: the values of keys a batch will look up, read in one round
//! trip, answering the point reads of the issuance policy (the active certificate, the key
//! binding, the compromised-key mark, the supplier) for every item of the batch. What it has
//! not read ahead it reads from the store. The policy's reads are advice (the store's
//! transaction checks every rule again), so a value that changed since is caught there.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Entries, KvBackend, KvStore, WriteBody};
use crate::store::{ApplyError, Store, StoreError};

/// Point reads from a map, else from the store.
pub(crate) struct ReadAhead {
    store: Arc<dyn Store>,
    values: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

/// A [`Store`] answering point reads from `keys` read ahead in one go (and the certificates
/// their values name: the active certificates and key bindings). Only point reads: a range
/// read, a write or a lease through it is refused (the policy makes none).
pub(crate) fn read_ahead(
    store: Arc<dyn Store>,
    mut keys: Vec<Vec<u8>>,
) -> Result<Arc<dyn Store>, StoreError> {
    keys.sort_unstable();
    keys.dedup();
    let values = store.raw_get_many(&keys)?;
    let mut map: HashMap<Vec<u8>, Option<Vec<u8>>> = keys.into_iter().zip(values).collect();
    // The certificates that the active-certificate and key-binding entries name.
    let mut named: Vec<Vec<u8>> = map
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.first(),
                Some(&super::codec::ACTIVE) | Some(&super::codec::KEY_OF)
            )
        })
        .filter_map(|(_, v)| v.as_ref().map(|serial| super::codec::cert_key(serial)))
        .filter(|k| !map.contains_key(k))
        .collect();
    named.sort_unstable();
    named.dedup();
    let values = store.raw_get_many(&named)?;
    map.extend(named.into_iter().zip(values));
    Ok(Arc::new(KvStore {
        backend: ReadAhead { store, values: map },
    }))
}

fn not_here() -> StoreError {
    StoreError::Refused("a read-ahead view answers point reads only".into())
}

impl KvBackend for ReadAhead {
    fn name(&self) -> &'static str {
        self.store.backend()
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.values.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.store.raw_get(key),
        }
    }

    fn scan_prefix(&self, _: &[u8], _: Option<usize>) -> Result<Entries, StoreError> {
        Err(not_here())
    }

    fn keys_from(&self, _: &[u8], _: &[u8], _: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        Err(not_here())
    }

    fn count_prefix(&self, _: &[u8]) -> Result<u64, StoreError> {
        Err(not_here())
    }

    fn lease(&self, _: &str) -> Result<Box<dyn std::any::Any + Send>, StoreError> {
        Err(not_here())
    }

    fn entries_from(&self, _: &[u8], _: usize) -> Result<Entries, StoreError> {
        Err(not_here())
    }

    fn entries_under(&self, _: &[u8], _: &[u8], _: usize) -> Result<Entries, StoreError> {
        Err(not_here())
    }

    fn advance(&self, _: &[u8], _: u64, _: &str) -> Result<u64, StoreError> {
        Err(not_here())
    }

    fn write(&self, _: &mut WriteBody<'_>) -> Result<Result<(), StoreError>, ApplyError> {
        Err(not_here().into())
    }
}
