//! Retention on PostgreSQL: candidates found by index (events past every policy's age, objects
//! over the smallest count limit), decided by the shared [`retention`](crate::store::retention)
//! rules, and pruned a few objects per transaction so the write lock is never held long.

use super::chain::{Chain, F_CHAIN_BREAK, F_UNKNOWN_STATE};
use super::{Head, PgStore, event_of, id_i64, id_u64};
use crate::Result;
use crate::store::history::{self, ChainPos, RecordSource};
use crate::store::retention::{CountWalk, MAX_REMOVALS_PER_PASS, Rules};
use crate::store::{DEDUPE_WINDOW, EmptiedObject, EventId, RetentionReport, RetentionRule};
use jiff::Timestamp;
use std::collections::BTreeSet;
use tokio_postgres::types::ToSql;

/// Objects one retention pass examines for their count limits.
const RETENTION_OBJECTS: i64 = 2_000;

/// Objects pruned per transaction (each holds the write lock for a few round trips).
const PRUNE_CHUNK: usize = 8;

/// Request rows deleted per retention pass once they are past the dedupe window.
const REQUEST_ROWS_PER_PASS: i64 = 50_000;

/// An object's events newest first, with their policies.
type ObjectEvents = Vec<(EventId, Vec<String>)>;

impl PgStore {
    /// [`EventStore::enforce_retention`].
    pub(super) fn retention_pass(
        &self,
        now: Timestamp,
        rule: &dyn Fn(&str) -> Option<RetentionRule>,
        default: RetentionRule,
    ) -> Result<RetentionReport> {
        let _pass = self.retention.lock();
        // Each statement has the operation timeout; the pass as a whole is bounded by its
        // budgets, not by a clock.
        self.with_client(std::time::Instant::now() + self.op_timeout, |client| {
            self.retention_on(client, now, rule, default)
        })
    }

