use super::*;
use serde_json::json;

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn received(id: EventId, uid: &str, op: Operation, digest: Option<u64>, at: i64) -> Received {
    Received {
        id,
        uid: uid.into(),
        resource: "configmaps".into(),
        policy: "p".into(),
        operation: op,
        digest,
        received_at: t(at),
    }
}

fn seen(uid: &str, rv: &str, digest: u64, deleted: bool, at: i64) -> Seen {
    Seen {
        uid: uid.into(),
        resource: "configmaps".into(),
        resource_version: rv.into(),
        deleted,
        digests: vec![("p".into(), digest)],
        seen_at: t(at),
        object: json!({}),
        baseline: false,
    }
}

fn states(v: &[Verdict]) -> Vec<(EventId, ChangeState, Option<String>)> {
    v.iter()
        .filter_map(|v| match v {
            Verdict::Resolve(r) => Some((
                r.id,
                r.state,
                r.commit.as_ref().map(|c| c.resource_version.clone()),
            )),
            Verdict::Unannounced(_) => None,
        })
        .collect()
}

fn windows() -> Windows {
    Windows {
        confirm: SignedDuration::from_secs(10),
        grace: SignedDuration::from_secs(2),
    }
}

#[test]
fn a_commit_with_the_announced_state_confirms_the_change_with_its_resource_version() {
    let mut r = Reconciler::new(windows());
    r.set_health("configmaps", Some(t(0)));
    assert!(
        r.received(received(1, "u", Operation::Update, Some(7), 1))
            .is_empty()
    );
    // A commit of another state of the object confirms nothing.
    assert!(r.committed(seen("u", "40", 8, false, 1)).is_empty());
    let v = r.committed(seen("u", "41", 7, false, 1));
    assert_eq!(
        states(&v),
        vec![(1, ChangeState::Confirmed, Some("41".into()))]
    );
    assert_eq!(r.pending(), 0);
    // The state-8 commit, unannounced, is handed back after the grace.
    let later = r.tick(t(4));
    assert!(matches!(&later[..], [Verdict::Unannounced(s)] if s.resource_version == "40"));
}

#[test]
fn a_commit_that_comes_before_its_review_still_confirms_it_within_the_grace() {
    let mut r = Reconciler::new(windows());
    assert!(r.committed(seen("u", "41", 7, false, 1)).is_empty());
    let v = r.received(received(1, "u", Operation::Create, Some(7), 1));
    assert_eq!(
        states(&v),
        vec![(1, ChangeState::Confirmed, Some("41".into()))]
    );
    assert!(r.tick(t(10)).is_empty(), "nothing left over");
}

#[test]
fn a_change_never_committed_is_not_applied_when_the_watch_saw_everything_and_unconfirmed_when_not()
{
    let mut r = Reconciler::new(windows());
    r.set_health("configmaps", Some(t(0)));
    r.received(received(1, "u", Operation::Create, Some(7), 1));
    let mut other = received(2, "w", Operation::Create, Some(7), 1);
    other.resource = "secrets".into(); // its watch never became healthy
    r.received(other);
    assert!(r.tick(t(10)).is_empty(), "inside the window");
    let v = r.tick(t(11));
    assert_eq!(
        states(&v),
        vec![
            (1, ChangeState::NotApplied, None),
            (2, ChangeState::Unconfirmed, None)
        ]
    );
    // A watch that became healthy after the review cannot vouch for it either.
    r.set_health("configmaps", Some(t(20)));
    r.received(received(3, "u", Operation::Update, Some(9), 15));
    assert_eq!(
        states(&r.tick(t(30))),
        vec![(3, ChangeState::Unconfirmed, None)]
    );
}

#[test]
fn a_delete_is_confirmed_by_the_deletion_only() {
    let mut r = Reconciler::new(windows());
    r.received(received(1, "u", Operation::Delete, None, 1));
    assert!(r.committed(seen("u", "50", 7, false, 2)).is_empty());
    let v = r.committed(seen("u", "51", 0, true, 2));
    assert_eq!(
        states(&v),
        vec![(1, ChangeState::Confirmed, Some("51".into()))]
    );
}

