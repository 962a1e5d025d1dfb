//! The outbox contract's tests, written once and run against every engine: each is an async
//! function over a fresh, empty `Arc<dyn OutboxStore>`, and [`outbox_conformance_suite!`] turns
//! the list into `#[tokio::test]`s for an engine (`outbox_conformance_suite!(|| (guard,
//! outbox))`, the guard kept alive for the test, such as the engine's temporary directory).
//! What only one engine has (surviving a restart, reopening after a failure, its disk layout) is
//! tested with that engine.

use super::*;
use std::sync::Arc;

/// `#[tokio::test]`s running every outbox contract test against the outbox `$open()` makes (a
/// pair: a guard kept alive for the test, and the outbox).
macro_rules! outbox_conformance_suite {
    // `$open()` blocks and gives `Option<(guard, outbox)>`: `None` skips (an engine whose server
    // is absent on a developer's machine; the opener decides whether that may skip). It runs,
    // and the guard drops, on a thread of its own, outside the test's runtime.
    (optional $open:expr) => {
        $crate::store::outbox::conformance::outbox_conformance_suite!(@list optional $open);
    };
    ($open:expr) => {
        $crate::store::outbox::conformance::outbox_conformance_suite!(@list always $open);
    };
    (@list $how:ident $open:expr) => {
        $crate::store::outbox::conformance::outbox_conformance_suite!(@tests $how $open;
            keys_increase_and_are_never_handed_out_twice,
            a_commit_writes_notifications_buffered_events_and_cursor,
            the_cursor_only_moves_forward,
            the_first_cursor_set_wins,
            buffering_an_event_twice_holds_it_once,
            buffered_events_read_back_by_sink_in_id_order,
            update_rewrites_a_queued_entry_and_never_revives_a_removed_one,
            removals_take_several_at_once_and_ignore_absent_ones,
            closing_a_window_moves_its_events_into_one_notification,
            values_come_back_byte_for_byte,
            concurrent_calls_each_take_effect_whole,
        );
    };
    (@tests always $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_guard, outbox) = ($open)();
                $crate::store::outbox::conformance::$name(outbox).await;
            }
        )*
    };
    (@tests optional $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let opened = std::thread::spawn($open).join().expect("open the outbox");
                if let Some((guard, outbox)) = opened {
                    $crate::store::outbox::conformance::$name(outbox).await;
                    std::thread::spawn(move || drop(guard)).join().expect("drop the guard");
                }
            }
        )*
    };
}
pub(crate) use outbox_conformance_suite;

fn rec(sink: &str, event: EventId, value: &str) -> BufferedRecord {
    BufferedRecord {
        sink: sink.into(),
        event,
        value: value.as_bytes().to_vec(),
    }
}

fn values(entries: &[(OutboxKey, Vec<u8>)]) -> Vec<&str> {
    entries
        .iter()
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
        .collect()
}

fn events(buffered: &[BufferedRecord]) -> Vec<(&str, EventId)> {
    buffered
        .iter()
        .map(|b| (b.sink.as_str(), b.event))
        .collect()
}

pub(crate) async fn keys_increase_and_are_never_handed_out_twice(o: Arc<dyn OutboxStore>) {
    assert!(o.next_keys(0).await.unwrap().is_empty());
    let mut all = o.next_keys(3).await.unwrap();
    assert_eq!(all.len(), 3);
    // Keys handed out but never committed are not handed out again.
    all.extend(o.next_keys(1).await.unwrap());
    all.extend(o.next_keys(2).await.unwrap());
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
}

pub(crate) async fn a_commit_writes_notifications_buffered_events_and_cursor(
    o: Arc<dyn OutboxStore>,
) {
    assert_eq!(o.cursor().await.unwrap(), None);
    assert_eq!(o.counts().await.unwrap(), OutboxCounts::default());
    // Nothing to write is fine and changes nothing.
    o.commit(OutboxIntake::default()).await.unwrap();
    assert_eq!(o.cursor().await.unwrap(), None);

    let k = o.next_keys(3).await.unwrap();
    // Entries come back in key order, whatever order they were committed in.
    o.commit(OutboxIntake {
        entries: vec![(k[2], b"third".to_vec()), (k[0], b"first".to_vec())],
        buffered: vec![rec("p/digest/", 7, "seven")],
        cursor: Some(7),
    })
    .await
    .unwrap();
    o.commit(OutboxIntake {
        entries: vec![(k[1], b"second".to_vec())],
        ..Default::default()
    })
    .await
    .unwrap();
    let entries = o.entries().await.unwrap();
    assert_eq!(entries.iter().map(|(k, _)| *k).collect::<Vec<_>>(), k);
    assert_eq!(values(&entries), ["first", "second", "third"]);
    assert_eq!(events(&o.buffered(None).await.unwrap()), [("p/digest/", 7)]);
    assert_eq!(o.cursor().await.unwrap(), Some(7));
    assert_eq!(
        o.counts().await.unwrap(),
        OutboxCounts {
            pending: 3,
            buffered: 1
        }
    );
}