    fn retention_on(
        &self,
        client: &mut deadpool_postgres::Object,
        now: Timestamp,
        rule: &dyn Fn(&str) -> Option<RetentionRule>,
        default: RetentionRule,
    ) -> Result<RetentionReport> {
        let sql = &self.sql;
        let policies: Vec<String> = self
            .block_on(client.query(sql.all_policies.as_str(), &[]))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let rules = Rules::new(now, policies.iter().cloned(), rule, default);
        let cutoffs: Vec<i64> = policies
            .iter()
            .map(|p| id_i64(rules.cutoff(rules.of(Some(p)).max_age)))
            .collect();
        let floor = id_i64(rules.age_floor());
        let default_cutoff = id_i64(rules.cutoff(default.max_age));
        let budget_rows = MAX_REMOVALS_PER_PASS as i64;
        let min_count = i64::from(rules.min_count());
        let aged_params: [&(dyn ToSql + Sync); 5] =
            [&floor, &default_cutoff, &policies, &cutoffs, &budget_rows];
        let counted_params: [&(dyn ToSql + Sync); 2] = [&min_count, &RETENTION_OBJECTS];
        let (aged, counted) = self.block_on(async {
            futures::try_join!(
                client.query(sql.aged_objects.as_str(), &aged_params),
                client.query(sql.counted_objects.as_str(), &counted_params),
            )
        })?;
        let mut objects: Vec<i64> = aged.iter().map(|r| r.get(0)).collect();
        let mut more = counted.len() as i64 == RETENTION_OBJECTS;
        objects.extend(counted.iter().map(|r| r.get::<_, i64>(0)));
        objects.sort_unstable();
        objects.dedup();

        let rows = if objects.is_empty() {
            Vec::new()
        } else {
            self.block_on(client.query(sql.object_events.as_str(), &[&objects]))?
        };
        let mut by_object: Vec<(i64, ObjectEvents)> = Vec::new();
        for row in &rows {
            let object: i64 = row.get(0);
            if by_object.last().is_none_or(|(o, _)| *o != object) {
                by_object.push((object, Vec::new()));
            }
            if let Some((_, events)) = by_object.last_mut() {
                events.push((id_u64(row.get(1)), row.get(2)));
            }
        }
        let mut budget = MAX_REMOVALS_PER_PASS;
        let mut plan = Vec::new();
        for (object, events) in by_object {
            let mut walk = CountWalk::default();
            let mut due = BTreeSet::new();
            // Newest first, as the walk counts.
            for (id, policies) in &events {
                if rules.due(&mut walk, *id, policies) {
                    if budget == 0 {
                        more = true;
                        break;
                    }
                    due.insert(*id);
                    budget -= 1;
                }
            }
            if !due.is_empty() {
                let mut ids: Vec<EventId> = events.iter().map(|(id, _)| *id).collect();
                ids.reverse();
                plan.push((object, ids, due));
            }
        }
        let mut report = RetentionReport::default();
        for chunk in plan.chunks(PRUNE_CHUNK) {
            let tx = self.block_on(client.transaction())?;
            self.block_on(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&self.sql.write_lock]))?;
            for (object, ids, due) in chunk {
                self.prune(&tx, *object, ids, due, &mut report)?;
            }
            self.block_on(tx.commit())?;
        }
        // Request rows past the dedupe window (and a margin) are no longer read.
        let last: i64 = self
            .block_on(client.query_one(sql.last_id.as_str(), &[]))?
            .get(0);
        let stale = last.saturating_sub(2 * DEDUPE_WINDOW as i64);
        self.block_on(
            client.execute(sql.old_requests.as_str(), &[&stale, &REQUEST_ROWS_PER_PASS]),
        )?;
        report.incomplete = more || budget == 0;
        Ok(report)
    }

    /// Removes `remove` from `object`'s events (`ids`, oldest first) in one transaction under
    /// the write lock, keeping what stays rebuildable: the first kept event after removed ones
    /// gets a snapshot and a link past them.
    fn prune(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        object: i64,
        ids: &[EventId],
        remove: &BTreeSet<EventId>,
        report: &mut RetentionReport,
    ) -> Result<()> {
        let sql = &self.sql;
        let Some(head) = self.block_on(tx.query_opt(sql.head.as_str(), &[&object]))? else {
            return Ok(());
        };
        let mut head = Head {
            last: id_u64(head.get(0)),
            count: head.get::<_, i64>(1) as u64,
            pos: ChainPos {
                since_snapshot: head.get::<_, i64>(2) as u64,
                broken: head.get(3),
            },
        };
        let chain = Chain::new(self, tx);
        let mut prev_kept = None;
        let mut after_removed = false;
        let mut reanchor = Vec::new();
        for &id in ids {
            if remove.contains(&id) {
                after_removed = true;
                continue;
            }
            if after_removed {
                let Some(link) = chain.link(id)? else {
                    continue;
                };
                let snapshot = match chain.snapshot(id)? {
                    Some(s) => Some(s),
                    None => history::state_after(&chain, id)?,
                };
                let mut flags = 0;
                if link.unknown_state || snapshot.is_none() {
                    flags |= F_UNKNOWN_STATE;
                }
                // What came just before it is gone, and so is what a gap was relative to.
                if link.chain_break || prev_kept.is_some() {
                    flags |= F_CHAIN_BREAK;
                }
                reanchor.push((id, snapshot, prev_kept, flags));
            }
            after_removed = false;
            prev_kept = Some(id);
        }
        drop(chain);
        for (id, snapshot, prev, flags) in reanchor {
            let snapshot = snapshot.map(|s| serde_json::to_vec(&s)).transpose()?;
            self.block_on(tx.execute(
                sql.reanchor.as_str(),
                &[&id_i64(id), &snapshot, &prev.map(id_i64), &flags],
            ))?;
        }
        let remove_ids: Vec<i64> = remove.iter().map(|&id| id_i64(id)).collect();
        let removed = self.block_on(tx.query(sql.delete_events.as_str(), &[&remove_ids]))?;
        report.removed += removed.len() as u64;
        head.count = head.count.saturating_sub(removed.len() as u64);
        self.block_on(tx.execute(sql.drop_count.as_str(), &[&(removed.len() as i64)]))?;
        match prev_kept {
            None => {
                self.block_on(tx.execute(sql.delete_head.as_str(), &[&object]))?;
                let last = removed
                    .iter()
                    .map(event_of)
                    .collect::<Result<Vec<_>>>()?
                    .into_iter()
                    .max_by_key(|e| e.id);
                if let Some(e) = last {
                    report.objects_emptied.push(EmptiedObject {
                        resource: e.event.resource.group_resource(),
                        namespace: e.event.namespace,
                        name: e.event.name,
                        uid: e.event.object_uid,
                    });
                }
            }
            Some(newest) => {
                if remove.contains(&head.last) {
                    // The next full object starts a new chain.
                    head.last = newest;
                    head.pos.broken = true;
                }
                self.block_on(tx.execute(
                    sql.set_head.as_str(),
                    &[
                        &object,
                        &id_i64(head.last),
                        &(head.count as i64),
                        &head.pos.broken,
                    ],
                ))?;
            }
        }
        Ok(())
    }
}
