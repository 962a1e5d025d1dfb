//! The audit journal contract's tests, written once and run against every engine: each is a
//! function over a fresh, empty `&dyn AuditJournal`, and [`audit_conformance_suite!`] turns the
//! list into `#[test]`s for an engine (`audit_conformance_suite!(|| (guard, journal))`, the guard
//! kept alive for the test). What only one engine has (surviving a restart) is tested with it.

use super::*;
use crate::usage::Counts;
use std::sync::Arc;

/// `#[test]`s running every journal contract test against the journal `$open()` makes.
macro_rules! audit_conformance_suite {
    // `$open()` gives `Option<(guard, journal)>`: `None` skips (an engine whose server is
    // absent on a developer's machine; the opener decides whether that may skip).
    (optional $open:expr) => {
        $crate::store::audit::conformance::audit_conformance_suite!(@list optional $open);
    };
    ($open:expr) => {
        $crate::store::audit::conformance::audit_conformance_suite!(@list always $open);
    };
    (@list $how:ident $open:expr) => {
        $crate::store::audit::conformance::audit_conformance_suite!(@tests $how $open;
            entries_queue_once_by_key,
            the_queue_keeps_order_and_bytes,
            done_entries_leave_the_queue_but_keep_their_keys,
            forgotten_keys_may_come_again,
            concurrent_appends_of_one_key_queue_it_once,
            usage_is_added_once_with_done,
            usage_is_read_by_hour_and_forgotten_by_hour,
        );
    };
    (@tests always $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (_guard, journal) = ($open)();
                $crate::store::audit::conformance::$name(std::sync::Arc::new(journal));
            }
        )*
    };
    (@tests optional $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if let Some((_guard, journal)) = ($open)() {
                    $crate::store::audit::conformance::$name(std::sync::Arc::new(journal));
                }
            }
        )*
    };
}
pub(crate) use audit_conformance_suite;

const T0: i64 = 1_700_000_000;

fn entry(n: u8, at: i64) -> AuditEntry {
    AuditEntry {
        key: [n; 16],
        at: Timestamp::from_second(T0 + at).unwrap(),
        value: format!("event {n} \u{0}\u{ff}").into_bytes(),
    }
}

fn keys(queued: &[(AuditSeq, AuditEntry)]) -> Vec<u8> {
    queued.iter().map(|(_, e)| e.key[0]).collect()
}

pub(crate) fn entries_queue_once_by_key(j: Arc<impl AuditJournal>) {
    assert_eq!(j.counts().unwrap(), AuditCounts::default());
    assert_eq!(
        j.append(&[entry(1, 0), entry(2, 0), entry(1, 5)]).unwrap(),
        [true, true, false],
        "the first of one key in a call is queued"
    );
    assert_eq!(
        j.append(&[entry(2, 9), entry(3, 0)]).unwrap(),
        [false, true]
    );
    let q = j.queued(None, 100).unwrap();
    assert_eq!(keys(&q), [1, 2, 3]);
    assert_eq!(q[0].1, entry(1, 0), "the first append's entry is kept");
    assert_eq!(j.counts().unwrap(), AuditCounts { queued: 3, keys: 3 });
    assert!(j.append(&[]).unwrap().is_empty());
}

pub(crate) fn the_queue_keeps_order_and_bytes(j: Arc<impl AuditJournal>) {
    let all: Vec<AuditEntry> = (0..50u8).map(|n| entry(n, 100 - i64::from(n))).collect();
    for chunk in all.chunks(7) {
        j.append(chunk).unwrap();
    }
    let q = j.queued(None, 20).unwrap();
    assert_eq!(q.len(), 20, "limit");
    assert!(q.windows(2).all(|w| w[0].0 < w[1].0), "seqs increase");
    let whole = j.queued(None, 1000).unwrap();
    assert_eq!(
        whole.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        all,
        "append order, not time order; bytes as given"
    );
    assert_eq!(&whole[..20], &q[..], "queued does not take entries out");
    let rest = j.queued(Some(q[19].0), 1000).unwrap();
    assert_eq!(&rest[..], &whole[20..], "after a seq");
    assert!(j.queued(Some(whole[49].0), 10).unwrap().is_empty());
}

pub(crate) fn done_entries_leave_the_queue_but_keep_their_keys(j: Arc<impl AuditJournal>) {
    j.append(&[entry(1, 0), entry(2, 0), entry(3, 0)]).unwrap();
    let q = j.queued(None, 10).unwrap();
    j.done(&[q[0].0, q[2].0], &[]).unwrap();
    j.done(&[q[0].0, 999_999], &[]).unwrap(); // not queued: no error
    assert_eq!(keys(&j.queued(None, 10).unwrap()), [2]);
    assert_eq!(
        j.append(&[entry(1, 0), entry(3, 1)]).unwrap(),
        [false, false],
        "taken once, never again"
    );
    assert_eq!(j.counts().unwrap(), AuditCounts { queued: 1, keys: 3 });
}

