//! Policy evaluation: a TrackingPolicy compiled once ([`CompiledPolicy::compile`]: globs, CEL
//! programs, field patterns, durations) and matched in-process against each request
//! ([`CompiledPolicy::matches`]), even where the apiserver already filtered.
//!
//! Matching, in order (the first failing check is the reason):
//! 1. resource rules, as in Kubernetes webhook rules: `apiGroups` (`*` for all), `apiVersions` (all
//!    when empty or `*`), `resources` where `deployments` is the main resource only,
//!    `deployments/scale` that subresource only, `deployments/*` every subresource, `*` every main
//!    resource, `*/scale` that subresource of any resource and `*/*` everything; and operations
//!    (all when the list is empty);
//! 2. namespaces: `exclude` wins over `include`; a cluster-scoped object (no namespace) matches only
//!    when `include` is empty, since it lives in no included namespace;
//! 3. users: `exclude` wins over `include` (globs on the user name); `excludeGroups` (globs too)
//!    rejects a user in any listed group;
//! 4. CEL conditions, all of which must return `true`, over `request` (the AdmissionRequest as the
//!    apiserver sends it, camelCase, without `object`/`oldObject`), `object` and `oldObject` (`null`
//!    when absent; their `metadata.managedFields` is never parsed). Only the variables a policy's
//!    conditions mention are built, and nothing at all when it has none. A Secret's `object` and
//!    `oldObject` are redacted first, exactly as the store keeps them ([`Redactor::redact`]): a
//!    condition sees `hmac-sha256:…` where the values were, never the values. A runtime error or a
//!    non-bool result is [`NotMatched::ConditionError`], carrying only a fixed
//!    [`ConditionErrorKind`]: CEL's messages quote the values they failed on.
//!
//! `namespaces.selector` and `objectSelector` are left to the apiserver (it has the labels of
//! namespaces). Globs use `globset` syntax; `*` also matches `:` and `/`.
//!
//! Depends on the CRD types and the event types only.

use super::noise::IgnorePattern;
use super::redact::Redactor;
use super::review::Request;
use crate::crd::{Operation, TrackingPolicySpec};
use crate::store::RetentionRule;
use crate::{Error, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};
use jiff::SignedDuration;
use kube_cel::KubeCelExt as _;
use serde_json::Value;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// Why a request does not match a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotMatched {
    /// No resource rule covers the request's group, version, resource and subresource.
    Resource,
    /// A rule covers the resource, but not this operation.
    Operation,
    /// The namespace is excluded, or not included (cluster-scoped objects with a non-empty
    /// `include`).
    Namespace,
    /// The user is excluded, or not included.
    User,
    /// The user is in an excluded group.
    Group,
    /// A condition returned false.
    Condition {
        /// Name of the condition.
        name: String,
    },
    /// A condition could not be evaluated (runtime error or a non-bool result): count it, since it
    /// usually means a broken policy.
    ConditionError {
        /// Name of the condition.
        name: String,
        /// What went wrong, as a fixed category: never CEL's message, which quotes values.
        kind: ConditionErrorKind,
    },
}

/// Why a CEL condition could not be evaluated, as a short fixed category that is safe to log and
/// to use as a metric label. CEL's own error messages quote the values involved (`Unsupported
/// binary operator '+': String("czNjcjN0"), Int(1)`), and those values may be a Secret's or any
/// other user data, so they are never kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionErrorKind {
    /// A map key or field that is not there.
    NoSuchKey,
    /// An operator, function or index applied to values of the wrong type.
    TypeMismatch,
    /// Integer overflow.
    Overflow,
    /// Division or remainder by zero.
    DivisionByZero,
    /// A list index out of range.
    OutOfBounds,
    /// A function failed on its argument (say `int('x')`).
    Function,
    /// A call with the wrong arguments, or to something undeclared.
    BadCall,
    /// The condition returned something other than a bool.
    NotBool,
    /// The interpreter panicked.
    Panic,
    /// Anything else.
    Other,
}

impl ConditionErrorKind {
    /// The category as a short fixed label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionErrorKind::NoSuchKey => "no_such_key",
            ConditionErrorKind::TypeMismatch => "type_mismatch",
            ConditionErrorKind::Overflow => "overflow",
            ConditionErrorKind::DivisionByZero => "division_by_zero",
            ConditionErrorKind::OutOfBounds => "out_of_bounds",
            ConditionErrorKind::Function => "function_error",
            ConditionErrorKind::BadCall => "bad_call",
            ConditionErrorKind::NotBool => "not_bool",
            ConditionErrorKind::Panic => "panic",
            ConditionErrorKind::Other => "other",
        }
    }

    fn of(e: &cel::ExecutionError) -> Self {
        use cel::ExecutionError as E;
        match e {
            E::NoSuchKey(_) => ConditionErrorKind::NoSuchKey,
            E::UnsupportedTargetType { .. }
            | E::NotSupportedAsMethod { .. }
            | E::UnsupportedKeyType(_)
            | E::UnexpectedType { .. }
            | E::NoSuchOverload
            | E::ValuesNotComparable(..)
            | E::UnsupportedUnaryOperator(..)
            | E::UnsupportedBinaryOperator(..)
            | E::UnsupportedMapIndex(_)
            | E::UnsupportedListIndex(_)
            | E::UnsupportedIndex(..) => ConditionErrorKind::TypeMismatch,
            E::Overflow(..) => ConditionErrorKind::Overflow,
            E::DivisionByZero(_) | E::RemainderByZero(_) => ConditionErrorKind::DivisionByZero,
            E::IndexOutOfBounds(_) => ConditionErrorKind::OutOfBounds,
            E::FunctionError { .. } => ConditionErrorKind::Function,
            E::InvalidArgumentCount { .. }
            | E::MissingArgumentOrTarget
            | E::UndeclaredReference(_)
            | E::UnsupportedFunctionCallIdentifierType(_)
            | E::UnsupportedFieldsConstruction(_) => ConditionErrorKind::BadCall,
            _ => ConditionErrorKind::Other,
        }
    }
}

impl std::fmt::Display for ConditionErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl NotMatched {
    /// A short, fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            NotMatched::Resource => "resource",
            NotMatched::Operation => "operation",
            NotMatched::Namespace => "namespace",
            NotMatched::User => "user",
            NotMatched::Group => "group",
            NotMatched::Condition { .. } => "condition",
            NotMatched::ConditionError { .. } => "condition_error",
        }
    }
}

