//! One watch of one resource, cluster-wide: resume from the resourceVersion kept in the store,
//! else list (paged) and watch from the list's version, with bookmarks; `410 Gone` relists.
//! Every commit goes to the driver as an [`Input`]; nothing is cached here (memory stays flat
//! whatever the number of objects). The driver owns comparison and verdicts.

use super::Input;
use crate::store::EventStore;
use futures::TryStreamExt;
use jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, WatchEvent, WatchParams};
use kube::discovery::ApiResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Objects per LIST page.
const LIST_PAGE: u32 = 500;
/// Seconds the apiserver keeps one watch request open (it then ends it; we resume).
const WATCH_TIMEOUT_SECS: u32 = 290;
/// The cursor is written at most this often (and on every bookmark).
const CURSOR_EVERY: Duration = Duration::from_secs(1);

/// What is watched.
#[derive(Clone, Debug)]
pub struct Target {
    /// Group, version, kind and plural.
    pub api: ApiResource,
    /// `deployments.apps`, `configmaps`.
    pub resource: String,
}

impl Target {
    /// A target for `api`.
    pub fn new(api: ApiResource) -> Self {
        let resource = if api.group.is_empty() {
            api.plural.clone()
        } else {
            format!("{}.{}", api.plural, api.group)
        };
        Target { api, resource }
    }

    fn cursor_key(&self) -> String {
        format!("watch/{}/{}", self.resource, self.api.version)
    }
}

/// The stored position of a watch: its resourceVersion, and since when the watch has seen every
/// commit up to it (so that a resumed watch is known to have missed nothing).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Cursor {
    /// resourceVersion to watch from.
    pub rv: String,
    /// Since when the watch has been continuous.
    pub since: Timestamp,
}

