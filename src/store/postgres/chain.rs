//! Reading an object's chain back for [`history`](crate::store::history): rows fetched on demand,
//! each miss one indexed query back to the object's previous snapshot.

use super::{PgStore, id_i64, id_u64};
use crate::Result;
use crate::pipeline::FieldChange;
use crate::store::EventId;
use crate::store::history::{Link, RecordSource};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use tokio_postgres::GenericClient;

// `flags` bits.
pub(super) const F_UNKNOWN_STATE: i16 = 1;
pub(super) const F_CHAIN_BREAK: i16 = 2;

/// Only the changes of a `body`, for rebuilding.
#[derive(serde::Deserialize)]
struct Changes {
    #[serde(default)]
    changes: Vec<FieldChange>,
}

/// Chain rows read so far, fetched on demand: history asks for links newest first, and each
/// miss reads the object's rows back to its previous snapshot in one query.
pub(super) struct Chain<'a, C> {
    client: &'a C,
    store: &'a PgStore,
    links: RefCell<HashMap<EventId, Link>>,
    snaps: RefCell<HashMap<EventId, Value>>,
    /// Ids already looked up (found or not), so a miss is read once.
    loaded: RefCell<HashSet<EventId>>,
}

impl<'a, C: GenericClient + Sync> Chain<'a, C> {
    pub(super) fn new(store: &'a PgStore, client: &'a C) -> Self {
        Chain {
            client,
            store,
            links: RefCell::default(),
            snaps: RefCell::default(),
            loaded: RefCell::default(),
        }
    }

    fn load(&self, id: EventId) -> Result<()> {
        if !self.loaded.borrow_mut().insert(id) {
            return Ok(());
        }
        let rows = self.store.block_on(
            self.client
                .query(self.store.sql.chain.as_str(), &[&id_i64(id)]),
        )?;
        let mut links = self.links.borrow_mut();
        let mut snaps = self.snaps.borrow_mut();
        for row in rows {
            let id = id_u64(row.get(0));
            let flags: i16 = row.get(2);
            let changes: Changes = serde_json::from_slice(row.get::<_, &[u8]>(3))?;
            let gap = match row.get::<_, Option<&[u8]>>(4) {
                Some(b) => serde_json::from_slice(b)?,
                None => Vec::new(),
            };
            if let Some(s) = row.get::<_, Option<&[u8]>>(5) {
                snaps.insert(id, serde_json::from_slice(s)?);
            }
            links.insert(
                id,
                Link {
                    prev: row.get::<_, Option<i64>>(1).map(id_u64),
                    gap,
                    changes: changes.changes,
                    unknown_state: flags & F_UNKNOWN_STATE != 0,
                    chain_break: flags & F_CHAIN_BREAK != 0,
                },
            );
            self.loaded.borrow_mut().insert(id);
        }
        Ok(())
    }
}

impl<C: GenericClient + Sync> RecordSource for Chain<'_, C> {
    fn snapshot(&self, id: EventId) -> Result<Option<Value>> {
        self.load(id)?;
        Ok(self.snaps.borrow().get(&id).cloned())
    }

    fn link(&self, id: EventId) -> Result<Option<Link>> {
        self.load(id)?;
        Ok(self.links.borrow().get(&id).cloned())
    }
}
