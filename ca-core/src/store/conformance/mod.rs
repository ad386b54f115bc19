//! The store contract as tests, written once against [`Store`] and run by every backend:
//! `store_conformance!(|dir| open_my_backend(dir))` in the backend's tests expands to one
//! `#[test]` per rule. Each test gets a fresh scratch directory; `open` may be called again on
//! the same directory to reopen the store.
//!
//! The rules: a serial is stored once; at most one active certificate per device and usage,
//! even under concurrent writers; a replaced certificate is revoked in the same write;
//! all-or-nothing commits; revocations are final and listed by shard; a request ID is bound to
//! one body, even under concurrent claims; counters never go back and reservations never
//! overlap; meter moves are compare-and-swap; accounts and suppliers are created once; journals
//! round-trip; a refused operation aborts its whole transaction; the audit record commits with
//! the change (and nothing is written without it); everything survives a reopen.
//!
//! The rules are grouped by topic: `certificates` (storing, the one active certificate,
//! replacement, all-or-nothing commits, revocation), `batches` (batch claims, counters and
//! meter moves), `records` (accounts, suppliers, journals, refused transactions and the audit
//! stage) and `reopen`; `helpers` holds the records and calls they share. Every rule is
//! re-exported here, where [`store_conformance!`](crate::store_conformance) finds it.

use std::path::Path;
use std::sync::Arc;

use crate::store::Store;

mod batches;
mod certificates;
mod helpers;
mod records;
mod reopen;

pub use batches::{
    batch_claims_bind_a_request_id_to_one_body_under_concurrency,
    counters_never_go_back_and_reservations_never_overlap, meter_moves_are_compare_and_swap,
};
pub use certificates::{
    a_key_is_bound_to_one_subject_and_usage, a_newer_generation_recertifies_the_same_key,
    a_serial_is_never_stored_twice, all_or_nothing_commits_store_nothing_when_one_item_is_refused,
    certificates_round_trip_and_are_indexed, generations_keep_their_own_revocations,
    one_active_certificate_per_device_and_usage_under_concurrency,
    replace_supersedes_and_revokes_the_old_certificate, revocation_is_final_and_listed_by_shard,
    revocations_are_read_a_page_at_a_time,
};
pub use records::{
    a_refused_operation_aborts_the_whole_transaction,
    accounts_are_created_once_and_found_by_certificate, operation_journals_round_trip,
    published_crls_replace_only_older_versions, suppliers_are_registered_once,
    the_audit_record_commits_with_the_change,
};
pub use reopen::{a_store_checks_clean_and_copies_entry_for_entry, everything_survives_a_reopen};

/// Opens (creating) a store of the backend under test in a scratch directory.
pub trait Harness: Sync {
    /// The store kept in `dir` (a fresh, empty directory the first time).
    fn open(&self, dir: &Path) -> Arc<dyn Store>;
}

impl<F: Fn(&Path) -> Arc<dyn Store> + Sync> Harness for F {
    fn open(&self, dir: &Path) -> Arc<dyn Store> {
        self(dir)
    }
}

/// Expands to one `#[test]` per rule of the store contract, for the backend `harness` opens.
#[macro_export]
macro_rules! store_conformance {
    ($harness:expr) => {
        $crate::store_conformance!(@tests $harness;
            certificates_round_trip_and_are_indexed,
            a_serial_is_never_stored_twice,
            a_key_is_bound_to_one_subject_and_usage,
            one_active_certificate_per_device_and_usage_under_concurrency,
            replace_supersedes_and_revokes_the_old_certificate,
            all_or_nothing_commits_store_nothing_when_one_item_is_refused,
            revocation_is_final_and_listed_by_shard,
            revocations_are_read_a_page_at_a_time,
            generations_keep_their_own_revocations,
            a_newer_generation_recertifies_the_same_key,
            batch_claims_bind_a_request_id_to_one_body_under_concurrency,
            counters_never_go_back_and_reservations_never_overlap,
            meter_moves_are_compare_and_swap,
            accounts_are_created_once_and_found_by_certificate,
            suppliers_are_registered_once,
            operation_journals_round_trip,
            a_refused_operation_aborts_the_whole_transaction,
            the_audit_record_commits_with_the_change,
            published_crls_replace_only_older_versions,
            everything_survives_a_reopen,
            a_store_checks_clean_and_copies_entry_for_entry
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let dir = ::tempfile::tempdir().expect("scratch directory");
                $crate::store::conformance::$name(&$harness, dir.path());
            }
        )*
    };
}
