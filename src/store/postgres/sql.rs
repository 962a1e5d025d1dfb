//! The engine's statements, built once with the schema's name.

/// The statements, with the schema filled in.
pub(super) struct Sql {
    pub(super) schema: String,
    /// Key of the advisory lock a writing transaction holds: one per schema, so stores in
    /// other schemas of the same database do not wait on each other.
    pub(super) write_lock: i64,
    /// Key of the advisory lock the delivering notifier's session holds.
    pub(super) notify_lock: i64,
    pub(super) insert_events: String,
    pub(super) upsert_requests: String,
    pub(super) upsert_heads: String,
    pub(super) insert_kinds: String,
    pub(super) insert_policies: String,
    pub(super) bump_meta: String,
    pub(super) upsert_batch: String,
    pub(super) find_batch: String,
    pub(super) last_id: String,
    pub(super) find_requests: String,
    pub(super) find_heads: String,
    pub(super) find_policies: String,
    pub(super) link_policies: String,
    pub(super) chain: String,
    pub(super) event: String,
    pub(super) kinds_of: String,
    pub(super) all_policies: String,
    pub(super) aged_objects: String,
    pub(super) counted_objects: String,
    pub(super) object_events: String,
    pub(super) head: String,
    pub(super) delete_events: String,
    pub(super) reanchor: String,
    pub(super) set_head: String,
    pub(super) delete_head: String,
    pub(super) drop_count: String,
    pub(super) old_requests: String,
    pub(super) count: String,
    pub(super) size: String,
    pub(super) resolve: String,
    pub(super) annotate: String,
    pub(super) live_objects: String,
    pub(super) cursor: String,
    pub(super) set_cursor: String,
}

/// The columns [`event_of`](super::event_of) reads, in its order.
pub(super) const EVENT_COLUMNS: &str =
    "id, namespace, name, uid, username, policies, body, state, committed, audit";

