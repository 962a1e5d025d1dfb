//! The shared in-memory index of compiled TrackingPolicies. Whoever learns about policies
//! (policy files in standalone mode, the controller in a cluster) writes here; capture reads here
//! on every review, so a change is seen at once, without a restart.

use crate::pipeline::CompiledPolicy;
use crate::store::RetentionRule;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Compiled policies by name.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    policies: RwLock<BTreeMap<String, Arc<CompiledPolicy>>>,
}

impl PolicyIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a policy.
    pub fn apply(&self, policy: CompiledPolicy) {
        let name = policy.name().to_string();
        self.write().insert(name, Arc::new(policy));
    }

    /// Removes a policy; its stored events fall back to the default retention.
    pub fn remove(&self, name: &str) {
        self.write().remove(name);
    }

    /// The policy with this name.
    pub fn get(&self, name: &str) -> Option<Arc<CompiledPolicy>> {
        self.read().get(name).cloned()
    }

    /// Every policy, by name.
    pub fn all(&self) -> Vec<Arc<CompiledPolicy>> {
        self.read().values().cloned().collect()
    }

    /// Names of the policies.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Retention of the named policy.
    pub fn retention(&self, name: &str) -> Option<RetentionRule> {
        self.read().get(name).map(|p| p.retention())
    }

    // A poisoned lock only means a panic elsewhere while holding it; the map itself is
    // always consistent (single insert/remove), so keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<CompiledPolicy>>> {
        self.policies.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<CompiledPolicy>>> {
        self.policies.write().unwrap_or_else(|e| e.into_inner())
    }
}