pub(crate) fn forgotten_keys_may_come_again(j: Arc<impl AuditJournal>) {
    j.append(&[entry(1, 0), entry(2, 10), entry(3, 0), entry(4, 0)])
        .unwrap();
    let q = j.queued(None, 10).unwrap();
    // 1, 2 and 3 are done; 4 stays queued, and a queued key is never forgotten.
    j.done(&[q[0].0, q[1].0, q[2].0], &[]).unwrap();
    let before = Timestamp::from_second(T0 + 5).unwrap();
    assert_eq!(j.forget(before, 1).unwrap(), 1, "bounded");
    assert_eq!(j.forget(before, 10).unwrap(), 1, "the other old one");
    assert_eq!(
        j.forget(before, 10).unwrap(),
        0,
        "none left: 2 is newer, 4 queued"
    );
    assert_eq!(j.counts().unwrap(), AuditCounts { queued: 1, keys: 2 });
    assert_eq!(
        j.append(&[entry(1, 0), entry(2, 10), entry(3, 0), entry(4, 0)])
            .unwrap(),
        [true, false, true, false]
    );
}

pub(crate) fn concurrent_appends_of_one_key_queue_it_once(j: Arc<impl AuditJournal>) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                let mut queued = 0;
                for n in 0..40u8 {
                    let e = entry(n, i64::from(t));
                    queued += j.append(&[e]).unwrap().iter().filter(|&&q| q).count();
                }
                queued
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 40, "each key queued by exactly one call");
    assert_eq!(j.queued(None, 1000).unwrap().len(), 40);
}

fn counts(calls: u64, first: i64, last: i64) -> Counts {
    Counts {
        calls,
        first_seen: Some(Timestamp::from_second(T0 + first).unwrap()),
        last_seen: Some(Timestamp::from_second(T0 + last).unwrap()),
        success: calls - 1,
        client_error: 1,
        ..Counts::default()
    }
}

fn row(hour: i64, series: &str, counts: Counts) -> UsageRow {
    UsageRow {
        hour: T0 + hour * 3600,
        series: series.as_bytes().to_vec(),
        counts,
    }
}

pub(crate) fn usage_is_added_once_with_done(j: Arc<impl AuditJournal>) {
    j.append(&[entry(1, 0), entry(2, 0), entry(3, 0)]).unwrap();
    let q = j.queued(None, 10).unwrap();
    j.done(&[q[0].0], &[row(0, "get pods", counts(2, 5, 9))])
        .unwrap();
    // A repeat of a done whose entries are out adds nothing.
    j.done(&[q[0].0], &[row(0, "get pods", counts(2, 5, 9))])
        .unwrap();
    j.done(
        &[q[0].0, q[1].0],
        &[
            row(0, "get pods", counts(3, 1, 7)),
            row(0, "list pods \u{0}\u{ff}", counts(4, 0, 0)),
        ],
    )
    .unwrap();
    let mut merged = counts(5, 1, 9);
    merged.success = 3;
    merged.client_error = 2;
    assert_eq!(
        j.usage(T0, 100).unwrap(),
        [
            row(0, "get pods", merged),
            row(0, "list pods \u{0}\u{ff}", counts(4, 0, 0)),
        ],
        "summed, earliest first seen, latest last seen, series bytes kept"
    );
}

pub(crate) fn usage_is_read_by_hour_and_forgotten_by_hour(j: Arc<impl AuditJournal>) {
    j.append(&[entry(1, 0)]).unwrap();
    let q = j.queued(None, 10).unwrap();
    let untimed = Counts {
        calls: 1,
        no_code: 1,
        ..Counts::default()
    };
    j.done(
        &[q[0].0],
        &[
            row(2, "b", counts(1, 0, 0)),
            row(0, "z", counts(1, 0, 0)),
            row(2, "a", untimed.clone()),
            row(1, "a", counts(1, 0, 0)),
        ],
    )
    .unwrap();
    let hours = |rows: Vec<UsageRow>| -> Vec<(i64, String)> {
        rows.into_iter()
            .map(|r| ((r.hour - T0) / 3600, String::from_utf8(r.series).unwrap()))
            .collect()
    };
    assert_eq!(
        hours(j.usage(T0, 100).unwrap()),
        [
            (0, "z".into()),
            (1, "a".into()),
            (2, "a".into()),
            (2, "b".into())
        ]
    );
    assert_eq!(
        hours(j.usage(T0 + 3600, 2).unwrap()),
        [(1, "a".into()), (2, "a".into())]
    );
    assert_eq!(
        j.usage(T0 + 7200, 1).unwrap()[0].counts,
        untimed,
        "no times kept as none"
    );
    assert_eq!(j.forget_usage(T0 + 7200).unwrap(), 2);
    assert_eq!(
        hours(j.usage(0, 100).unwrap()),
        [(2, "a".into()), (2, "b".into())]
    );
}
