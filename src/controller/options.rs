//! Command-line options of `histor operator`. The binary (`src/cmd/`) flattens [`OperatorOptions`]
//! into its subcommand and turns it into [`Settings`] with [`OperatorOptions::settings`].

use super::webhook::WebhookClient;
use super::{CertMode, Error, Result, Settings};
use std::path::PathBuf;
use std::time::Duration;

/// Where the serving certificate comes from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CertModeArg {
    /// histor makes and rotates its own CA and serving certificate.
    #[default]
    SelfManaged,
    /// cert-manager issues the certificate and injects the CA.
    CertManager,
}

/// Options of the operator.
#[derive(clap::Args, Clone, Debug)]
pub struct OperatorOptions {
    /// Namespace the operator runs in (its Secret, Lease and cluster-scoped ChangeRecords).
    #[arg(long, env = "POD_NAMESPACE", default_value = "histor-system")]
    pub namespace: String,

    /// Service account the operator runs as; its own requests are never tracked.
    #[arg(long, default_value = "histor")]
    pub service_account: String,

    /// Service in front of the webhook, as NAMESPACE/NAME (in-cluster mode).
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "webhook_url")]
    pub webhook_service: Option<String>,

    /// Port of the webhook Service.
    #[arg(long, default_value_t = 443)]
    pub webhook_port: u16,

    /// Base URL of the webhook, as https://HOST:PORT (for an operator outside the cluster).
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,

    /// Where the serving certificate comes from.
    #[arg(long, value_enum, default_value_t = CertModeArg::SelfManaged)]
    pub cert_mode: CertModeArg,

    /// Directory holding tls.crt and tls.key: written by histor (self-managed) or mounted from
    /// cert-manager's Secret. Default: `tls` under the data directory, so that two operators on
    /// one host never serve each other's certificates.
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,

    /// cert-manager Certificate whose CA is injected, as NAMESPACE/NAME (cert-manager mode).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub cert_manager_certificate: Option<String>,

    /// Least seconds between two writes of one ChangeRecord.
    #[arg(long, default_value_t = 5)]
    pub record_interval_secs: u64,

    /// Elect a leader among replicas; without it every replica reconciles.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "histor-leader")]
    pub lease_name: String,

    /// Reconcile only the TrackingPolicies whose labels match this selector (`team=payments`,
    /// `histor.dev/instance in (a,b)`), so that several histor installations can share a
    /// cluster, each with its own policies. Default: every policy.
    #[arg(long, value_name = "SELECTOR")]
    pub policy_selector: Option<String>,

    /// More names for the self-managed serving certificate (repeatable), such as the
    /// `NAME.NAMESPACE.svc` an aggregated APIService reaches an operator outside the cluster by.
    #[arg(long = "tls-san", value_name = "NAME")]
    pub tls_sans: Vec<String>,
}

fn split_ref(value: &str, flag: &str) -> Result<(String, String)> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(Error::Usage(format!(
            "{flag} wants NAMESPACE/NAME, got {value:?}"
        ))),
    }
}