impl Sql {
    pub(super) fn new(s: &str) -> Sql {
        Sql {
            schema: s.to_owned(),
            write_lock: crate::store::digest::hash64(&["histor write", s]) as i64,
            notify_lock: crate::store::digest::hash64(&["histor notify", s]) as i64,
            insert_events: format!(
                "INSERT INTO {s}.events (id, object, namespace, name, uid, username, operation, \
                 resource, policies, prev, flags, body, gap, snapshot, state, committed, audit) \
                 SELECT u.id, u.object, u.namespace, u.name, u.uid, u.username, u.operation, \
                 u.resource, string_to_array(u.policies, E'\\n'), u.prev, u.flags, u.body, u.gap, \
                 u.snapshot, u.state, u.committed, u.audit FROM unnest($1::bigint[], $2::bigint[], \
                 $3::text[], $4::text[], $5::text[], $6::text[], $7::smallint[], $8::text[], \
                 $9::text[], $10::bigint[], $11::smallint[], $12::bytea[], $13::bytea[], \
                 $14::bytea[], $15::smallint[], $16::bytea[], $17::bytea[]) AS u(id, object, \
                 namespace, name, uid, username, operation, resource, policies, prev, flags, body, \
                 gap, snapshot, state, committed, audit)"
            ),
            upsert_requests: format!(
                "INSERT INTO {s}.requests (request, id) SELECT * FROM unnest($1::bytea[], \
                 $2::bigint[]) ON CONFLICT (request) DO UPDATE SET id = EXCLUDED.id"
            ),
            upsert_heads: format!(
                "INSERT INTO {s}.heads (object, last, count, since_snapshot, broken) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], \
                 $5::boolean[]) ON CONFLICT (object) DO UPDATE SET last = EXCLUDED.last, \
                 count = EXCLUDED.count, since_snapshot = EXCLUDED.since_snapshot, \
                 broken = EXCLUDED.broken"
            ),
            insert_kinds: format!(
                "INSERT INTO {s}.kinds (alias, group_resource) SELECT * FROM unnest($1::text[], \
                 $2::text[]) ON CONFLICT DO NOTHING"
            ),
            insert_policies: format!(
                "INSERT INTO {s}.policies (name) SELECT * FROM unnest($1::text[]) \
                 ON CONFLICT DO NOTHING"
            ),
            bump_meta: format!(
                "UPDATE {s}.meta SET value = CASE key WHEN 'last_id' THEN greatest(value, $1) \
                 ELSE value + $2 END WHERE key IN ('last_id', 'count')"
            ),
            upsert_batch: format!(
                "INSERT INTO {s}.batches (writer, token, outcomes) VALUES ($1, $2, $3) \
                 ON CONFLICT (writer) DO UPDATE SET token = EXCLUDED.token, \
                 outcomes = EXCLUDED.outcomes"
            ),
            find_batch: format!(
                "SELECT outcomes FROM {s}.batches WHERE writer = $1 AND token = $2"
            ),
            last_id: format!("SELECT value FROM {s}.meta WHERE key = 'last_id'"),
            find_requests: format!("SELECT request, id FROM {s}.requests WHERE request = ANY($1)"),
            find_heads: format!(
                "SELECT object, last, count, since_snapshot, broken FROM {s}.heads \
                 WHERE object = ANY($1)"
            ),
            find_policies: format!("SELECT id, policies FROM {s}.events WHERE id = ANY($1)"),
            link_policies: format!(
                "UPDATE {s}.events e SET policies = string_to_array(u.policies, E'\\n') \
                 FROM unnest($1::bigint[], $2::text[]) AS u(id, policies) WHERE e.id = u.id"
            ),
            // The event's object's rows from its newest snapshot at or before the event on.
            chain: format!(
                "SELECT e.id, e.prev, e.flags, e.body, e.gap, e.snapshot \
                 FROM {s}.events e, (SELECT object FROM {s}.events WHERE id = $1) o \
                 WHERE e.object = o.object AND e.id <= $1 AND e.id >= coalesce((SELECT \
                 max(x.id) FROM {s}.events x WHERE x.object = o.object AND x.id <= $1 \
                 AND x.snapshot IS NOT NULL), 0) ORDER BY e.id"
            ),
            event: format!("SELECT {EVENT_COLUMNS} FROM {s}.events WHERE id = $1"),
            kinds_of: format!("SELECT group_resource FROM {s}.kinds WHERE alias = $1"),
            all_policies: format!("SELECT name FROM {s}.policies"),
            // Objects with events past the max age of each of their policies ($2: the
            // default's cutoff, for events without a policy or of an unknown one).
            aged_objects: format!(
                "SELECT DISTINCT a.object FROM (SELECT e.object FROM {s}.events e \
                 WHERE e.id < $1 AND e.id < ALL (SELECT coalesce(r.cutoff, $2) \
                 FROM unnest(CASE WHEN cardinality(e.policies) = 0 THEN ARRAY[NULL::text] \
                 ELSE e.policies END) AS p(name) \
                 LEFT JOIN unnest($3::text[], $4::bigint[]) AS r(name, cutoff) \
                 ON r.name = p.name) ORDER BY e.id LIMIT $5) a"
            ),
            counted_objects: format!(
                "SELECT object FROM {s}.heads WHERE count > $1 ORDER BY last LIMIT $2"
            ),
            object_events: format!(
                "SELECT object, id, policies FROM {s}.events WHERE object = ANY($1) \
                 ORDER BY object, id DESC"
            ),
            head: format!(
                "SELECT last, count, since_snapshot, broken FROM {s}.heads WHERE object = $1"
            ),
            delete_events: format!(
                "DELETE FROM {s}.events WHERE id = ANY($1) \
                 RETURNING {EVENT_COLUMNS}"
            ),
            reanchor: format!(
                "UPDATE {s}.events SET snapshot = $2, prev = $3, gap = NULL, flags = $4 \
                 WHERE id = $1"
            ),
            set_head: format!(
                "UPDATE {s}.heads SET last = $2, count = $3, broken = $4 WHERE object = $1"
            ),
            delete_head: format!("DELETE FROM {s}.heads WHERE object = $1"),
            drop_count: format!("UPDATE {s}.meta SET value = value - $1 WHERE key = 'count'"),
            old_requests: format!(
                "DELETE FROM {s}.requests WHERE request IN (SELECT request FROM {s}.requests \
                 WHERE id < $1 LIMIT $2)"
            ),
            count: format!("SELECT value FROM {s}.meta WHERE key = 'count'"),
            // Only events still received change; the rows changed come back.
            resolve: format!(
                "UPDATE {s}.events e SET state = u.state, committed = u.committed \
                 FROM unnest($1::bigint[], $2::smallint[], $3::bytea[]) AS u(id, state, committed) \
                 WHERE e.id = u.id AND e.state = $4 RETURNING e.id"
            ),
            // Only events without an account yet take one; the rows changed come back.
            annotate: format!(
                "UPDATE {s}.events e SET audit = u.audit \
                 FROM unnest($1::bigint[], $2::bytea[]) AS u(id, audit) \
                 WHERE e.id = u.id AND e.audit IS NULL RETURNING e.id"
            ),
            // Heads whose newest event is of the resource (its subresources included: the
            // column holds the parent's), not a DELETE, with an object uid.
            live_objects: format!(
                "SELECT e.uid, e.namespace, e.name, e.id FROM {s}.heads h \
                 JOIN {s}.events e ON e.id = h.last \
                 WHERE e.resource = $1 AND e.operation <> $2 AND e.uid IS NOT NULL"
            ),
            cursor: format!("SELECT value FROM {s}.cursors WHERE key = $1"),
            set_cursor: format!(
                "INSERT INTO {s}.cursors (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ),
            size: "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE n.nspname = $1 AND c.relkind = 'r'"
                .to_owned(),
        }
    }
}