impl std::fmt::Display for NotMatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotMatched::Resource => f.write_str("resource not covered by any rule"),
            NotMatched::Operation => f.write_str("operation not covered by the rules"),
            NotMatched::Namespace => f.write_str("namespace not tracked"),
            NotMatched::User => f.write_str("user not tracked"),
            NotMatched::Group => f.write_str("user in an excluded group"),
            NotMatched::Condition { name } => write!(f, "condition {name} is false"),
            NotMatched::ConditionError { name, kind } => {
                write!(f, "condition {name} failed: {kind}")
            }
        }
    }
}

/// A TrackingPolicy ready to match requests: everything that can be compiled is compiled.
pub struct CompiledPolicy {
    name: String,
    spec: TrackingPolicySpec,
    rules: Vec<Rule>,
    namespaces_include: Option<GlobSet>,
    namespaces_exclude: Option<GlobSet>,
    users_include: Option<GlobSet>,
    users_exclude: Option<GlobSet>,
    groups_exclude: Option<GlobSet>,
    cel: Option<Cel>,
    ignore: Vec<IgnorePattern>,
    retention: RetentionRule,
    digests: Vec<(String, Option<SignedDuration>)>,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// One resource rule, with `group/resource` entries split once.
#[derive(Debug)]
struct Rule {
    groups: Vec<String>,
    versions: Vec<String>,
    resources: Vec<(String, Option<String>)>,
    operations: Vec<Operation>,
}

impl Rule {
    fn covers_resource(&self, req: &Request) -> bool {
        let r = &req.resource;
        let any_or = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        any_or(&self.groups, &r.group)
            && (self.versions.is_empty() || any_or(&self.versions, &r.version))
            && self.resources.iter().any(|(res, sub)| {
                // As the apiserver's rule matcher does: a `*` subresource also matches the
                // resource itself, so `*/*` is everything and `deployments/*` includes deployments.
                (res == "*" || *res == r.resource)
                    && match (sub.as_deref(), r.subresource.as_deref()) {
                        (None, None) => true,
                        (Some("*"), _) => true,
                        (Some(want), Some(got)) => want == got,
                        _ => false,
                    }
            })
    }