pub(crate) async fn the_cursor_only_moves_forward(o: Arc<dyn OutboxStore>) {
    let cursor = |c| OutboxIntake {
        cursor: c,
        ..Default::default()
    };
    o.commit(cursor(Some(10))).await.unwrap();
    o.commit(cursor(Some(5))).await.unwrap();
    assert_eq!(o.cursor().await.unwrap(), Some(10));
    // A commit without a cursor leaves it.
    o.commit(OutboxIntake {
        buffered: vec![rec("s", 3, "x")],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(o.cursor().await.unwrap(), Some(10));
    // Past 2^32 and with bytes that sort differently from the numbers' order little-endian.
    o.commit(cursor(Some(1 << 40))).await.unwrap();
    o.commit(cursor(Some((1 << 40) - 1))).await.unwrap();
    assert_eq!(o.cursor().await.unwrap(), Some(1 << 40));
}

pub(crate) async fn the_first_cursor_set_wins(o: Arc<dyn OutboxStore>) {
    assert_eq!(o.init_cursor(7).await.unwrap(), 7);
    assert_eq!(o.init_cursor(3).await.unwrap(), 7, "set once, by the first");
    assert_eq!(o.init_cursor(9).await.unwrap(), 7);
    assert_eq!(o.cursor().await.unwrap(), Some(7));
    o.commit(OutboxIntake {
        cursor: Some(12),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        o.init_cursor(1).await.unwrap(),
        12,
        "a moved cursor is not set back"
    );
}

pub(crate) async fn buffering_an_event_twice_holds_it_once(o: Arc<dyn OutboxStore>) {
    for value in ["old", "new"] {
        o.commit(OutboxIntake {
            buffered: vec![rec("p/s/", 1, value), rec("p/other/", 1, value)],
            cursor: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let held = o.buffered(Some("p/s/")).await.unwrap();
    assert_eq!(held, [rec("p/s/", 1, "new")]);
    assert_eq!(o.counts().await.unwrap().buffered, 2);
}

pub(crate) async fn buffered_events_read_back_by_sink_in_id_order(o: Arc<dyn OutboxStore>) {
    // Sink names that are prefixes of one another stay apart; ids sort as numbers.
    let big = 1u64 << 40;
    o.commit(OutboxIntake {
        buffered: vec![
            rec("p/ab", 2, "ab2"),
            rec("p/a", big, "a-big"),
            rec("p/a", 256, "a256"),
            rec("p/a", 1, "a1"),
            rec("p/b", 5, "b5"),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let a = o.buffered(Some("p/a")).await.unwrap();
    assert_eq!(events(&a), [("p/a", 1), ("p/a", 256), ("p/a", big)]);
    assert_eq!(a[2].value, b"a-big");
    assert_eq!(
        events(&o.buffered(Some("p/ab")).await.unwrap()),
        [("p/ab", 2)]
    );
    assert!(o.buffered(Some("p/none")).await.unwrap().is_empty());
    assert_eq!(
        events(&o.buffered(None).await.unwrap()),
        [
            ("p/a", 1),
            ("p/a", 256),
            ("p/a", big),
            ("p/ab", 2),
            ("p/b", 5)
        ]
    );
}

pub(crate) async fn update_rewrites_a_queued_entry_and_never_revives_a_removed_one(
    o: Arc<dyn OutboxStore>,
) {
    let k = o.next_keys(2).await.unwrap();
    o.commit(OutboxIntake {
        entries: vec![(k[0], b"a".to_vec()), (k[1], b"b".to_vec())],
        ..Default::default()
    })
    .await
    .unwrap();
    o.update(k[0], b"a, attempt 1".to_vec()).await.unwrap();
    assert_eq!(values(&o.entries().await.unwrap()), ["a, attempt 1", "b"]);
    // A delivery that finishes after its entry was dropped does not bring it back.
    o.remove(&[k[1]]).await.unwrap();
    o.update(k[1], b"b, attempt 1".to_vec()).await.unwrap();
    let never = o.next_keys(1).await.unwrap()[0];
    o.update(never, b"never queued".to_vec()).await.unwrap();
    assert_eq!(values(&o.entries().await.unwrap()), ["a, attempt 1"]);
    assert_eq!(o.counts().await.unwrap().pending, 1);
}

pub(crate) async fn removals_take_several_at_once_and_ignore_absent_ones(o: Arc<dyn OutboxStore>) {
    let k = o.next_keys(4).await.unwrap();
    o.commit(OutboxIntake {
        entries: k.iter().map(|k| (*k, k.to_string().into_bytes())).collect(),
        buffered: vec![rec("s", 1, "1"), rec("s", 2, "2"), rec("t", 1, "1")],
        ..Default::default()
    })
    .await
    .unwrap();
    o.remove(&[]).await.unwrap();
    o.remove(&[k[0], k[2], k[3] + 1000]).await.unwrap();
    let left: Vec<OutboxKey> = o
        .entries()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(left, [k[1], k[3]]);
    o.remove_buffered(&[]).await.unwrap();
    o.remove_buffered(&[("s".into(), 2), ("t".into(), 1), ("u".into(), 1)])
        .await
        .unwrap();
    assert_eq!(events(&o.buffered(None).await.unwrap()), [("s", 1)]);
    assert_eq!(
        o.counts().await.unwrap(),
        OutboxCounts {
            pending: 2,
            buffered: 1
        }
    );
}

pub(crate) async fn closing_a_window_moves_its_events_into_one_notification(
    o: Arc<dyn OutboxStore>,
) {
    o.commit(OutboxIntake {
        buffered: vec![
            rec("p/a/", 1, "1"),
            rec("p/a/", 2, "2"),
            rec("p/a/", 3, "3"),
            rec("p/b/", 1, "1"),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let key = o.next_keys(1).await.unwrap()[0];
    // Event 3 came after the window's events were read: it stays for the next window.
    o.close_window("p/a/", &[1, 2], key, b"digest of 1, 2".to_vec())
        .await
        .unwrap();
    assert_eq!(
        events(&o.buffered(None).await.unwrap()),
        [("p/a/", 3), ("p/b/", 1)]
    );
    assert_eq!(
        o.entries().await.unwrap(),
        [(key, b"digest of 1, 2".to_vec())]
    );
}

pub(crate) async fn values_come_back_byte_for_byte(o: Arc<dyn OutboxStore>) {
    let odd: Vec<u8> = (0..=255u8).rev().collect();
    let k = o.next_keys(2).await.unwrap();
    o.commit(OutboxIntake {
        entries: vec![(k[0], odd.clone()), (k[1], Vec::new())],
        buffered: vec![BufferedRecord {
            sink: "p/ünïcode/".into(),
            event: 9,
            value: odd.clone(),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        o.entries().await.unwrap(),
        [(k[0], odd.clone()), (k[1], Vec::new())]
    );
    let b = o.buffered(Some("p/ünïcode/")).await.unwrap();
    assert_eq!((b[0].event, &b[0].value), (9, &odd));
}

pub(crate) async fn concurrent_calls_each_take_effect_whole(o: Arc<dyn OutboxStore>) {
    // Tasks at once, as the delivery tasks and the writer's thread run: each commits two
    // notifications and a buffered event, and rewrites one of its own.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8u64 {
        let o = o.clone();
        tasks.spawn(async move {
            let k = o.next_keys(2).await.unwrap();
            o.commit(OutboxIntake {
                entries: vec![(k[0], b"new".to_vec()), (k[1], b"new".to_vec())],
                buffered: vec![rec("s", t, "b")],
                cursor: Some(100 + t),
            })
            .await
            .unwrap();
            o.update(k[1], b"updated".to_vec()).await.unwrap();
            k
        });
    }
    let mut keys: Vec<OutboxKey> = tasks.join_all().await.into_iter().flatten().collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 16, "keys are unique across tasks");
    let entries = o.entries().await.unwrap();
    assert_eq!(entries.iter().map(|e| e.0).collect::<Vec<_>>(), keys);
    assert_eq!(
        values(&entries).iter().filter(|v| **v == "updated").count(),
        8
    );
    assert_eq!(o.buffered(None).await.unwrap().len(), 8);
    assert_eq!(o.cursor().await.unwrap(), Some(107));
}
