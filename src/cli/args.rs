//! Command-line arguments of `kubectl blame`, and splitting `TYPE[/NAME] [NAME]` the way kubectl
//! does.

use super::output::Format;
use std::path::PathBuf;

/// `kubectl blame`: who changed what in the cluster, from histor's records.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "kubectl-blame",
    bin_name = "kubectl blame",
    version,
    about = "Who changed what, when, and exactly how: Kubernetes object history recorded by histor",
    after_help = "Examples:\n  \
        kubectl blame                                   # recent changes in the current namespace\n  \
        kubectl blame -A --since 1h                     # everything changed in the last hour\n  \
        kubectl blame deploy/api -n prod                # the history of one Deployment\n  \
        kubectl blame deploy api -n prod -o blame       # its YAML, each line with who last changed it\n  \
        kubectl blame deploy api -n prod -o diff        # what each change did\n  \
        kubectl blame deploy api -n prod --at 2h        # the object as it was two hours ago\n  \
        kubectl blame deploy api -o diff --since 1d --until 2h   # the net change in between\n  \
        kubectl blame cm --user alice --operation DELETE\n  \
        kubectl blame -A --state notApplied             # changes the apiserver did not commit\n  \
        kubectl blame usage --deprecated                # who still calls deprecated APIs (from audit events)\n  \
        kubectl blame usage --user alice --since 7d -o html > usage.html\n  \
        kubectl blame --server https://localhost:8443 --token-file token --certificate-authority ca.crt"
)]
pub struct BlameArgs {
    /// Resource type (`deploy`, `deployments.apps`, a CRD kind…), optionally `TYPE/NAME`; or
    /// `usage`, for the API usage counted from the cluster's audit events (a resource type
    /// named `usage` is reached by its full name, `usage.GROUP`).
    #[arg(value_name = "TYPE[/NAME]")]
    pub target: Option<String>,
    /// Object name, when not given as TYPE/NAME.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Changes in all namespaces, and to cluster-scoped objects.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Only changes since this time: RFC 3339 or a duration ago (`30m`, `1h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only changes before this time: RFC 3339 or a duration ago. With TYPE NAME, `-o diff`
    /// and `--since`: the net change between the two times.
    #[arg(long)]
    pub until: Option<String>,
    /// With TYPE NAME: the object as it was at this time (RFC 3339 or a duration ago), as
    /// `-o yaml` (the default) or `-o json`, rebuilt from the recorded changes.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Only changes by this user (with `usage`: calls made as, or impersonated by, this user).
    #[arg(long)]
    pub user: Option<String>,
    /// With `usage`: only calls to APIs the apiserver marked deprecated, soonest removal first.
    #[arg(long)]
    pub deprecated: bool,
    /// Only this operation: CREATE, UPDATE, DELETE.
    #[arg(long, value_parser = ["CREATE", "UPDATE", "DELETE", "CONNECT", "create", "update", "delete", "connect"])]
    pub operation: Option<String>,
    /// Only changes in this state: received, confirmed, notApplied, observed, unconfirmed.
    #[arg(long, value_name = "STATE")]
    pub state: Option<crate::pipeline::ChangeState>,
    /// Most changes to show (blame always reads the whole history).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    /// Path to the kubeconfig file.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// User to impersonate, as kubectl's `--as` (the history shown is what that user may read).
    #[arg(long = "as", value_name = "USER")]
    pub impersonate: Option<String>,
    /// Group to impersonate, as kubectl's `--as-group` (repeatable).
    #[arg(long = "as-group", value_name = "GROUP", requires = "impersonate")]
    pub impersonate_groups: Vec<String>,
    /// Talk to a standalone `histor serve` at this URL instead of going through the apiserver.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token for --server.
    #[arg(
        long,
        requires = "server",
        conflicts_with = "token_file",
        env = "HISTOR_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// File holding the bearer token for --server.
    #[arg(long, requires = "server")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate that signed the --server certificate.
    #[arg(long, requires = "server")]
    pub certificate_authority: Option<PathBuf>,
}

/// TYPE and NAME from the positional arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetArg {
    /// The resource type as typed.
    pub kind: String,
    /// The object name, if any.
    pub name: Option<String>,
}

impl BlameArgs {
    /// True for `kubectl blame usage`.
    pub fn is_usage(&self) -> bool {
        self.target.as_deref() == Some("usage")
    }

    /// `deploy/nginx`, `deploy nginx` or `deploy`; an error for `deploy/a b` and `a/`.
    pub fn target(&self) -> Result<Option<TargetArg>, String> {
        let Some(target) = &self.target else {
            return Ok(None);
        };
        let (kind, slash_name) = match target.split_once('/') {
            Some((k, n)) => (k, Some(n)),
            None => (target.as_str(), None),
        };
        if kind.is_empty() || slash_name.is_some_and(str::is_empty) {
            return Err(format!(
                "invalid resource \"{target}\": expected TYPE or TYPE/NAME"
            ));
        }
        let name = match (slash_name, &self.name) {
            (Some(_), Some(extra)) => {
                return Err(format!(
                    "there is already a name in \"{target}\": drop \"{extra}\" or write TYPE NAME"
                ));
            }
            (Some(n), None) => Some(n.to_owned()),
            (None, n) => n.clone(),
        };
        Ok(Some(TargetArg {
            kind: kind.to_owned(),
            name,
        }))
    }
}