    fn covers_operation(&self, op: Operation) -> bool {
        self.operations.is_empty() || self.operations.contains(&op)
    }
}

/// The CEL side of a policy: programs, plus a root context holding the functions (standard and
/// Kubernetes), built once and shared by every evaluation.
struct Cel {
    root: cel::Context<'static>,
    conditions: Vec<(String, cel::Program)>,
    uses_request: bool,
    uses_object: bool,
    uses_old_object: bool,
}

/// Variables a condition may use.
const CEL_VARIABLES: [&str; 3] = ["request", "object", "oldObject"];

impl CompiledPolicy {
    /// Compiles `spec`; every error is [`Error::Policy`] naming `name` and the offending field.
    ///
    /// Blocks briefly: each CEL condition is parsed on a short-lived thread with a large stack
    /// (the generated parser recurses deeply on nested input, and a stack overflow would abort the
    /// process). Call it when a policy changes, not per request.
    pub fn compile(name: &str, spec: &TrackingPolicySpec) -> Result<CompiledPolicy> {
        let err = |message: String| Error::Policy {
            policy: name.to_owned(),
            message,
        };
        if spec.resources.is_empty() {
            return Err(err("resources: at least one rule is needed".into()));
        }
        let rules = spec
            .resources
            .iter()
            .enumerate()
            .map(|(i, r)| compile_rule(i, r))
            .collect::<Result<Vec<_>, String>>()
            .map_err(err)?;

        let ns = spec.namespaces.as_ref();
        let users = spec.users.as_ref();
        let namespaces_include =
            globs("namespaces.include", ns.map_or(&[], |n| &n.include)).map_err(err)?;
        let namespaces_exclude =
            globs("namespaces.exclude", ns.map_or(&[], |n| &n.exclude)).map_err(err)?;
        let users_include =
            globs("users.include", users.map_or(&[], |u| &u.include)).map_err(err)?;
        let users_exclude =
            globs("users.exclude", users.map_or(&[], |u| &u.exclude)).map_err(err)?;
        let groups_exclude = globs(
            "users.excludeGroups",
            users.map_or(&[], |u| &u.exclude_groups),
        )
        .map_err(err)?;

        let cel = compile_conditions(spec).map_err(err)?;

        let ignore = spec
            .ignore_fields
            .iter()
            .enumerate()
            .map(|(i, p)| IgnorePattern::parse(p).map_err(|e| format!("ignoreFields[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;

        let max_age = parse_duration(&spec.retention.max_age)
            .map_err(|e| err(format!("retention.maxAge: {e}")))?;
        if max_age <= SignedDuration::ZERO {
            return Err(err(format!(
                "retention.maxAge: {:?} must be longer than zero",
                spec.retention.max_age
            )));
        }
        if spec.retention.max_events_per_object == 0 {
            return Err(err("retention.maxEventsPerObject must be at least 1".into()));
        }
        let retention = RetentionRule {
            max_events_per_object: spec.retention.max_events_per_object,
            max_age,
        };

        let digests = spec
            .notify
            .iter()
            .map(|s| {
                let d = match &s.digest {
                    None => None,
                    Some(d) => Some(
                        parse_duration(d).map_err(|e| format!("notify[{}].digest: {e}", s.name))?,
                    ),
                };
                Ok((s.name.clone(), d))
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(err)?;

        Ok(CompiledPolicy {
            name: name.to_owned(),
            spec: spec.clone(),
            rules,
            namespaces_include,
            namespaces_exclude,
            users_include,
            users_exclude,
            groups_exclude,
            cel,
            ignore,
            retention,
            digests,
        })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The spec it was compiled from.
    pub fn spec(&self) -> &TrackingPolicySpec {
        &self.spec
    }

    /// Whether `status` changes are recorded.
    pub fn track_status(&self) -> bool {
        self.spec.track_status
    }

    /// The compiled `ignoreFields`.
    pub fn ignore_fields(&self) -> &[IgnorePattern] {
        &self.ignore
    }

    /// Retention, with `maxAge` parsed.
    pub fn retention(&self) -> RetentionRule {
        self.retention
    }

    /// The digest window of a notify sink, by sink name (`None`: no such sink, or no digest).
    pub fn digest(&self, sink: &str) -> Option<SignedDuration> {
        self.digests
            .iter()
            .find(|(n, _)| n == sink)
            .and_then(|(_, d)| *d)
    }

    /// Whether a rule covers the resource itself (not a subresource) in this group and version,
    /// whatever the operation: what a watch of it can witness.
    pub fn covers(&self, group: &str, version: &str, resource: &str) -> bool {
        let any_or = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        self.rules.iter().any(|r| {
            any_or(&r.groups, group)
                && (r.versions.is_empty() || any_or(&r.versions, version))
                && r.resources.iter().any(|(res, sub)| {
                    (res == "*" || res == resource) && matches!(sub.as_deref(), None | Some("*"))
                })
        })
    }

    /// Whether the request is one this policy records (see the module docs for the order).
    /// `redactor` hides a Secret's values from the CEL conditions.
    pub fn matches(&self, req: &Request, redactor: &Redactor) -> Result<(), NotMatched> {
        if !self.rules.iter().any(|r| r.covers_resource(req)) {
            return Err(NotMatched::Resource);
        }
        if !self
            .rules
            .iter()
            .any(|r| r.covers_resource(req) && r.covers_operation(req.operation))
        {
            return Err(NotMatched::Operation);
        }
        self.matches_namespace(req)?;
        self.matches_user(req)?;
        match &self.cel {
            None => Ok(()),
            Some(cel) => cel.evaluate(req, redactor),
        }
    }

    /// For a change seen without a review (the watch), whose user is unknown: whether the
    /// policy covers the object, and whether it would also have to know the user to decide
    /// (`Ok(true)`: it filters by user or group, or a condition reads `request`). Conditions on
    /// the object alone are evaluated.
    pub fn matches_unattributed(
        &self,
        req: &Request,
        redactor: &Redactor,
    ) -> Result<bool, NotMatched> {
        if !self
            .rules
            .iter()
            .any(|r| r.covers_resource(req) && r.covers_operation(req.operation))
        {
            return Err(NotMatched::Resource);
        }
        self.matches_namespace(req)?;
        let by_user = self.users_exclude.is_some()
            || self.users_include.is_some()
            || self.groups_exclude.is_some();
        match &self.cel {
            Some(cel) if cel.uses_request => Ok(true),
            Some(cel) => cel.evaluate(req, redactor).map(|()| by_user),
            None => Ok(by_user),
        }
    }

    fn matches_namespace(&self, req: &Request) -> Result<(), NotMatched> {
        if self.tracks_namespace(req.namespace.as_deref()) {
            Ok(())
        } else {
            Err(NotMatched::Namespace)
        }
    }

    /// True when the policy's namespace globs take `namespace` (`None`: cluster-scoped, taken
    /// only without `include`). The namespace label selector is the apiserver's to apply.
    pub fn tracks_namespace(&self, namespace: Option<&str>) -> bool {
        match namespace {
            Some(ns) => {
                !is_match(&self.namespaces_exclude, ns)
                    && self
                        .namespaces_include
                        .as_ref()
                        .is_none_or(|g| g.is_match(ns))
            }
            None => self.namespaces_include.is_none(),
        }
    }

    /// True when the policy keeps `event`: it selects Events, the Event is in a namespace it
    /// tracks, and the selection takes it.
    pub fn keeps_event(&self, event: &crate::events::KubeEvent) -> bool {
        self.spec.events.as_ref().is_some_and(|sel| {
            let ns = Some(event.namespace.as_str()).filter(|n| !n.is_empty());
            self.tracks_namespace(ns) && crate::events::keeps(sel, event)
        })
    }

    fn matches_user(&self, req: &Request) -> Result<(), NotMatched> {
        let user = req.user.username.as_str();
        if is_match(&self.users_exclude, user)
            || self
                .users_include
                .as_ref()
                .is_some_and(|g| !g.is_match(user))
        {
            return Err(NotMatched::User);
        }
        if let Some(g) = &self.groups_exclude
            && req.user.groups.iter().any(|grp| g.is_match(grp))
        {
            return Err(NotMatched::Group);
        }
        Ok(())
    }
}

fn is_match(set: &Option<GlobSet>, s: &str) -> bool {
    set.as_ref().is_some_and(|g| g.is_match(s))
}

fn compile_rule(i: usize, r: &crate::crd::ResourceRule) -> Result<Rule, String> {
    if r.api_groups.is_empty() {
        return Err(format!(
            "resources[{i}].apiGroups: at least one group is needed (\"\" is the core group)"
        ));
    }
    if r.resources.is_empty() {
        return Err(format!(
            "resources[{i}].resources: at least one resource is needed"
        ));
    }
    let resources = r
        .resources
        .iter()
        .map(|res| {
            let (main, sub) = match res.split_once('/') {
                Some((m, s)) => (m, Some(s)),
                None => (res.as_str(), None),
            };
            if main.is_empty() || sub.is_some_and(|s| s.is_empty() || s.contains('/')) {
                return Err(format!(
                    "resources[{i}].resources: {res:?} is not a resource (such as deployments, deployments/scale, */scale or *)"
                ));
            }
            Ok((main.to_owned(), sub.map(str::to_owned)))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Rule {
        groups: r.api_groups.clone(),
        versions: r.api_versions.clone(),
        resources,
        operations: r.operations.clone(),
    })
}

/// A set of globs, `None` when the list is empty (so "empty" can mean "all" or "none").
fn globs(field: &str, patterns: &[String]) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for (i, p) in patterns.iter().enumerate() {
        let glob =
            Glob::new(p).map_err(|e| format!("{field}[{i}]: bad glob {p:?}: {}", e.kind()))?;
        b.add(glob);
    }
    b.build().map(Some).map_err(|e| format!("{field}: {e}"))
}

fn compile_conditions(spec: &TrackingPolicySpec) -> Result<Option<Cel>, String> {
    if spec.conditions.is_empty() {
        return Ok(None);
    }
    let mut conditions = Vec::with_capacity(spec.conditions.len());
    let (mut uses_request, mut uses_object, mut uses_old_object) = (false, false, false);
    for c in &spec.conditions {
        let (program, free) =
            compile_expression(&c.expression).map_err(|e| format!("condition {}: {e}", c.name))?;
        if let Some(v) = free.iter().find(|v| !CEL_VARIABLES.contains(&v.as_str())) {
            return Err(format!(
                "condition {}: unknown variable {v:?} (conditions may use request, object and oldObject)",
                c.name
            ));
        }
        uses_request |= free.iter().any(|v| v == "request");
        uses_object |= free.iter().any(|v| v == "object");
        uses_old_object |= free.iter().any(|v| v == "oldObject");
        conditions.push((c.name.clone(), program));
    }
    let mut root = cel::Context::default();
    root.register_all();
    Ok(Some(Cel {
        root,
        conditions,
        uses_request,
        uses_object,
        uses_old_object,
    }))
}

/// Deepest expression tree accepted. Real conditions are far shallower; the limit bounds the stack
/// the interpreter needs on the hot path (it recurses once per level).
const MAX_CEL_DEPTH: usize = 48;
/// Stack for the parser thread: the generated parser recurses deeply (about 90 nested parentheses
/// overflow a 2 MiB stack in debug builds) before its own depth check applies.
const CEL_PARSER_STACK: usize = 256 << 20;
/// Longest error message kept from the parser.
const MAX_CEL_ERROR: usize = 300;

/// Parses one expression on a thread with a big stack (a stack overflow cannot be caught, a panic
/// can), rejects trees deeper than [`MAX_CEL_DEPTH`], and returns the program with its free
/// variables.
fn compile_expression(expr: &str) -> Result<(cel::Program, Vec<String>), String> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("cel-parse".into())
            .stack_size(CEL_PARSER_STACK)
            .spawn_scoped(scope, || {
                let program = cel::Program::compile(expr).map_err(|e| {
                    let mut m = one_line(&e.to_string());
                    if m.len() > MAX_CEL_ERROR {
                        let cut = (0..=MAX_CEL_ERROR).rev().find(|i| m.is_char_boundary(*i)).unwrap_or(0);
                        m.truncate(cut);
                        m.push('…');
                    }
                    format!("invalid CEL: {m}")
                })?;
                let mut free = Vec::new();
                let depth = walk(program.expression(), &mut Vec::new(), &mut free);
                if depth > MAX_CEL_DEPTH {
                    // Dropped here too: dropping a deep tree recurses as well.
                    return Err(format!(
                        "expression nests {depth} levels deep, more than the {MAX_CEL_DEPTH} allowed"
                    ));
                }
                Ok((program, free))
            })
            .map_err(|e| format!("could not start the CEL parser: {e}"))?;
        handle
            .join()
            .map_err(|_| "the CEL parser failed on this expression".to_owned())?
    })
}

/// Depth of the tree under `e`; collects identifiers not bound by a macro into `free`.
fn walk(e: &cel::parser::Expression, bound: &mut Vec<String>, free: &mut Vec<String>) -> usize {
    use cel::common::ast::{EntryExpr, Expr};
    let mut deepest = 0;
    let mut sub = |x: &cel::parser::Expression, bound: &mut Vec<String>| {
        deepest = deepest.max(walk(x, bound, free));
    };
    match &e.expr {
        Expr::Unspecified | Expr::Literal(_) => {}
        Expr::Ident(name) => {
            if !name.starts_with('@') && !bound.contains(name) && !free.contains(name) {
                free.push(name.clone());
            }
        }
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                sub(t, bound);
            }
            call.args.iter().for_each(|a| sub(a, bound));
        }
        Expr::Select(s) => sub(&s.operand, bound),
        Expr::List(l) => l.elements.iter().for_each(|x| sub(x, bound)),
        Expr::Map(cel::common::ast::MapExpr { entries })
        | Expr::Struct(cel::common::ast::StructExpr { entries, .. }) => {
            for entry in entries {
                match &entry.expr {
                    EntryExpr::StructField(f) => sub(&f.value, bound),
                    EntryExpr::MapEntry(me) => {
                        sub(&me.key, bound);
                        sub(&me.value, bound);
                    }
                }
            }
        }
        Expr::Comprehension(c) => {
            sub(&c.iter_range, bound);
            sub(&c.accu_init, bound);
            let n = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            sub(&c.loop_cond, bound);
            sub(&c.loop_step, bound);
            sub(&c.result, bound);
            bound.truncate(n);
        }
    }
    deepest + 1
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Cel {
    fn evaluate(&self, req: &Request, redactor: &Redactor) -> Result<(), NotMatched> {
        let mut ctx = self.root.new_inner_scope();
        if self.uses_request {
            ctx.add_variable_from_value("request", request_value(req));
        }
        // Built from the redacted object, so no Secret value reaches the interpreter: none can turn
        // up in a result or an error.
        let object = |v: &Option<Value>| {
            v.as_ref().map_or(cel::Value::Null, |v| {
                to_cel(&redactor.redacted(v, &req.kind))
            })
        };
        if self.uses_object {
            ctx.add_variable_from_value("object", object(&req.object));
        }
        if self.uses_old_object {
            ctx.add_variable_from_value("oldObject", object(&req.old_object));
        }
        for (name, program) in &self.conditions {
            let error = |kind| NotMatched::ConditionError {
                name: name.clone(),
                kind,
            };
            match catch_unwind(AssertUnwindSafe(|| program.execute(&ctx))) {
                Ok(Ok(cel::Value::Bool(true))) => {}
                Ok(Ok(cel::Value::Bool(false))) => {
                    return Err(NotMatched::Condition { name: name.clone() });
                }
                Ok(Ok(_)) => return Err(error(ConditionErrorKind::NotBool)),
                Ok(Err(e)) => return Err(error(ConditionErrorKind::of(&e))),
                Err(_) => return Err(error(ConditionErrorKind::Panic)),
            }
        }
        Ok(())
    }
}

/// `request` as CEL sees it: the AdmissionRequest fields, camelCase, without the objects.
fn request_value(req: &Request) -> cel::Value {
    let mut m: HashMap<cel::objects::Key, cel::Value> = HashMap::with_capacity(12);
    let s = |v: &str| cel::Value::String(Arc::new(v.to_owned()));
    let put = |m: &mut HashMap<cel::objects::Key, cel::Value>, k: &str, v: cel::Value| {
        m.insert(cel::objects::Key::String(Arc::new(k.to_owned())), v);
    };
    let kind = json_map([
        ("group", &req.kind.group),
        ("version", &req.kind.version),
        ("kind", &req.kind.kind),
    ]);
    let resource = json_map([
        ("group", &req.resource.group),
        ("version", &req.resource.version),
        ("resource", &req.resource.resource),
    ]);
    put(&mut m, "uid", s(&req.uid));
    put(&mut m, "kind", kind);
    put(&mut m, "resource", resource);
    put(
        &mut m,
        "subResource",
        s(req.resource.subresource.as_deref().unwrap_or("")),
    );
    put(&mut m, "name", s(&req.name));
    put(
        &mut m,
        "namespace",
        s(req.namespace.as_deref().unwrap_or("")),
    );
    put(&mut m, "operation", s(req.operation.as_str()));
    put(&mut m, "dryRun", cel::Value::Bool(req.dry_run));
    if let Some(o) = &req.options {
        put(&mut m, "options", to_cel(o));
    }
    let mut user: HashMap<cel::objects::Key, cel::Value> = HashMap::with_capacity(4);
    put(&mut user, "username", s(&req.user.username));
    if let Some(uid) = &req.user.uid {
        put(&mut user, "uid", s(uid));
    }
    put(
        &mut user,
        "groups",
        cel::Value::List(Arc::new(req.user.groups.iter().map(|g| s(g)).collect())),
    );
    let extra = req
        .user
        .extra
        .iter()
        .map(|(k, vs)| {
            (
                cel::objects::Key::String(Arc::new(k.clone())),
                cel::Value::List(Arc::new(vs.iter().map(|v| s(v)).collect())),
            )
        })
        .collect();
    put(
        &mut user,
        "extra",
        cel::Value::Map(cel::objects::Map {
            map: Arc::new(extra),
        }),
    );
    put(
        &mut m,
        "userInfo",
        cel::Value::Map(cel::objects::Map {
            map: Arc::new(user),
        }),
    );
    cel::Value::Map(cel::objects::Map { map: Arc::new(m) })
}

fn json_map<const N: usize>(entries: [(&str, &String); N]) -> cel::Value {
    let map = entries
        .into_iter()
        .map(|(k, v)| {
            (
                cel::objects::Key::String(Arc::new(k.to_owned())),
                cel::Value::String(Arc::new(v.clone())),
            )
        })
        .collect();
    cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
}

/// JSON to CEL, with integers as CEL `int` (as Kubernetes does), not `uint`.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => cel::Value::Map(cel::objects::Map {
            map: Arc::new(
                m.iter()
                    .map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), to_cel(v)))
                    .collect(),
            ),
        }),
    }
}

