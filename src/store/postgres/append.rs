//! Appending a batch: one transaction under the write lock (see the engine's docs), dedupe by
//! the `requests` table, chains extended by [`history`], and every table written with one
//! multi-row statement.
//!
//! Round trips are what a batch costs (the lock is held for all of them), so the statements are
//! prepared once per connection and each step's statements are pipelined: BEGIN, then the lock
//! with the reads, then every write, then COMMIT; four round trips when no request links.

use super::chain::{Chain, F_CHAIN_BREAK, F_UNKNOWN_STATE};
use super::{
    Head, PgStore, STATE_CACHE, Writer, audit_of, committed_of, id_i64, id_u64, object_key,
    op_code, random_i64, state_code,
};
use crate::pipeline::{Captured, ChangeEvent};
use crate::store::history::{self, ChainPos};
use crate::store::{AppendOutcome, DEDUPE_WINDOW, EventId, digest, query};
use crate::{Error, Result};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;

/// The statements of an append, prepared once per connection (deadpool's statement cache). A
/// statement given as text is prepared again at every call: a round trip of its own before it
/// runs, and one that keeps pipelined statements from being sent in a known order.
struct Prepared {
    lock: Statement,
    find_batch: Statement,
    last_id: Statement,
    find_requests: Statement,
    find_heads: Statement,
    find_policies: Statement,
    insert_events: Statement,
    upsert_requests: Statement,
    upsert_heads: Statement,
    link_policies: Statement,
    insert_kinds: Statement,
    insert_policies: Statement,
    bump_meta: Statement,
    upsert_batch: Statement,
}

const WRITE_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

impl Prepared {
    /// Looks the statements up in the connection's cache, preparing (all at once) those missing.
    async fn get(
        tx: &deadpool_postgres::Transaction<'_>,
        sql: &super::Sql,
    ) -> Result<Prepared, tokio_postgres::Error> {
        let (
            lock,
            find_batch,
            last_id,
            find_requests,
            find_heads,
            find_policies,
            insert_events,
            upsert_requests,
            upsert_heads,
            link_policies,
            insert_kinds,
            insert_policies,
            bump_meta,
            upsert_batch,
        ) = futures::try_join!(
            tx.prepare_cached(WRITE_LOCK),
            tx.prepare_cached(&sql.find_batch),
            tx.prepare_cached(&sql.last_id),
            tx.prepare_cached(&sql.find_requests),
            tx.prepare_cached(&sql.find_heads),
            tx.prepare_cached(&sql.find_policies),
            tx.prepare_cached(&sql.insert_events),
            tx.prepare_cached(&sql.upsert_requests),
            tx.prepare_cached(&sql.upsert_heads),
            tx.prepare_cached(&sql.link_policies),
            tx.prepare_cached(&sql.insert_kinds),
            tx.prepare_cached(&sql.insert_policies),
            tx.prepare_cached(&sql.bump_meta),
            tx.prepare_cached(&sql.upsert_batch),
        )?;
        Ok(Prepared {
            lock,
            find_batch,
            last_id,
            find_requests,
            find_heads,
            find_policies,
            insert_events,
            upsert_requests,
            upsert_heads,
            link_policies,
            insert_kinds,
            insert_policies,
            bump_meta,
            upsert_batch,
        })
    }
}

/// The columns of the rows a batch inserts.
#[derive(Default)]
struct EventRows {
    id: Vec<i64>,
    object: Vec<i64>,
    namespace: Vec<Option<String>>,
    name: Vec<String>,
    uid: Vec<Option<String>>,
    username: Vec<String>,
    operation: Vec<i16>,
    resource: Vec<String>,
    policies: Vec<Vec<String>>,
    prev: Vec<Option<i64>>,
    flags: Vec<i16>,
    body: Vec<Vec<u8>>,
    gap: Vec<Option<Vec<u8>>>,
    snapshot: Vec<Option<Vec<u8>>>,
    state: Vec<i16>,
    committed: Vec<Option<Vec<u8>>>,
    audit: Vec<Option<Vec<u8>>>,
}