#[test]
fn of_conflict_retries_the_attempt_committed_is_confirmed_and_the_superseded_ones_are_not_applied()
{
    let mut r = Reconciler::new(windows());
    r.set_health("configmaps", Some(t(0)));
    // Three attempts of one PATCH, each on a newer oldObject, so each with another state.
    r.received(received(1, "u", Operation::Update, Some(10), 1));
    r.received(received(2, "u", Operation::Update, Some(11), 1));
    r.received(received(3, "u", Operation::Update, Some(12), 1));
    let v = r.committed(seen("u", "60", 12, false, 1));
    assert_eq!(
        states(&v),
        vec![(3, ChangeState::Confirmed, Some("60".into()))]
    );
    assert_eq!(
        states(&r.tick(t(12))),
        vec![
            (1, ChangeState::NotApplied, None),
            (2, ChangeState::NotApplied, None)
        ]
    );
}

#[test]
fn a_commit_is_never_taken_for_a_review_that_came_after_it_was_seen_past_the_grace() {
    let mut r = Reconciler::new(windows());
    r.committed(seen("u", "41", 7, false, 1));
    let v = r.tick(t(3));
    assert!(matches!(&v[..], [Verdict::Unannounced(_)]));
    assert!(
        r.received(received(1, "u", Operation::Update, Some(7), 5))
            .is_empty()
    );
    assert_eq!(r.pending(), 1);
}

#[test]
fn the_same_event_twice_is_pending_once() {
    let mut r = Reconciler::new(windows());
    r.received(received(1, "u", Operation::Update, Some(7), 1));
    r.received(received(1, "u", Operation::Update, Some(7), 1));
    assert_eq!(r.pending(), 1);
}

#[test]
fn an_unknown_digest_is_confirmed_by_the_next_commit_of_the_object() {
    // A subresource change (scale): the store knows the parent's state, the review does not.
    let mut r = Reconciler::new(windows());
    r.received(received(1, "u", Operation::Update, None, 5));
    assert!(
        r.committed(seen("u", "40", 7, false, 4)).is_empty(),
        "a commit seen before the review is not its commit"
    );
    let v = r.committed(seen("u", "41", 8, false, 6));
    assert_eq!(
        states(&v),
        vec![(1, ChangeState::Confirmed, Some("41".into()))]
    );
}

#[test]
fn state_digests_ignore_key_order() {
    let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":[1,2]}}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"b":{"d":[1,2],"c":2},"a":1}"#).unwrap();
    assert_eq!(state_digest(&a), state_digest(&b));
    assert_ne!(state_digest(&a), state_digest(&json!({"a": 1})));
}

#[test]
fn a_reopened_watch_replays_before_any_change_is_given_up_on() {
    let mut r = Reconciler::new(windows());
    r.set_health("configmaps", Some(t(0)));
    r.received(received(1, "u", Operation::Update, Some(7), 1));
    // Leadership moved: the new term's watch resumes at 20 s, long past the deadline.
    r.resumed("configmaps", t(20));
    assert!(
        r.tick(t(21)).is_empty(),
        "the replay may still bring its commit"
    );
    let v = r.committed(seen("u", "41", 7, false, 21));
    assert_eq!(
        states(&v),
        vec![(1, ChangeState::Confirmed, Some("41".into()))]
    );
    // Without a commit, the verdict comes once the replay had its time.
    r.received(received(2, "w", Operation::Update, Some(7), 1));
    assert!(r.tick(t(21)).is_empty());
    assert_eq!(
        states(&r.tick(t(23))),
        vec![(2, ChangeState::NotApplied, None)]
    );
}

#[test]
fn an_update_of_an_object_being_deleted_is_confirmed_and_so_is_its_delete() {
    let mut r = Reconciler::new(windows());
    r.received(received(1, "u", Operation::Update, Some(7), 1));
    let mut terminating = seen("u", "41", 7, false, 2);
    terminating.object = json!({"metadata": {"deletionTimestamp": "2026-12-01T21:22:00Z"}});
    let v = r.committed(terminating.clone());
    assert_eq!(
        states(&v),
        vec![(1, ChangeState::Confirmed, Some("41".into()))]
    );
    r.received(received(2, "u", Operation::Delete, None, 2));
    terminating.resource_version = "42".into();
    terminating.digests = vec![("p".into(), 8)];
    let v = r.committed(terminating);
    assert_eq!(
        states(&v),
        vec![(2, ChangeState::Confirmed, Some("42".into()))]
    );
}
