//! `histor history`: read recorded changes straight from a store directory.

use crate::crd::Operation;
use crate::pipeline::ChangeState;
use crate::render;
use crate::store::{EventStore, Query, StoredEvent};
use crate::{Error, Result};
use std::path::PathBuf;

/// Options of `histor history`.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// Directory given to `histor serve --data-dir` (its store is DATA_DIR/store).
    #[arg(long, required_unless_present = "store")]
    pub data_dir: Option<PathBuf>,
    /// Or the store itself: `sled:DIR`, or a `postgres://` URL as `histor serve --store` takes.
    #[command(flatten)]
    pub store: super::server::StoreArgs,
    /// Only this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only this kind or resource (`Deployment`, `deployments`, `deployments.apps`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only objects with this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only changes by this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only this operation.
    #[arg(long)]
    pub operation: Option<Operation>,
    /// Only changes in this state: received, confirmed, notApplied, observed, unconfirmed.
    #[arg(long, value_name = "STATE")]
    pub state: Option<ChangeState>,
    /// Only changes received at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<jiff::Timestamp>,
    /// Only changes received before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<jiff::Timestamp>,
    /// Most changes to show.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The events as a JSON array.
    Json,
    /// The events as a YAML list.
    Yaml,
}

/// Up to `limit` matching events, newest first, across as many store pages as that takes.
fn collect(store: &dyn EventStore, mut query: Query, limit: usize) -> Result<Vec<StoredEvent>> {
    let mut events = Vec::new();
    while events.len() < limit {
        query.limit = limit - events.len();
        let page = store.query(&query)?;
        events.extend(page.events);
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    Ok(events)
}

/// Prints the matching changes, newest first.
pub fn run(args: HistoryArgs) -> Result<()> {
    let location = crate::store::Location::parse(
        args.store.store.as_deref(),
        &args.data_dir.clone().unwrap_or_default(),
        args.store.store_password_file.as_deref(),
    )?;
    let store = location.open()?.events;
    let query = Query {
        namespace: args.namespace,
        kind: args.kind,
        name: args.name,
        user: args.user,
        operation: args.operation,
        state: args.state,
        since: args.since,
        until: args.until,
        limit: args.limit,
        ..Query::default()
    };
    let events = collect(&*store, query, args.limit)?;
    print!("{}", render_events(&events, args.output)?);
    Ok(())
}

/// What `histor history -o FORMAT` prints for `events`: the table `kubectl blame` cells come
/// from (with the STATE column), or the events as JSON or YAML (`state` always in them).
pub fn render_events(events: &[StoredEvent], output: Output) -> Result<String> {
    let plain: Vec<_> = events.iter().map(|e| &e.event).collect();
    Ok(match output {
        Output::Table if events.is_empty() => "No changes recorded that match.\n".to_string(),
        Output::Table => render::events_table(events),
        Output::Json => serde_json::to_string_pretty(&plain).map_err(Error::Json)? + "\n",
        Output::Yaml => {
            crate::cli::yaml::to_string(&serde_json::to_value(&plain).map_err(Error::Json)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::testsupport::{fixture_requests, store_with};
    use crate::pipeline::{ChangeState, InferredActor};

    /// The recorded ConfigMap changes with states set as the witnesses would: the table has the
    /// CLI's STATE column, inferred actor and refused wording; JSON and YAML say `state`.
    #[test]
    fn history_says_the_state() {
        let (_dir, store) = store_with(&fixture_requests());
        let mut events = store
            .query(&Query {
                kind: Some("configmaps".into()),
                limit: 100,
                ..Query::default()
            })
            .unwrap()
            .events;
        for e in &mut events {
            let e = &mut e.event;
            match (e.name.as_str(), e.operation) {
                ("denied-cm", _) => e.state = ChangeState::NotApplied,
                ("app-config", Operation::Create) => e.state = ChangeState::Confirmed,
                ("app-config", Operation::Update) => {
                    e.state = ChangeState::Observed;
                    e.user = Default::default();
                    e.inferred = Some(InferredActor {
                        manager: "kubectl-edit".into(),
                        ..Default::default()
                    });
                }
                ("app-config", Operation::Delete) => e.state = ChangeState::Received,
                _ => {}
            }
        }
        assert_eq!(
            render_events(&events, Output::Table).unwrap(),
            "\
TIME                  NAMESPACE   USER                      OP       STATE         TARGET                  CHANGES
2026-11-22 02:10:02   demo        alice                     DELETE   unconfirmed   configmaps/alice-cm     deleted
2026-11-22 02:09:55   demo        alice                     CREATE   unconfirmed   configmaps/alice-cm     created
2026-11-22 02:08:52   demo        admin                     CREATE   notApplied    configmaps/denied-cm    create not applied
2026-11-22 02:08:45   demo        admin                     DELETE   received      configmaps/app-config   deleted
2026-11-22 02:08:31   demo        kubectl-edit (inferred)   UPDATE   observed      configmaps/app-config   data.greeting: hello → bonjour
2026-11-22 02:08:24   demo        admin                     CREATE   confirmed     configmaps/app-config   created
"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_events(&events, Output::Json).unwrap()).unwrap();
        let states: Vec<&str> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            [
                "unconfirmed",
                "unconfirmed",
                "notApplied",
                "received",
                "observed",
                "confirmed"
            ]
        );
        let yaml = render_events(&events, Output::Yaml).unwrap();
        let back: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, json);
        assert!(yaml.contains("  state: notApplied\n"), "{yaml}");
    }
}