/// Outcomes as `batches` keeps them: a tag byte and the id, per event.
fn encode_outcomes(outcomes: &[AppendOutcome]) -> Vec<u8> {
    let mut b = Vec::with_capacity(outcomes.len() * 9);
    for o in outcomes {
        let (tag, id) = match o {
            AppendOutcome::Recorded(id) => (b'r', id),
            AppendOutcome::Linked(id) => (b'l', id),
            AppendOutcome::Duplicate(id) => (b'd', id),
        };
        b.push(tag);
        b.extend_from_slice(&id.to_be_bytes());
    }
    b
}

fn decode_outcomes(b: &[u8]) -> Result<Vec<AppendOutcome>> {
    b.chunks(9)
        .map(|c| {
            let id = c
                .get(1..9)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| Error::Corrupt("batch outcomes".into()))?;
            match c[0] {
                b'r' => Ok(AppendOutcome::Recorded(id)),
                b'l' => Ok(AppendOutcome::Linked(id)),
                b'd' => Ok(AppendOutcome::Duplicate(id)),
                t => Err(Error::Corrupt(format!("batch outcome tag {t}"))),
            }
        })
        .collect()
}

/// What a batch is, for recognising its retry: its request uids and policies.
pub(super) fn fingerprint(batch: &[Captured]) -> u64 {
    let mut parts = Vec::new();
    for c in batch {
        parts.push(c.event.request_uid.as_str());
        parts.extend(c.event.policies.iter().map(String::as_str));
        parts.push("");
    }
    digest::hash64(&parts)
}

/// The event as `body` keeps it: without what has a column of its own (those are the truth:
/// linking updates `policies`, a witness `state` and `committed`, `annotate` the `audit`), its
/// object, and the user's `extra` (see the contract).
pub(super) fn body_of(e: &ChangeEvent) -> Result<Vec<u8>> {
    let mut stored = e.clone();
    stored.object = None;
    stored.user.extra.clear();
    stored.user.username.clear();
    stored.namespace = None;
    stored.name.clear();
    stored.object_uid = None;
    stored.policies.clear();
    stored.state = Default::default();
    stored.commit = None;
    stored.audit = None;
    Ok(serde_json::to_vec(&stored)?)
}

impl PgStore {
    /// [`EventStore::append_buffered`]: commits the batch (there is nothing left for `sync`).
    pub(super) fn append_batch(&self, batch: &[Captured]) -> Result<Vec<AppendOutcome>> {
        self.append_batch_as(batch, None)
    }

    /// [`EventStore::append_copied`](crate::store::EventStore::append_copied): `batch` under
    /// `ids`, committed.
    pub(super) fn append_copied_batch(&self, batch: &[(EventId, Captured)]) -> Result<()> {
        let (ids, batch): (Vec<EventId>, Vec<Captured>) = batch.iter().cloned().unzip();
        self.append_batch_as(&batch, Some(&ids)).map(drop)
    }

