//! The audit journal's contract, [`AuditJournal`]: where audit events wait, durably, between the
//! moment a source hands them over (the apiserver's webhook backend, a followed log file, `histor
//! audit ingest`) and the moment the audit witness has used them; and the memory of which events
//! were already taken, so that an event a source repeats is taken once.
//!
//! It also keeps what the witness learns from the entries it takes out, as API usage: counts per
//! series (an endpoint × client the caller encodes) and hour, added in the same atomic write as
//! the [`done`](AuditJournal::done) that takes the entries out, so that every event is counted
//! exactly once.
//!
//! The contract knows nothing of audit events: an entry is a key the caller derives (from the
//! audit ID, stage and receipt time), a time, and bytes the caller encodes. Each engine implements it next to
//! its events; the in-memory reference is [`mem`]; one conformance suite holds every engine to it.

use crate::Result;
use crate::usage::Counts;
use jiff::Timestamp;

#[cfg(test)]
pub(crate) mod conformance;
pub mod mem;

pub use self::mem::MemAudit;

/// Where an entry stands in the queue: [`AuditJournal::queued`] hands entries out in this
/// order, which is the order they were appended in (on a shared database, roughly: appends of
/// two replicas at once may interleave).
pub type AuditSeq = u64;

/// One audit event as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// What names the event: the same key is the same event, whatever the source.
    pub key: [u8; 16],
    /// When it happened (its stage time): what [`AuditJournal::forget`] goes by.
    pub at: Timestamp,
    /// What the caller keeps of it, byte for byte.
    pub value: Vec<u8>,
}

/// Usage counted in one hour for one series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    /// Start of the hour, Unix seconds (UTC).
    pub hour: i64,
    /// What was called by whom, as the caller encodes it: rows with equal bytes are one series.
    pub series: Vec<u8>,
    /// The counts.
    pub counts: Counts,
}

/// How much the journal holds, for gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditCounts {
    /// Entries queued and not yet [`done`](AuditJournal::done).
    pub queued: u64,
    /// Keys remembered for dedupe (queued entries included).
    pub keys: u64,
}

/// Durable storage of the audit journal: the contract each engine keeps.
///
/// **Exactly once.** [`append`](AuditJournal::append) queues an entry only when its key is not
/// remembered: not queued, and not taken before unless [`forget`](AuditJournal::forget) has
/// dropped the key since. Within one call the first of several entries with one key is the one
/// queued. Keys are remembered after [`done`](AuditJournal::done), so a source that repeats
/// itself (a webhook batch retried, a log read again after a restart, the same events from the
/// webhook and from the log) adds nothing.
///
/// **Queue.** [`queued`](AuditJournal::queued) returns queued entries in [`AuditSeq`] order, at
/// most `limit`, each byte for byte as appended, from the oldest or from after a given seq (a
/// reader that leaves some entries queued for later reads past them); it does not take them out. `done` takes them
/// out; taking out an entry that is not queued is not an error.
///
/// **Usage.** `done` adds its usage rows to the stored ones (calls and code classes summed,
/// first seen the earliest, last seen the latest) in the same atomic write, and only when it
/// takes out at least one queued entry: a `done` repeated for entries already out adds nothing.
///
/// **Durable on return.** When `append` returns `Ok`, what it queued survives a crash; so do
/// `done` and `forget` (losing one of them would only hand an entry out again or keep a key
/// longer, but engines make them durable all the same). Each call takes effect whole or not at
/// all. Calls from several tasks or replicas at once each see the others whole.
///
/// **Blocking.** Methods block on I/O, like [`EventStore`](super::EventStore)'s: async code calls
/// them through `tokio::task::spawn_blocking`.
pub trait AuditJournal: Send + Sync + 'static {
    /// Queues the entries whose keys are not remembered, durably; returns, for each entry,
    /// whether it was queued.
    fn append(&self, entries: &[AuditEntry]) -> Result<Vec<bool>>;

    /// Up to `limit` queued entries after `after` (from the oldest for `None`), oldest first.
    fn queued(&self, after: Option<AuditSeq>, limit: usize) -> Result<Vec<(AuditSeq, AuditEntry)>>;

    /// Takes entries out of the queue (their keys stay remembered) and, when it took one out,
    /// adds `usage` to the usage counts, atomically.
    fn done(&self, seqs: &[AuditSeq], usage: &[UsageRow]) -> Result<()>;

    /// Forgets up to `limit` keys of entries whose time is before `before` and that are not
    /// queued; returns how many it forgot (fewer than `limit`: none are left).
    fn forget(&self, before: Timestamp, limit: usize) -> Result<usize>;

    /// How much it holds.
    fn counts(&self) -> Result<AuditCounts>;

    /// Usage rows of hours from `since` (Unix seconds) on, ordered by hour then series, at most
    /// `limit`.
    fn usage(&self, since: i64, limit: usize) -> Result<Vec<UsageRow>>;

    /// Drops the usage rows of hours before `before` (Unix seconds); returns how many.
    fn forget_usage(&self, before: i64) -> Result<usize>;
}