/// Parses a Go duration (`720h`, `90m`, `1h30m`, `1.5h`, `300ms`, `10us`, `-2s`, `0`) as
/// `time.ParseDuration` does.
pub fn parse_duration(s: &str) -> Result<SignedDuration, String> {
    let bad = || format!("{s:?} is not a duration (such as 720h, 90m or 1h30m)");
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(SignedDuration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .bytes()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(rest.len());
        let int_part = &rest[..int_end];
        rest = &rest[int_end..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let frac_end = r
                .bytes()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(r.len());
            frac_part = &r[..frac_end];
            rest = &r[frac_end..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_end = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit: i128 = match &rest[..unit_end] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(format!("{s:?}: missing unit (ns, us, ms, s, m or h)")),
            u => return Err(format!("{s:?}: unknown unit {u:?} (ns, us, ms, s, m or h)")),
        };
        rest = &rest[unit_end..];
        let whole: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        let mut nanos = whole.checked_mul(unit).ok_or_else(bad)?;
        if !frac_part.is_empty() {
            // Keep at most 18 digits: beyond that, precision is below a nanosecond anyway.
            let digits = &frac_part[..frac_part.len().min(18)];
            let f: i128 = digits.parse().map_err(|_| bad())?;
            let scale = 10i128.pow(u32::try_from(digits.len()).map_err(|_| bad())?);
            nanos = nanos.checked_add(f * unit / scale).ok_or_else(bad)?;
        }
        total = total.checked_add(nanos).ok_or_else(bad)?;
        if total > i128::from(i64::MAX) * 1_000_000_000 {
            return Err(format!("{s:?}: too long"));
        }
    }
    if negative {
        total = -total;
    }
    let secs = i64::try_from(total / 1_000_000_000).map_err(|_| bad())?;
    let nanos = i32::try_from(total % 1_000_000_000).map_err(|_| bad())?;
    Ok(SignedDuration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{MatchCondition, NamespaceFilter, ResourceRule, UserFilter};
    use crate::pipeline::testdata;

    fn rule(groups: &[&str], resources: &[&str]) -> ResourceRule {
        ResourceRule {
            api_groups: groups.iter().map(|s| s.to_string()).collect(),
            api_versions: vec![],
            resources: resources.iter().map(|s| s.to_string()).collect(),
            operations: vec![Operation::Create, Operation::Update, Operation::Delete],
        }
    }

    fn spec(rules: Vec<ResourceRule>) -> TrackingPolicySpec {
        TrackingPolicySpec {
            resources: rules,
            ..Default::default()
        }
    }

    fn everything() -> TrackingPolicySpec {
        spec(vec![rule(&["*"], &["*", "*/*"])])
    }

    fn redactor() -> Redactor {
        Redactor::new(b"0123456789abcdef0123456789abcdef")
    }

    fn compile(spec: &TrackingPolicySpec) -> CompiledPolicy {
        CompiledPolicy::compile("p", spec).unwrap()
    }

    fn policy_error(spec: &TrackingPolicySpec) -> String {
        match CompiledPolicy::compile("p", spec) {
            Err(Error::Policy { policy, message }) => {
                assert_eq!(policy, "p");
                message
            }
            other => panic!("expected a policy error, got {other:?}"),
        }
    }

    #[test]
    fn everything_matches_every_fixture() {
        let p = compile(&everything());
        for (name, _) in testdata::FIXTURES {
            assert_eq!(
                p.matches(&testdata::request(name), &redactor()),
                Ok(()),
                "{name}"
            );
        }
    }

    #[test]
    fn subresource_rules() {
        let main = testdata::request("update-deployment");
        let scale = testdata::request("update-deployment-scale");
        let status = testdata::request("update-widget-status");
        let wscale = testdata::request("update-widget-scale");
        let cm = testdata::request("create-configmap");
        let check = |resources: &[&str], groups: &[&str], expect: [bool; 5]| {
            let p = compile(&spec(vec![rule(groups, resources)]));
            let got =
                [&main, &scale, &status, &wscale, &cm].map(|r| p.matches(r, &redactor()).is_ok());
            assert_eq!(got, expect, "{resources:?} {groups:?}");
        };
        check(
            &["deployments"],
            &["apps"],
            [true, false, false, false, false],
        );
        check(
            &["deployments/scale"],
            &["apps"],
            [false, true, false, false, false],
        );
        check(
            &["deployments/*"],
            &["apps"],
            [true, true, false, false, false],
        );
        check(
            &["deployments", "deployments/*"],
            &["apps"],
            [true, true, false, false, false],
        );
        check(&["*/scale"], &["*"], [false, true, false, true, false]);
        check(&["*/status"], &["*"], [false, false, true, false, false]);
        check(&["*"], &["*"], [true, false, false, false, true]);
        check(&["*/*"], &["*"], [true, true, true, true, true]);
        check(&["configmaps"], &[""], [false, false, false, false, true]);
        check(
            &["configmaps"],
            &["apps"],
            [false, false, false, false, false],
        );
        check(
            &["widgets/status"],
            &["example.com"],
            [false, false, true, false, false],
        );
    }

    #[test]
    fn versions_and_operations() {
        let mut r = rule(&["apps"], &["deployments"]);
        r.api_versions = vec!["v1beta1".into()];
        let p = compile(&spec(vec![r.clone()]));
        assert_eq!(
            p.matches(&testdata::request("update-deployment"), &redactor()),
            Err(NotMatched::Resource)
        );
        r.api_versions = vec!["v1".into()];
        r.operations = vec![Operation::Delete];
        let p = compile(&spec(vec![r]));
        assert_eq!(
            p.matches(&testdata::request("update-deployment"), &redactor()),
            Err(NotMatched::Operation)
        );
        assert_eq!(
            p.matches(&testdata::request("delete-deployment"), &redactor()),
            Ok(())
        );
    }

    #[test]
    fn namespace_globs() {
        let mut s = everything();
        let req = testdata::request("create-configmap"); // namespace demo
        let mut cluster_scoped = req.clone();
        cluster_scoped.namespace = None;
        let ns = |include: &[&str], exclude: &[&str]| NamespaceFilter {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            selector: None,
        };
        s.namespaces = Some(ns(&["de*"], &[]));
        assert_eq!(compile(&s).matches(&req, &redactor()), Ok(()));
        assert_eq!(
            compile(&s).matches(&cluster_scoped, &redactor()),
            Err(NotMatched::Namespace)
        );
        s.namespaces = Some(ns(&["prod-*"], &[]));
        assert_eq!(
            compile(&s).matches(&req, &redactor()),
            Err(NotMatched::Namespace)
        );
        s.namespaces = Some(ns(&["*"], &["demo"]));
        assert_eq!(
            compile(&s).matches(&req, &redactor()),
            Err(NotMatched::Namespace)
        );
        s.namespaces = Some(ns(&[], &["kube-*"]));
        assert_eq!(compile(&s).matches(&req, &redactor()), Ok(()));
        assert_eq!(compile(&s).matches(&cluster_scoped, &redactor()), Ok(()));
    }

    #[test]
    fn users_and_groups() {
        let alice = testdata::request("create-configmap-alice");
        let admin = testdata::request("create-configmap");
        let mut s = everything();
        let users = |include: &[&str], exclude: &[&str], groups: &[&str]| UserFilter {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            exclude_groups: groups.iter().map(|s| s.to_string()).collect(),
        };
        s.users = Some(users(&["ali*"], &[], &[]));
        let p = compile(&s);
        assert_eq!(p.matches(&alice, &redactor()), Ok(()));
        assert_eq!(p.matches(&admin, &redactor()), Err(NotMatched::User));
        s.users = Some(users(&[], &["alice"], &[]));
        let p = compile(&s);
        assert_eq!(p.matches(&alice, &redactor()), Err(NotMatched::User));
        assert_eq!(p.matches(&admin, &redactor()), Ok(()));
        s.users = Some(users(&[], &[], &["system:masters"]));
        let p = compile(&s);
        assert_eq!(p.matches(&alice, &redactor()), Ok(()));
        assert_eq!(p.matches(&admin, &redactor()), Err(NotMatched::Group));
        s.users = Some(users(&[], &["system:serviceaccount:kube-system:*"], &[]));
        let mut sa = admin.clone();
        sa.user.username = "system:serviceaccount:kube-system:replicaset-controller".into();
        assert_eq!(compile(&s).matches(&sa, &redactor()), Err(NotMatched::User));
        assert_eq!(compile(&s).matches(&admin, &redactor()), Ok(()));
    }

    fn with_conditions(exprs: &[&str]) -> TrackingPolicySpec {
        let mut s = everything();
        s.conditions = exprs
            .iter()
            .enumerate()
            .map(|(i, e)| MatchCondition {
                name: format!("c{i}"),
                expression: e.to_string(),
            })
            .collect();
        s
    }

    #[test]
    fn cel_conditions() {
        let alice = testdata::request("create-configmap-alice");
        let mut sa = alice.clone();
        sa.user.username = "system:serviceaccount:demo:bot".into();
        let p = compile(&with_conditions(&[
            "!request.userInfo.username.startsWith('system:')",
        ]));
        assert_eq!(p.matches(&alice, &redactor()), Ok(()));
        assert_eq!(
            p.matches(&sa, &redactor()),
            Err(NotMatched::Condition { name: "c0".into() })
        );

        let p = compile(&with_conditions(&[
            "'dev' in request.userInfo.groups",
            "request.operation == 'CREATE' && request.namespace == 'demo'",
            "object.data.owner == 'alice' && oldObject == null",
            "request.kind.kind == 'ConfigMap' && request.resource.resource == 'configmaps' && request.subResource == ''",
            "request.userInfo.groups.all(g, g != 'system:masters')",
            "request.userInfo.groups.exists(x, x.lowerAscii() == 'dev')",
        ]));
        assert_eq!(p.matches(&alice, &redactor()), Ok(()));

        let scale = testdata::request("update-deployment-scale");
        let p = compile(&with_conditions(&[
            "object.spec.replicas > oldObject.spec.replicas",
        ]));
        assert_eq!(p.matches(&scale, &redactor()), Ok(()));
        let p = compile(&with_conditions(&[
            "object.spec.replicas > 2 && request.subResource == 'scale'",
        ]));
        assert_eq!(p.matches(&scale, &redactor()), Ok(()));
    }

    #[test]
    fn cel_runtime_errors_are_reported_not_matched() {
        let alice = testdata::request("create-configmap-alice");
        let p = compile(&with_conditions(&["object.spec.replicas > 1"]));
        let e = p.matches(&alice, &redactor()).unwrap_err();
        assert_eq!(e.metric_label(), "condition_error");
        let p = compile(&with_conditions(&["request.name"]));
        assert_eq!(
            p.matches(&alice, &redactor()),
            Err(NotMatched::ConditionError {
                name: "c0".into(),
                kind: ConditionErrorKind::NotBool
            })
        );
        // cel-rust reads a field of null as null: false rather than an error, but never a match.
        let p = compile(&with_conditions(&["oldObject.metadata.name == 'x'"]));
        assert!(p.matches(&alice, &redactor()).is_err());
        for (expr, kind) in [
            ("1 / 0 == 1", ConditionErrorKind::DivisionByZero),
            ("9223372036854775807 + 1 == 0", ConditionErrorKind::Overflow),
            ("object.data.nope == 'x'", ConditionErrorKind::NoSuchKey),
            (
                "object.data.owner + 1 == 2",
                ConditionErrorKind::TypeMismatch,
            ),
            ("[1][5] == 1", ConditionErrorKind::OutOfBounds),
            ("int('x') == 1", ConditionErrorKind::Function),
        ] {
            let p = compile(&with_conditions(&[expr]));
            assert_eq!(
                p.matches(&alice, &redactor()),
                Err(NotMatched::ConditionError {
                    name: "c0".into(),
                    kind
                }),
                "{expr}"
            );
        }
    }

    /// The Secret of a real review, with `stringData` and a last-applied annotation added as a
    /// hostile client may send them (the apiserver folds `stringData` into `data` first).
    fn hostile_secret() -> Request {
        let mut req = testdata::request("update-secret");
        for obj in [req.object.as_mut(), req.old_object.as_mut()] {
            let obj = obj.unwrap();
            obj["stringData"] = serde_json::json!({"password": "s3cr3t"});
            obj["metadata"]["annotations"] = serde_json::json!({
                crate::pipeline::noise::LAST_APPLIED:
                    r#"{"apiVersion":"v1","kind":"Secret","stringData":{"password":"s3cr3t"}}"#
            });
        }
        req
    }

    /// Neither the plain nor the base64 form of the fixtures' Secret value appears in `text`.
    fn assert_no_secret(text: &str) {
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(!text.contains("czNjcjN0"), "{text}");
    }

    #[test]
    fn conditions_failing_on_a_secret_say_nothing_of_its_values() {
        let req = hostile_secret();
        assert!(
            req.object
                .as_ref()
                .unwrap()
                .to_string()
                .contains("czNjcjN0")
        );
        for (expr, kind) in [
            (
                "object.data.password + 1 == 2",
                Some(ConditionErrorKind::TypeMismatch),
            ),
            (
                "object.stringData[object.stringData.password]",
                Some(ConditionErrorKind::NoSuchKey),
            ),
            ("int(object.data)", Some(ConditionErrorKind::Function)),
            (
                "oldObject.stringData.password + 1 == 2",
                Some(ConditionErrorKind::TypeMismatch),
            ),
            // The annotation is gone (and with it the map): some error, whichever cel-rust picks.
            (
                "int(object.metadata.annotations['kubectl.kubernetes.io/last-applied-configuration']) == 1",
                None,
            ),
        ] {
            let p = compile(&with_conditions(&[expr]));
            let err = p.matches(&req, &redactor()).unwrap_err();
            match (&err, kind) {
                (NotMatched::ConditionError { name, kind: got }, want) => {
                    assert_eq!(name, "c0");
                    if let Some(want) = want {
                        assert_eq!(*got, want, "{expr}");
                    }
                }
                (other, _) => panic!("{expr}: {other:?}"),
            }
            assert_no_secret(&format!("{err:?} {err}"));
        }
    }

    #[test]
    fn conditions_see_a_secret_as_the_store_keeps_it() {
        let req = hostile_secret();
        let r = redactor();
        let stored = r.redacted(req.object.as_ref().unwrap(), &req.kind);
        let hash = stored["data"]["password"].as_str().unwrap();
        let p = compile(&with_conditions(&[
            &format!("object.data.password == '{hash}'"),
            "object.stringData.password == object.data.password",
            "oldObject.data.password == object.data.password",
            "!has(object.metadata.annotations)",
            "object.metadata.name == 'db-pass'",
        ]));
        assert_eq!(p.matches(&req, &r), Ok(()));
        for guess in [
            "object.data.password == 'czNjcjN0'",
            "object.stringData.password == 's3cr3t'",
            "oldObject.data.password == 'czNjcjN0'",
        ] {
            let p = compile(&with_conditions(&[guess]));
            assert_eq!(
                p.matches(&req, &r),
                Err(NotMatched::Condition { name: "c0".into() }),
                "{guess}"
            );
        }
        // Other kinds are seen as they are.
        let cm = testdata::request("create-configmap-alice");
        let p = compile(&with_conditions(&["object.data.owner == 'alice'"]));
        assert_eq!(p.matches(&cm, &r), Ok(()));
    }

    #[test]
    fn broken_cel_is_a_policy_error() {
        for bad in [
            "request.userInfo.username.startsWith(",
            "!!!",
            "request..x",
            "'unterminated",
            "a ? b",
            "))))",
            "\u{0}",
            &"(".repeat(5000),
            &format!("{}1{}", "[".repeat(300), "]".repeat(300)),
            &format!("{}1{}", "(".repeat(2000), ")".repeat(2000)),
            &format!("1{} == 2", "+1".repeat(1000)),
            &format!("{}true", "true ? true : ".repeat(300)),
            &format!("request{}", ".a".repeat(1000)),
            "",
        ] {
            let msg = policy_error(&with_conditions(&[bad]));
            assert!(msg.starts_with("condition c0"), "{msg}");
        }
        let msg = policy_error(&with_conditions(&["requst.userInfo.username == 'x'"]));
        assert!(msg.contains("unknown variable \"requst\""), "{msg}");
        // A macro variable is not free outside its macro.
        let msg = policy_error(&with_conditions(&[
            "request.userInfo.groups.all(g, g != '') && g == ''",
        ]));
        assert!(msg.contains("unknown variable \"g\""), "{msg}");
        // Logical chains are balanced by the parser: accepted, and evaluated without trouble.
        let p = compile(&with_conditions(&[&format!(
            "true{}",
            " && true".repeat(1000)
        )]));
        assert_eq!(
            p.matches(&testdata::request("create-configmap"), &redactor()),
            Ok(())
        );
        // Parentheses alone do not nest the tree: accepted.
        let p = compile(&with_conditions(&[&format!(
            "{}true{}",
            "(".repeat(60),
            ")".repeat(60)
        )]));
        assert_eq!(
            p.matches(&testdata::request("create-configmap"), &redactor()),
            Ok(())
        );
    }

    #[test]
    fn bad_globs_and_fields_name_the_field() {
        let mut s = everything();
        s.namespaces = Some(NamespaceFilter {
            include: vec![],
            exclude: vec!["ok".into(), "[unclosed".into()],
            selector: None,
        });
        let m = policy_error(&s);
        assert!(
            m.starts_with("namespaces.exclude[1]: bad glob \"[unclosed\""),
            "{m}"
        );

        let mut s = everything();
        s.users = Some(UserFilter {
            exclude_groups: vec!["{a".into()],
            ..Default::default()
        });
        assert!(policy_error(&s).starts_with("users.excludeGroups[0]"));

        let mut s = everything();
        s.ignore_fields = vec!["/ok".into(), "spec/replicas".into()];
        assert!(policy_error(&s).starts_with("ignoreFields[1]"));

        let mut s = everything();
        s.retention.max_age = "30 days".into();
        assert!(policy_error(&s).starts_with("retention.maxAge"));
        s.retention.max_age = "0".into();
        assert!(policy_error(&s).starts_with("retention.maxAge"));

        let s = spec(vec![rule(&["apps"], &["deployments/"])]);
        assert!(policy_error(&s).starts_with("resources[0].resources"));
        assert!(policy_error(&spec(vec![])).starts_with("resources"));
    }

    #[test]
    fn retention_and_digests() {
        let mut s = everything();
        s.retention.max_age = "1h30m".into();
        s.retention.max_events_per_object = 7;
        s.notify = vec![
            crate::crd::NotifySink {
                name: "slack".into(),
                digest: Some("60s".into()),
                ..Default::default()
            },
            crate::crd::NotifySink {
                name: "mail".into(),
                ..Default::default()
            },
        ];
        let p = compile(&s);
        assert_eq!(p.retention().max_age, SignedDuration::from_mins(90));
        assert_eq!(p.retention().max_events_per_object, 7);
        assert_eq!(p.digest("slack"), Some(SignedDuration::from_secs(60)));
        assert_eq!(p.digest("mail"), None);
        assert_eq!(p.name(), "p");
        assert!(!p.track_status());
        s.notify[0].digest = Some("soon".into());
        assert!(policy_error(&s).starts_with("notify[slack].digest"));
        assert_eq!(compile(&everything()).retention(), RetentionRule::default());
    }

    #[test]
    fn go_durations() {
        let ok = |s: &str, d: SignedDuration| assert_eq!(parse_duration(s), Ok(d), "{s}");
        ok("720h", SignedDuration::from_hours(720));
        ok("90m", SignedDuration::from_mins(90));
        ok("1h30m", SignedDuration::from_mins(90));
        ok("1.5h", SignedDuration::from_mins(90));
        ok("300ms", SignedDuration::from_millis(300));
        ok("10us", SignedDuration::from_micros(10));
        ok("10µs", SignedDuration::from_micros(10));
        ok("7ns", SignedDuration::from_nanos(7));
        ok("-2s", SignedDuration::from_secs(-2));
        ok("0", SignedDuration::ZERO);
        ok("0s", SignedDuration::ZERO);
        ok(".5s", SignedDuration::from_millis(500));
        ok("1h0m0.25s", SignedDuration::new(3600, 250_000_000));
        for bad in [
            "",
            "h",
            "1",
            "1d",
            "-",
            "1h 30m",
            "99999999999999999999h",
            "1..5s",
            ".",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn huge_durations_are_errors_not_panics() {
        for huge in [
            "9999999999999999d",
            "9999999999999999h",
            "2562047788015216h",
            "9223372036854775808s",
            "-9999999999999999999999999999ns",
            "2562047788015215h2562047788015215h",
            "1.999999999999999999999999999999h",
        ] {
            let _ = parse_duration(huge);
        }
        assert!(parse_duration("9999999999999999h").is_err());
        // The longest Go-style duration jiff holds still parses.
        assert_eq!(
            parse_duration("9223372036854775807s"),
            Ok(SignedDuration::from_secs(i64::MAX))
        );
        let mut s = everything();
        s.retention.max_age = "9999999999999999d".into();
        assert!(policy_error(&s).starts_with("retention.maxAge"));
        s.retention.max_age = "9999999999999999h".into();
        assert!(
            policy_error(&s).contains("too long"),
            "{}",
            policy_error(&s)
        );
    }

    proptest::proptest! {
        /// Arbitrary text, and numbers of every size with every unit, parse or are refused.
        #[test]
        fn parse_duration_never_panics(
            s in proptest::prop_oneof![
                proptest::prelude::any::<String>(),
                "[-+]?[0-9]{0,40}(\\.[0-9]{0,40})?(d|h|m|s|ms|us|ns|µs)?([0-9]{1,25}(h|m|s))*",
            ]
        ) {
            if let Ok(d) = parse_duration(&s) {
                // Whatever parses is usable in checked time arithmetic.
                let _ = jiff::Timestamp::now().checked_sub(d);
            }
        }
    }
}