/// Runs the watch of `target` until the driver goes away. Errors are retried with backoff; the
/// driver hears of every loss of continuity (`Health(None)`) and every regain.
pub async fn run(
    client: kube::Client,
    target: Target,
    store: Arc<dyn EventStore>,
    inputs: mpsc::Sender<Input>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let labels = crate::metrics::ResourceLabels {
        resource: target.resource.clone(),
    };
    let api: Api<DynamicObject> = Api::all_with(client, &target.api);
    let mut backoff = Duration::from_millis(500);
    let mut cursor = load_cursor(&store, &target).await;
    // Only a resource never watched before has a baseline; a later list (after a relist that
    // failed, say) is a relist: objects it shows that the store does not know are changes.
    let mut first = cursor.is_none();
    loop {
        // A watch keeps its own position (behind what it sent); a list's is kept here.
        let listing = cursor.is_none();
        let outcome = match cursor.clone() {
            Some(c) => watch_from(&api, &target, &store, &inputs, c).await,
            None => list(&api, &target, &inputs, !first).await.map(Step::Resume),
        };
        if outcome.is_ok() {
            first = false;
        }
        if inputs.is_closed() {
            return;
        }
        match outcome {
            Ok(Step::Resume(c)) => {
                if listing {
                    save_cursor(&store, &target, &c).await;
                }
                cursor = Some(c);
                backoff = Duration::from_millis(500);
            }
            Ok(Step::Relist) => {
                tracing::info!(resource = %target.resource, "watch expired (410 Gone): relisting");
                metrics.witness_relists.get_or_create(&labels).inc();
                let _ = inputs
                    .send(Input::Health(target.resource.clone(), None))
                    .await;
                match list(&api, &target, &inputs, true).await {
                    Ok(c) => {
                        save_cursor(&store, &target, &c).await;
                        cursor = Some(c);
                    }
                    Err(error) => {
                        tracing::warn!(resource = %target.resource, %error, "relist failed");
                        cursor = None;
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(resource = %target.resource, %error, retry_in = ?backoff, "watch failed");
                metrics.witness_restarts.get_or_create(&labels).inc();
                let _ = inputs
                    .send(Input::Health(target.resource.clone(), None))
                    .await;
                let _ = inputs
                    .send(Input::Failed(target.resource.clone(), error.to_string()))
                    .await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                // Continuity is lost: a resumed watch no longer vouches for the time before.
                if let Some(c) = cursor.as_mut() {
                    c.since = Timestamp::now();
                }
            }
        }
    }
}

enum Step {
    /// Watch again from here (the server ended the watch, or a list finished).
    Resume(Cursor),
    /// The version is too old: list again.
    Relist,
}

/// Lists every object, hands each to the driver as a commit, then the list's end with the uids
/// seen (the driver finds what disappeared). `relist`: after a 410 (objects the store does
/// not know are changes histor missed); else the first list (they are the baseline).
async fn list(
    api: &Api<DynamicObject>,
    target: &Target,
    inputs: &mpsc::Sender<Input>,
    relist: bool,
) -> crate::Result<Cursor> {
    let started = Timestamp::now();
    let mut params = ListParams::default().limit(LIST_PAGE);
    let mut uids = Vec::new();
    let version = loop {
        let page = api.list(&params).await?;
        for obj in page.items {
            let value = to_value(&target.api, obj)?;
            if let Some(uid) = uid_of(&value) {
                uids.push(uid);
            }
            let commit = commit_input(target, value, false, Some(relist));
            if inputs.send(commit).await.is_err() {
                return Err(crate::Error::Usage("witness stopped".into()));
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break page.metadata.resource_version.unwrap_or_default(),
        }
    };
    let _ = inputs
        .send(Input::Listed {
            resource: target.resource.clone(),
            uids,
            baseline: !relist,
            started,
        })
        .await;
    let _ = inputs
        .send(Input::Health(target.resource.clone(), Some(started)))
        .await;
    Ok(Cursor {
        rv: version,
        since: started,
    })
}

async fn watch_from(
    api: &Api<DynamicObject>,
    target: &Target,
    store: &Arc<dyn EventStore>,
    inputs: &mpsc::Sender<Input>,
    mut cursor: Cursor,
) -> crate::Result<Step> {
    let params = WatchParams {
        bookmarks: true,
        timeout: Some(WATCH_TIMEOUT_SECS),
        ..WatchParams::default()
    };
    let stream = match api.watch(&params, &cursor.rv).await {
        // Too old, said as the HTTP status rather than as an ERROR event.
        Err(kube::Error::Api(status)) if status.code == 410 => return Ok(Step::Relist),
        other => other?,
    };
    let _ = inputs
        .send(Input::Health(target.resource.clone(), Some(cursor.since)))
        .await;
    let mut stream = std::pin::pin!(stream);
    let mut saved = std::time::Instant::now();
    let mut kept = Lagging::new(cursor.rv.clone());
    while let Some(event) = stream.try_next().await? {
        let (value, deleted) = match classify(&target.api, event)? {
            Seen::Commit(value, deleted) => (value, deleted),
            Seen::Bookmark(rv) => {
                cursor.rv = rv.clone();
                kept.sent(rv, std::time::Instant::now());
                // Bookmarks come about once a minute: the position kept moves with them too.
                save_kept(store, target, &mut kept, cursor.since).await;
                continue;
            }
            Seen::Expired => return Ok(Step::Relist),
            Seen::Failed(message) => {
                return Err(crate::Error::Usage(format!(
                    "watch of {} failed: {message}",
                    target.resource
                )));
            }
        };
        let rv = rv_of(&value);
        if inputs
            .send(commit_input(target, value, deleted, None))
            .await
            .is_err()
        {
            return Ok(Step::Resume(cursor));
        }
        if let Some(rv) = rv {
            cursor.rv = rv.clone();
            kept.sent(rv, std::time::Instant::now());
        }
        if saved.elapsed() >= CURSOR_EVERY {
            save_kept(store, target, &mut kept, cursor.since).await;
            saved = std::time::Instant::now();
        }
    }
    // The server ended the watch: this process resumes from the newest version; what is kept
    // for a restart stays behind what the driver may still be acting on.
    save_kept(store, target, &mut kept, cursor.since).await;
    Ok(Step::Resume(cursor))
}

/// Saves the position `kept` says is safe, when it moved.
async fn save_kept(
    store: &Arc<dyn EventStore>,
    target: &Target,
    kept: &mut Lagging,
    since: Timestamp,
) {
    if let Some(rv) = kept.settled(std::time::Instant::now()) {
        save_cursor(store, target, &Cursor { rv, since }).await;
    }
}

/// How far behind the newest commit sent the kept position stays: longer than a commit may
/// wait in the driver for its review (the grace), so a crash or a new leader never skips one.
const KEEP_BEHIND: Duration = Duration::from_secs(10);

/// The position safe to keep: the newest resourceVersion sent at least [`KEEP_BEHIND`] ago.
/// What was sent since is replayed after a restart, and the driver skips what it already has.
#[derive(Debug)]
struct Lagging {
    sent: std::collections::VecDeque<(String, std::time::Instant)>,
    settled: String,
    saved: Option<String>,
}

impl Lagging {
    fn new(from: String) -> Self {
        Lagging {
            sent: Default::default(),
            settled: from,
            saved: None,
        }
    }

    fn sent(&mut self, rv: String, at: std::time::Instant) {
        self.sent.push_back((rv, at));
    }

    /// The position to keep now, when it moved since the last time.
    fn settled(&mut self, now: std::time::Instant) -> Option<String> {
        while let Some((_, at)) = self.sent.front() {
            if now.duration_since(*at) < KEEP_BEHIND {
                break;
            }
            self.settled = self.sent.pop_front().expect("front exists").0;
        }
        if self.saved.as_ref() == Some(&self.settled) {
            return None;
        }
        self.saved = Some(self.settled.clone());
        Some(self.settled.clone())
    }
}

/// One watch event, as the loop acts on it.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// An object committed (`true`: deleted).
    Commit(Value, bool),
    /// A bookmark: every commit up to this resourceVersion was sent.
    Bookmark(String),
    /// `410 Gone`: the version is too old (compacted, or past the watch cache): relist.
    Expired,
    /// Any other error event.
    Failed(String),
}

/// What a watch event means for the loop. Pure.
pub fn classify(api: &ApiResource, event: WatchEvent<DynamicObject>) -> crate::Result<Seen> {
    Ok(match event {
        WatchEvent::Added(o) | WatchEvent::Modified(o) => Seen::Commit(to_value(api, o)?, false),
        WatchEvent::Deleted(o) => Seen::Commit(to_value(api, o)?, true),
        WatchEvent::Bookmark(b) => Seen::Bookmark(b.metadata.resource_version),
        WatchEvent::Error(status) if status.code == 410 => Seen::Expired,
        WatchEvent::Error(status) => Seen::Failed(format!("{} ({})", status.message, status.code)),
    })
}

/// A watched or listed object as a commit for the driver. `listed`: `Some(relist)` for a
/// list's object.
fn commit_input(target: &Target, object: Value, deleted: bool, listed: Option<bool>) -> Input {
    Input::Commit {
        resource: target.resource.clone(),
        api: target.api.clone(),
        deleted,
        object,
        seen_at: Timestamp::now(),
        listed,
    }
}

fn to_value(api: &ApiResource, obj: DynamicObject) -> crate::Result<Value> {
    let mut value = serde_json::to_value(obj)
        .map_err(|e| crate::Error::Usage(format!("watched object: {e}")))?;
    // Lists give items without apiVersion and kind.
    if let Value::Object(map) = &mut value {
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(api.api_version.clone()));
        map.entry("kind")
            .or_insert_with(|| Value::String(api.kind.clone()));
    }
    Ok(value)
}

pub(crate) fn uid_of(v: &Value) -> Option<String> {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

pub(crate) fn rv_of(v: &Value) -> Option<String> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

async fn load_cursor(store: &Arc<dyn EventStore>, target: &Target) -> Option<Cursor> {
    let store = store.clone();
    let key = target.cursor_key();
    let read = tokio::task::spawn_blocking(move || store.cursor(&key)).await;
    match read {
        Ok(Ok(Some(text))) => serde_json::from_str(&text).ok(),
        Ok(Ok(None)) => None,
        Ok(Err(error)) => {
            tracing::warn!(%error, resource = %target.resource, "reading the watch position failed: listing");
            None
        }
        Err(_) => None,
    }
}

async fn save_cursor(store: &Arc<dyn EventStore>, target: &Target, cursor: &Cursor) {
    let Ok(text) = serde_json::to_string(cursor) else {
        return;
    };
    let store = store.clone();
    let key = target.cursor_key();
    let write = tokio::task::spawn_blocking(move || store.set_cursor(&key, &text)).await;
    if let Ok(Err(error)) = write {
        tracing::warn!(%error, resource = %target.resource, "saving the watch position failed");
    }
}

/// Parses a recorded watch stream (one `{"type","object"}` per line), for tests and offline
/// witnesses: the events with their type.
pub fn parse_stream(text: &str) -> Vec<(String, Value)> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|mut v| {
            let kind = v.get("type")?.as_str()?.to_owned();
            Some((kind, v.get_mut("object")?.take()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::witness::tests::configmaps;

    fn recorded(name: &str) -> Vec<Seen> {
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/v1.33/watch/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        text.lines()
            .map(|line| {
                let event: WatchEvent<DynamicObject> =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                classify(&configmaps(), event).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_watch_from_a_version_too_old_is_a_relist() {
        // What kube-apiserver v1.33 sent for `?watch=1&resourceVersion=1`.
        assert_eq!(recorded("configmaps-from-rv1.jsonl"), vec![Seen::Expired]);
    }

    #[test]
    fn a_recorded_stream_is_commits_deletions_and_bookmarks_in_order() {
        let seen = recorded("configmaps.jsonl");
        let bookmarks: Vec<&String> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Bookmark(rv) => Some(rv),
                _ => None,
            })
            .collect();
        assert_eq!(bookmarks.len(), 4, "{bookmarks:?}");
        let deletions = seen
            .iter()
            .filter(|s| matches!(s, Seen::Commit(_, true)))
            .count();
        assert!(deletions >= 2, "{deletions}");
        // Every commit carries its object's uid and resourceVersion, and versions grow.
        let mut last = 0u64;
        for s in &seen {
            if let Seen::Commit(o, _) = s {
                assert!(uid_of(o).is_some());
                let rv: u64 = rv_of(o).unwrap().parse().unwrap();
                assert!(rv > last, "{rv} after {last}");
                last = rv;
                assert_eq!(o["kind"], "ConfigMap");
            }
        }
    }

    #[test]
    fn the_kept_position_stays_behind_what_the_driver_may_still_hold() {
        let t = std::time::Instant::now();
        let mut kept = Lagging::new("100".into());
        kept.sent("101".into(), t);
        kept.sent("102".into(), t + Duration::from_secs(5));
        assert_eq!(kept.settled(t + Duration::from_secs(1)), Some("100".into()));
        assert_eq!(kept.settled(t + Duration::from_secs(2)), None, "unchanged");
        assert_eq!(kept.settled(t + KEEP_BEHIND), Some("101".into()));
        assert_eq!(
            kept.settled(t + KEEP_BEHIND + Duration::from_secs(5)),
            Some("102".into())
        );
    }

    #[test]
    fn a_cursor_reads_back_as_written() {
        let c = Cursor {
            rv: "275".into(),
            since: "2026-12-01T21:22:00Z".parse().unwrap(),
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Cursor>(&text).unwrap(), c);
    }
}