    /// Appends `batch`; with `copied`, under those ids and as copies (see `append_copied`).
    fn append_batch_as(
        &self,
        batch: &[Captured],
        copied: Option<&[EventId]>,
    ) -> Result<Vec<AppendOutcome>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut w = self.writer.lock();
        let fp = fingerprint(batch);
        let (token, retry) = match w.pending {
            Some((f, t)) if f == fp => (t, true),
            _ => (random_i64(), false),
        };
        w.pending = Some((fp, token));
        let deadline = Instant::now() + self.append_timeout;
        let outcomes = self.with_client(deadline, |client| {
            self.append_tx(client, deadline, &mut w, batch, copied, token, retry)
        })?;
        w.pending = None;
        Ok(outcomes)
    }

    /// One batch in one transaction; see the module docs.
    // The batch, its copied ids and the attempt's token travel together only here.
    #[allow(clippy::too_many_arguments)]
    fn append_tx(
        &self,
        client: &mut deadpool_postgres::Object,
        deadline: Instant,
        w: &mut Writer,
        batch: &[Captured],
        copied: Option<&[EventId]>,
        token: i64,
        retry: bool,
    ) -> Result<Vec<AppendOutcome>> {
        let tx = self.wait(deadline, client.transaction())?;
        let st = self.wait(deadline, Prepared::get(&tx, &self.sql))?;

        let requests: Vec<[u8; 16]> = batch.iter().map(|c| c.dedupe).collect();
        let objects: Vec<i64> = batch.iter().map(|c| object_key(&c.event)).collect();
        let request_slices: Vec<&[u8]> = requests.iter().map(|r| &r[..]).collect();
        // One round trip: the server runs pipelined statements in the order they are sent, which
        // is the order `try_join!` first polls them (each sends on its first poll, its statement
        // being prepared), so the reads run under the lock.
        let (_, committed, last, found, heads) = self.wait(deadline, async {
            futures::try_join!(
                async { tx.execute(&st.lock, &[&self.sql.write_lock]).await },
                async {
                    match retry {
                        true => {
                            tx.query_opt(&st.find_batch, &[&self.writer_id, &token])
                                .await
                        }
                        false => Ok(None),
                    }
                },
                tx.query_one(&st.last_id, &[]),
                async { tx.query(&st.find_requests, &[&request_slices]).await },
                async { tx.query(&st.find_heads, &[&objects]).await },
            )
        })?;
        if let Some(row) = committed {
            // The failed attempt did commit: report what it did.
            return decode_outcomes(row.get::<_, &[u8]>(0));
        }
        let mut last_id = id_u64(last.get(0));
        if let Some(ids) = copied {
            crate::store::check_copied_ids(last_id, ids.iter().copied())?;
        }
        let mut seen: HashMap<[u8; 16], EventId> = HashMap::new();
        for row in &found {
            let key: &[u8] = row.get(0);
            if let Ok(key) = key.try_into() {
                seen.insert(key, id_u64(row.get(1)));
            }
        }
        let mut heads: HashMap<i64, Head> = heads
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    Head {
                        last: id_u64(r.get(1)),
                        count: r.get::<_, i64>(2) as u64,
                        pos: ChainPos {
                            since_snapshot: r.get::<_, i64>(3) as u64,
                            broken: r.get(4),
                        },
                    },
                )
            })
            .collect();
        // Policies of stored events a request of this batch may link to.
        let stored_ids: Vec<i64> = seen.values().map(|&id| id_i64(id)).collect();
        let mut stored_policies: HashMap<EventId, Vec<String>> = if stored_ids.is_empty() {
            HashMap::new()
        } else {
            self.wait(deadline, tx.query(&st.find_policies, &[&stored_ids]))?
                .iter()
                .map(|r| (id_u64(r.get(0)), r.get(1)))
                .collect()
        };

        let chain = Chain::new(self, &*tx);
        let mut rows = EventRows::default();
        // Index into `rows` of each event this batch records.
        let mut in_batch: HashMap<EventId, usize> = HashMap::new();
        let mut linked: BTreeSet<EventId> = BTreeSet::new();
        let mut new_states: HashMap<i64, (EventId, Value)> = HashMap::new();
        let mut new_requests: Vec<(Vec<u8>, i64)> = Vec::new();
        let mut new_kinds: Vec<(String, String)> = Vec::new();
        let mut new_policies: BTreeSet<String> = BTreeSet::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for (i, ((captured, request), &object)) in
            batch.iter().zip(&requests).zip(&objects).enumerate()
        {
            let event = &captured.event;
            let floor = last_id.saturating_sub(DEDUPE_WINDOW);
            let copied_id = copied.map(|ids| ids[i]);
            if copied_id.is_none()
                && let Some(&id) = seen.get(request).filter(|&&id| id >= floor)
            {
                let policies = match in_batch.get(&id) {
                    Some(&i) => Some(&mut rows.policies[i]),
                    None => stored_policies.get_mut(&id),
                };
                let Some(policies) = policies else {
                    // Recorded, then removed by retention: nothing to link to.
                    outcomes.push(AppendOutcome::Duplicate(id));
                    continue;
                };
                let mut added = false;
                for p in &event.policies {
                    if !policies.contains(p) {
                        policies.push(p.clone());
                        added = true;
                        if !w.policies.contains(p) {
                            new_policies.insert(p.clone());
                        }
                    }
                }
                if added {
                    if !in_batch.contains_key(&id) {
                        linked.insert(id);
                    }
                    outcomes.push(AppendOutcome::Linked(id));
                } else {
                    outcomes.push(AppendOutcome::Duplicate(id));
                }
                continue;
            }

            let received_us = event.received_at.as_microsecond().max(0) as u64;
            let id = copied_id.unwrap_or(received_us.max(last_id + 1));
            last_id = id;
            let prior = heads.get(&object).copied();
            if event.resource.subresource.is_none() {
                let gr = event.resource.group_resource();
                for alias in query::aliases(&event.resource, &event.kind) {
                    let pair = (alias, gr.clone());
                    if !w.kinds.contains(&pair) && !new_kinds.contains(&pair) {
                        new_kinds.push(pair);
                    }
                }
            }
            let previous = match prior {
                Some(h) if !h.pos.broken => match new_states.get(&object) {
                    Some((at, s)) if *at == h.last => Some(s.clone()),
                    _ => match w.states.get(&object) {
                        Some((at, s)) if *at == h.last => Some(s.clone()),
                        _ => history::state_after(&chain, h.last)?,
                    },
                },
                _ => None,
            };
            let pos = prior.map_or(ChainPos::default(), |h| h.pos);
            let before = captured.before.as_ref();
            let step = match copied_id {
                Some(_) => history::extend_copied(pos, previous, prior.is_some(), before, event),
                None => history::extend(pos, previous, before, event),
            };
            let snapshot = if step.snapshot {
                match (&event.resource.subresource, &event.object) {
                    (None, Some(object)) => Some(serde_json::to_vec(object)?),
                    _ => step.state.as_ref().map(serde_json::to_vec).transpose()?,
                }
            } else {
                None
            };
            let mut flags = 0;
            if step.unknown_state {
                flags |= F_UNKNOWN_STATE;
            }
            if step.chain_break {
                flags |= F_CHAIN_BREAK;
            }
            in_batch.insert(id, rows.id.len());
            rows.id.push(id_i64(id));
            rows.object.push(object);
            rows.namespace.push(event.namespace.clone());
            rows.name.push(event.name.clone());
            rows.uid.push(event.object_uid.clone());
            rows.username.push(event.user.username.clone());
            rows.operation.push(op_code(event.operation));
            rows.resource.push(event.resource.group_resource());
            rows.policies.push(event.policies.clone());
            rows.prev.push(prior.map(|h| id_i64(h.last)));
            rows.flags.push(flags);
            rows.body.push(body_of(event)?);
            rows.gap.push(if step.gap.is_empty() {
                None
            } else {
                Some(serde_json::to_vec(&step.gap)?)
            });
            rows.snapshot.push(snapshot);
            rows.state.push(state_code(event.state));
            rows.committed.push(committed_of(&event.commit)?);
            rows.audit.push(audit_of(event.audit.as_ref())?);
            heads.insert(
                object,
                Head {
                    last: id,
                    count: prior.map_or(0, |h| h.count) + 1,
                    pos: step.pos,
                },
            );
            match step.state {
                Some(state) => {
                    new_states.insert(object, (id, state));
                }
                None => {
                    new_states.remove(&object);
                }
            }
            for p in &event.policies {
                if !w.policies.contains(p) {
                    new_policies.insert(p.clone());
                }
            }
            seen.insert(*request, id);
            new_requests.push((request.to_vec(), id_i64(id)));
            outcomes.push(AppendOutcome::Recorded(id));
        }
        drop(chain);

        let recorded = rows.id.len() as i64;
        let joined: Vec<String> = rows.policies.iter().map(|p| p.join("\n")).collect();
        // One row per request: a request uid stored again past its dedupe window (a copy holds
        // such pairs) would otherwise make the upsert touch a row twice, which PostgreSQL
        // refuses. The newer id wins, as the window does.
        let new_requests: HashMap<Vec<u8>, i64> = new_requests.into_iter().collect();
        let (req_keys, req_ids): (Vec<Vec<u8>>, Vec<i64>) = new_requests.into_iter().unzip();
        let touched: Vec<i64> = rows
            .object
            .iter()
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let (h_obj, h_last, h_count, h_since, h_broken) = {
            let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for o in &touched {
                let h = heads[o];
                cols.0.push(*o);
                cols.1.push(id_i64(h.last));
                cols.2.push(h.count as i64);
                cols.3.push(h.pos.since_snapshot as i64);
                cols.4.push(h.pos.broken);
            }
            cols
        };
        let (link_ids, link_policies): (Vec<i64>, Vec<String>) = linked
            .iter()
            .map(|id| (id_i64(*id), stored_policies[id].join("\n")))
            .unzip();
        let (k_alias, k_gr): (Vec<String>, Vec<String>) = new_kinds.iter().cloned().unzip();
        let p_names: Vec<String> = new_policies.iter().cloned().collect();
        let encoded = encode_outcomes(&outcomes);
        let last = id_i64(last_id);
        self.wait(deadline, async {
            let events: &[&(dyn ToSql + Sync)] = &[
                &rows.id,
                &rows.object,
                &rows.namespace,
                &rows.name,
                &rows.uid,
                &rows.username,
                &rows.operation,
                &rows.resource,
                &joined,
                &rows.prev,
                &rows.flags,
                &rows.body,
                &rows.gap,
                &rows.snapshot,
                &rows.state,
                &rows.committed,
                &rows.audit,
            ];
            // One round trip, every statement pipelined (none reads what another writes).
            futures::try_join!(
                async {
                    match recorded > 0 {
                        true => tx.execute(&st.insert_events, events).await,
                        false => Ok(0),
                    }
                },
                async {
                    match recorded > 0 {
                        true => {
                            tx.execute(&st.upsert_requests, &[&req_keys, &req_ids])
                                .await
                        }
                        false => Ok(0),
                    }
                },
                async {
                    match recorded > 0 {
                        true => {
                            let heads: &[&(dyn ToSql + Sync)] =
                                &[&h_obj, &h_last, &h_count, &h_since, &h_broken];
                            tx.execute(&st.upsert_heads, heads).await
                        }
                        false => Ok(0),
                    }
                },
                async {
                    match link_ids.is_empty() {
                        false => {
                            tx.execute(&st.link_policies, &[&link_ids, &link_policies])
                                .await
                        }
                        true => Ok(0),
                    }
                },
                async {
                    match k_alias.is_empty() {
                        false => tx.execute(&st.insert_kinds, &[&k_alias, &k_gr]).await,
                        true => Ok(0),
                    }
                },
                async {
                    match p_names.is_empty() {
                        false => tx.execute(&st.insert_policies, &[&p_names]).await,
                        true => Ok(0),
                    }
                },
                async { tx.execute(&st.bump_meta, &[&last, &recorded]).await },
                async {
                    tx.execute(&st.upsert_batch, &[&self.writer_id, &token, &encoded])
                        .await
                },
            )
        })?;
        self.wait(deadline, tx.commit())?;

        if w.states.len() + new_states.len() > STATE_CACHE {
            w.states.clear();
        }
        w.states.extend(new_states);
        w.policies.extend(new_policies);
        w.kinds.extend(new_kinds);
        Ok(outcomes)
    }
}