impl OperatorOptions {
    /// Checks the options and turns them into settings; `data_dir` holds the certificate
    /// directory unless `--cert-dir` names another.
    pub fn settings(&self, data_dir: &std::path::Path) -> Result<Settings> {
        let webhook = match (&self.webhook_service, &self.webhook_url) {
            (Some(service), None) => {
                let (namespace, name) = split_ref(service, "--webhook-service")?;
                WebhookClient::Service {
                    namespace,
                    name,
                    port: i32::from(self.webhook_port),
                }
            }
            (None, Some(url)) => {
                let rest = url.strip_prefix("https://").ok_or_else(|| {
                    Error::Usage(format!(
                        "--webhook-url must start with https:// (the apiserver only calls webhooks over TLS), got {url:?}"
                    ))
                })?;
                if rest.is_empty() || rest.trim_end_matches('/').contains('/') {
                    return Err(Error::Usage(format!(
                        "--webhook-url is https://HOST:PORT without a path, got {url:?}"
                    )));
                }
                WebhookClient::Url(url.trim_end_matches('/').to_string())
            }
            (None, None) => WebhookClient::Service {
                namespace: self.namespace.clone(),
                name: "histor".into(),
                port: i32::from(self.webhook_port),
            },
            (Some(_), Some(_)) => {
                return Err(Error::Usage(
                    "--webhook-service and --webhook-url exclude each other".into(),
                ));
            }
        };
        let cert_mode = match self.cert_mode {
            CertModeArg::SelfManaged => CertMode::SelfManaged,
            CertModeArg::CertManager => {
                let certificate = self.cert_manager_certificate.clone().ok_or_else(|| {
                    Error::Usage(
                        "--cert-mode cert-manager needs --cert-manager-certificate NAMESPACE/NAME"
                            .into(),
                    )
                })?;
                split_ref(&certificate, "--cert-manager-certificate")?;
                CertMode::CertManager { certificate }
            }
        };
        if self.record_interval_secs == 0 {
            return Err(Error::Usage(
                "--record-interval-secs must be at least 1".into(),
            ));
        }
        let mut settings = Settings::new(self.namespace.clone(), webhook);
        settings.service_account = self.service_account.clone();
        settings.cert_mode = cert_mode;
        settings.cert_dir = self
            .cert_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("tls"));
        if let Some(selector) = &self.policy_selector {
            let selector = selector.trim();
            if selector.is_empty() {
                return Err(Error::Usage("--policy-selector is empty".into()));
            }
            settings.policy_selector = Some(selector.to_string());
        }
        settings.record_interval = Duration::from_secs(self.record_interval_secs);
        settings.leader_election = self.leader_election;
        settings.lease_name = self.lease_name.clone();
        settings.extra_sans = self.tls_sans.clone();
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: OperatorOptions,
    }

    fn parse(args: &[&str]) -> OperatorOptions {
        Cli::try_parse_from(std::iter::once("histor").chain(args.iter().copied()))
            .expect("parses")
            .options
    }

    #[test]
    fn defaults() {
        let o = parse(&[]);
        assert_eq!(o.service_account, "histor");
        assert_eq!(o.webhook_port, 443);
        assert!(o.leader_election);
        assert_eq!(o.lease_name, "histor-leader");
        let s = o.settings(std::path::Path::new("/data")).expect("settings");
        assert_eq!(s.cert_mode, CertMode::SelfManaged);
        assert_eq!(s.record_interval, Duration::from_secs(5));
        // Certificates live under the data directory, not in a path every operator shares.
        assert_eq!(s.cert_dir, PathBuf::from("/data/tls"));
        assert_eq!(s.policy_selector, None);
        let s = parse(&["--cert-dir", "/mounted", "--policy-selector", "team=a"])
            .settings(std::path::Path::new("/data"))
            .expect("settings");
        assert_eq!(s.cert_dir, PathBuf::from("/mounted"));
        assert_eq!(s.policy_selector.as_deref(), Some("team=a"));
        assert!(
            parse(&["--policy-selector", " "])
                .settings(std::path::Path::new("/data"))
                .is_err()
        );
    }

    #[test]
    fn webhook_modes() {
        let s = parse(&[
            "--namespace",
            "ops",
            "--webhook-service",
            "ops/histor-wh",
            "--webhook-port",
            "8443",
        ])
        .settings(std::path::Path::new("/data"))
        .expect("settings");
        assert_eq!(
            s.webhook,
            WebhookClient::Service {
                namespace: "ops".into(),
                name: "histor-wh".into(),
                port: 8443
            }
        );
        let s = parse(&[
            "--webhook-url",
            "https://127.0.0.1:9443",
            "--leader-election",
            "false",
        ])
        .settings(std::path::Path::new("/data"))
        .expect("settings");
        assert_eq!(
            s.webhook,
            WebhookClient::Url("https://127.0.0.1:9443".into())
        );
        assert!(!s.leader_election);
        assert!(
            parse(&["--webhook-url", "http://x:1"])
                .settings(std::path::Path::new("/data"))
                .is_err()
        );
        assert!(
            parse(&["--webhook-service", "nope"])
                .settings(std::path::Path::new("/data"))
                .is_err()
        );
    }

    #[test]
    fn cert_manager_needs_a_certificate() {
        assert!(
            parse(&["--cert-mode", "cert-manager"])
                .settings(std::path::Path::new("/data"))
                .is_err()
        );
        let s = parse(&[
            "--cert-mode",
            "cert-manager",
            "--cert-manager-certificate",
            "histor-system/histor",
        ])
        .settings(std::path::Path::new("/data"))
        .expect("settings");
        assert_eq!(
            s.cert_mode,
            CertMode::CertManager {
                certificate: "histor-system/histor".into()
            }
        );
    }
}
