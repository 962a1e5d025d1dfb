//! Self-managed webhook certificates: a CA and a serving certificate kept in a Secret in the
//! operator's namespace, renewed and rotated without the apiserver ever seeing a certificate it does
//! not trust.
//!
//! The decision of what to do ([`decide`]) is a pure function of the Secret's contents and the
//! time, so renewal and rotation are tested by time travel; [`issue`] carries a decision out
//! (key generation, no I/O); the operator's `CertManager` keeps the result in a Secret, and
//! [`write_serving_files`] puts the serving pair where the capture server reloads it from.
//!
//! CA rotation happens in three steps, each one decision apart, so trust always runs ahead of use:
//! 1. a new CA is made; the old one moves to `ca-previous.crt` and both go into every caBundle,
//!    while the old serving certificate (signed by the old CA) keeps being served;
//! 2. once the new bundle had time to reach the apiserver, the serving certificate is re-issued by
//!    the new CA;
//! 3. after a grace period (or when the old CA expires) the old CA leaves the bundle.

use crate::{Error, Result};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::collections::BTreeMap;
use std::path::Path;

/// Name of the Secret holding the CA and the serving certificate.
pub const SECRET_NAME: &str = "histor-webhook-tls";
/// Secret key of the current CA certificate (PEM).
pub const CA_CRT: &str = "ca.crt";
/// Secret key of the current CA's private key (PEM). Needed to renew the serving certificate.
pub const CA_KEY: &str = "ca.key";
/// Secret key of the serving certificate (PEM).
pub const TLS_CRT: &str = "tls.crt";
/// Secret key of the serving certificate's private key (PEM).
pub const TLS_KEY: &str = "tls.key";
/// Secret key of the previous CA certificate, present only during a CA rotation.
pub const CA_PREVIOUS: &str = "ca-previous.crt";
/// Annotation recording when the current CA replaced the previous one (RFC 3339).
pub const ROTATED_AT_ANNOTATION: &str = "histor.dev/ca-rotated-at";

/// How long certificates live and how rotation is paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CertTimings {
    /// Lifetime of a new CA.
    pub ca_validity: SignedDuration,
    /// Lifetime of a new serving certificate (capped at the CA's expiry).
    pub leaf_validity: SignedDuration,
    /// Time allowed for a new caBundle to reach the apiserver before a certificate signed by the
    /// new CA is served.
    pub propagation: SignedDuration,
    /// How long the previous CA stays in the bundle after a rotation (unless it expires first).
    pub overlap: SignedDuration,
}

impl Default for CertTimings {
    fn default() -> Self {
        CertTimings {
            ca_validity: SignedDuration::from_hours(5 * 365 * 24),
            leaf_validity: SignedDuration::from_hours(90 * 24),
            propagation: SignedDuration::from_mins(2),
            overlap: SignedDuration::from_hours(7 * 24),
        }
    }
}

/// The contents of the TLS Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsMaterial {
    /// Current CA certificate (PEM).
    pub ca_crt: String,
    /// Current CA key (PEM).
    pub ca_key: String,
    /// Serving certificate (PEM).
    pub tls_crt: String,
    /// Serving key (PEM).
    pub tls_key: String,
    /// Previous CA certificate during a rotation.
    pub ca_previous: Option<String>,
    /// When the current CA replaced the previous one.
    pub ca_rotated_at: Option<Timestamp>,
}

impl TlsMaterial {
    /// Reads the material out of a Secret; `None` when a required key is missing.
    pub fn from_secret(secret: &Secret) -> Option<TlsMaterial> {
        let data = secret.data.as_ref()?;
        let get = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .filter(|s| !s.trim().is_empty())
        };
        Some(TlsMaterial {
            ca_crt: get(CA_CRT)?,
            ca_key: get(CA_KEY)?,
            tls_crt: get(TLS_CRT)?,
            tls_key: get(TLS_KEY)?,
            ca_previous: get(CA_PREVIOUS),
            ca_rotated_at: secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ROTATED_AT_ANNOTATION))
                .and_then(|t| t.parse().ok()),
        })
    }

    /// The Secret to apply, in `namespace`.
    pub fn to_secret(&self, namespace: &str) -> Secret {
        let mut data = BTreeMap::new();
        for (k, v) in [
            (CA_CRT, &self.ca_crt),
            (CA_KEY, &self.ca_key),
            (TLS_CRT, &self.tls_crt),
            (TLS_KEY, &self.tls_key),
        ] {
            data.insert(k.to_string(), ByteString(v.clone().into_bytes()));
        }
        if let Some(prev) = &self.ca_previous {
            data.insert(CA_PREVIOUS.into(), ByteString(prev.clone().into_bytes()));
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(SECRET_NAME.into()),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([(
                    crate::controller::webhook::MANAGED_BY_LABEL.to_string(),
                    crate::controller::webhook::MANAGED_BY.to_string(),
                )])),
                annotations: self
                    .ca_rotated_at
                    .map(|t| BTreeMap::from([(ROTATED_AT_ANNOTATION.to_string(), t.to_string())])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// The caBundle every webhook configuration carries: the current CA, plus the previous one
    /// while a rotation is under way.
    pub fn ca_bundle(&self) -> Vec<u8> {
        let mut bundle = self.ca_crt.trim_end().to_string();
        bundle.push('\n');
        if let Some(prev) = &self.ca_previous {
            bundle.push_str(prev.trim_end());
            bundle.push('\n');
        }
        bundle.into_bytes()
    }
}

/// What the certificate manager should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertAction {
    /// Nothing usable exists: make a CA and a serving certificate.
    Create,
    /// Issue a new serving certificate from the current CA.
    RenewLeaf(&'static str),
    /// Make a new CA; keep the old one in the bundle and keep serving the old certificate for now.
    RotateCa,
    /// The rotation is over: drop the previous CA from the bundle.
    DropPreviousCa,
    /// All is well.
    Nothing,
}

/// What a certificate says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
    /// DNS names and IP addresses it is valid for, sorted.
    pub sans: Vec<String>,
}

impl CertInfo {
    /// True when less than a third of the certificate's life is left at `now`.
    fn in_last_third(&self, now: Timestamp) -> bool {
        let life = self.not_after.duration_since(self.not_before);
        let left = self.not_after.duration_since(now);
        left * 3 < life
    }
}

/// Parses the first certificate of a PEM string.
pub fn cert_info(pem: &str) -> Option<CertInfo> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let validity = cert.validity();
    let mut sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => ip_string(ip),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    sans.sort();
    Some(CertInfo {
        not_before: Timestamp::from_second(validity.not_before.timestamp()).ok()?,
        not_after: Timestamp::from_second(validity.not_after.timestamp()).ok()?,
        sans,
    })
}

fn ip_string(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

/// Whether `leaf_pem` carries a valid signature by the key of `ca_pem`.
pub fn signed_by(leaf_pem: &str, ca_pem: &str) -> bool {
    let Ok((_, leaf)) = x509_parser::pem::parse_x509_pem(leaf_pem.as_bytes()) else {
        return false;
    };
    let Ok((_, ca)) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()) else {
        return false;
    };
    match (leaf.parse_x509(), ca.parse_x509()) {
        (Ok(leaf), Ok(ca)) => leaf.verify_signature(Some(ca.public_key())).is_ok(),
        _ => false,
    }
}

/// Decides what to do with the current Secret contents at `now`. `sans` are the names the serving
/// certificate must hold.
pub fn decide(
    current: Option<&TlsMaterial>,
    sans: &[String],
    now: Timestamp,
    timings: &CertTimings,
) -> CertAction {
    let Some(m) = current else {
        return CertAction::Create;
    };
    let (Some(ca), Some(leaf)) = (cert_info(&m.ca_crt), cert_info(&m.tls_crt)) else {
        return CertAction::Create;
    };
    if KeyPair::from_pem(&m.ca_key).is_err() || KeyPair::from_pem(&m.tls_key).is_err() {
        return CertAction::Create;
    }
    if now >= ca.not_after {
        // An expired CA cannot be rotated with overlap; nothing it signed is trusted any more.
        return CertAction::Create;
    }
    let leaf_from_current_ca = signed_by(&m.tls_crt, &m.ca_crt);

    if let Some(previous) = &m.ca_previous {
        let rotated_at = m.ca_rotated_at.unwrap_or(Timestamp::UNIX_EPOCH);
        if !leaf_from_current_ca {
            if now >= rotated_at + timings.propagation {
                return CertAction::RenewLeaf("serving certificate is signed by the previous CA");
            }
            // Step 2 must wait until the apiserver trusts the new CA.
            return CertAction::Nothing;
        }
        let previous_expired = cert_info(previous).is_none_or(|p| now >= p.not_after);
        if previous_expired || now >= rotated_at + timings.overlap {
            return CertAction::DropPreviousCa;
        }
    } else if ca.in_last_third(now) {
        return CertAction::RotateCa;
    }

    if !leaf_from_current_ca {
        return CertAction::RenewLeaf("serving certificate is not signed by the CA");
    }
    if now >= leaf.not_after || leaf.in_last_third(now) {
        return CertAction::RenewLeaf("serving certificate expires soon");
    }
    let mut wanted: Vec<String> = sans.to_vec();
    wanted.sort();
    wanted.dedup();
    if leaf.sans != wanted {
        return CertAction::RenewLeaf("serving certificate names changed");
    }
    CertAction::Nothing
}

/// Carries out `action`, returning the new Secret contents (`None` for [`CertAction::Nothing`]).
pub fn issue(
    action: &CertAction,
    current: Option<&TlsMaterial>,
    sans: &[String],
    now: Timestamp,
    timings: &CertTimings,
) -> Result<Option<TlsMaterial>> {
    match (action, current) {
        (CertAction::Nothing, _) => Ok(None),
        (CertAction::Create, _) | (_, None) => {
            let (ca_crt, ca_key) = new_ca(now, timings)?;
            let (tls_crt, tls_key) = new_leaf(&ca_crt, &ca_key, sans, now, timings)?;
            Ok(Some(TlsMaterial {
                ca_crt,
                ca_key,
                tls_crt,
                tls_key,
                ca_previous: None,
                ca_rotated_at: None,
            }))
        }
        (CertAction::RenewLeaf(_), Some(m)) => {
            let (tls_crt, tls_key) = new_leaf(&m.ca_crt, &m.ca_key, sans, now, timings)?;
            Ok(Some(TlsMaterial {
                tls_crt,
                tls_key,
                ..m.clone()
            }))
        }
        (CertAction::RotateCa, Some(m)) => {
            let (ca_crt, ca_key) = new_ca(now, timings)?;
            Ok(Some(TlsMaterial {
                ca_crt,
                ca_key,
                tls_crt: m.tls_crt.clone(),
                tls_key: m.tls_key.clone(),
                ca_previous: Some(m.ca_crt.clone()),
                ca_rotated_at: Some(now),
            }))
        }
        (CertAction::DropPreviousCa, Some(m)) => Ok(Some(TlsMaterial {
            ca_previous: None,
            ca_rotated_at: None,
            ..m.clone()
        })),
    }
}

/// Time since the epoch. rcgen speaks `time::OffsetDateTime`; adding this to
/// `rcgen::date_time_ymd(1970, 1, 1)` avoids a direct dependency on `time`.
fn since_epoch(t: Timestamp) -> std::time::Duration {
    std::time::Duration::from_secs(u64::try_from(t.as_second()).unwrap_or(0))
}

fn new_ca(now: Timestamp, timings: &CertTimings) -> Result<(String, String)> {
    let tls = |e: rcgen::Error| Error::Tls(e.to_string());
    let mut params = CertificateParams::default();
    // A distinct name per CA keeps chain building unambiguous while two CAs share the bundle.
    params.distinguished_name.push(
        DnType::CommonName,
        format!("histor webhook CA {}", now.as_second()),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Back-dated a little: clocks of the apiserver and the operator need not agree to the second.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch(now - SignedDuration::from_hours(1));
    params.not_after = epoch + since_epoch(now + timings.ca_validity);
    let key = KeyPair::generate().map_err(tls)?;
    let key_pem = key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(params, key).map_err(tls)?;
    Ok((ca.pem(), key_pem))
}

fn new_leaf(
    ca_crt: &str,
    ca_key: &str,
    sans: &[String],
    now: Timestamp,
    timings: &CertTimings,
) -> Result<(String, String)> {
    let tls = |e: rcgen::Error| Error::Tls(e.to_string());
    let issuer =
        Issuer::from_ca_cert_pem(ca_crt, KeyPair::from_pem(ca_key).map_err(tls)?).map_err(tls)?;
    let mut params = CertificateParams::new(sans.to_vec()).map_err(tls)?;
    if let Some(first) = sans.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.clone());
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let mut not_after = now + timings.leaf_validity;
    if let Some(ca) = cert_info(ca_crt)
        && ca.not_after < not_after
    {
        not_after = ca.not_after;
    }
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch(now - SignedDuration::from_hours(1));
    params.not_after = epoch + since_epoch(not_after);
    let key = KeyPair::generate().map_err(tls)?;
    let cert = params.signed_by(&key, &issuer).map_err(tls)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// See [`CertManager::write_files`].
pub fn write_serving_files(dir: &Path, material: &TlsMaterial) -> Result<bool> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let mut changed = false;
    // Key first: a reloader that sees the new certificate then finds its key already in place.
    for (name, content) in [(TLS_KEY, &material.tls_key), (TLS_CRT, &material.tls_crt)] {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(content.as_str()) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.tmp"));
        write_private(&tmp, content.as_bytes())?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::file(&path, e))?;
        changed = true;
    }
    Ok(changed)
}

/// Writes a file only its owner can read: these are private keys.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).map_err(|e| Error::file(path, e))?;
    file.write_all(bytes).map_err(|e| Error::file(path, e))
}

/// Fixed names and times for certificate tests here and in the operator.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{CertAction, CertTimings, TlsMaterial, issue};
    use jiff::{SignedDuration, Timestamp};

    pub fn sans() -> Vec<String> {
        vec!["histor.histor-system.svc".into(), "histor".into()]
    }

    pub fn t0() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().expect("timestamp")
    }

    pub fn days(n: i64) -> SignedDuration {
        SignedDuration::from_hours(24 * n)
    }

    pub fn created(now: Timestamp) -> TlsMaterial {
        issue(&CertAction::Create, None, &sans(), now, &timings())
            .expect("issue")
            .expect("material")
    }

    pub fn timings() -> CertTimings {
        CertTimings {
            ca_validity: days(300),
            leaf_validity: days(30),
            propagation: SignedDuration::from_mins(2),
            overlap: days(7),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::*;

    #[test]
    fn creates_when_missing_or_broken() {
        assert_eq!(decide(None, &sans(), t0(), &timings()), CertAction::Create);
        let mut m = created(t0());
        m.tls_crt = "garbage".into();
        assert_eq!(
            decide(Some(&m), &sans(), t0(), &timings()),
            CertAction::Create
        );
    }

    #[test]
    fn fresh_material_is_left_alone_and_consistent() {
        let m = created(t0());
        assert_eq!(
            decide(Some(&m), &sans(), t0(), &timings()),
            CertAction::Nothing
        );
        assert!(signed_by(&m.tls_crt, &m.ca_crt));
        let leaf = cert_info(&m.tls_crt).expect("leaf");
        assert_eq!(leaf.sans, vec!["histor", "histor.histor-system.svc"]);
        assert_eq!(leaf.not_after, t0() + days(30));
        assert_eq!(
            m.ca_bundle(),
            format!("{}\n", m.ca_crt.trim_end()).into_bytes()
        );
    }

    #[test]
    fn renews_the_leaf_in_its_last_third_and_when_names_change() {
        let m = created(t0());
        assert_eq!(
            decide(Some(&m), &sans(), t0() + days(19), &timings()),
            CertAction::Nothing
        );
        let action = decide(Some(&m), &sans(), t0() + days(21), &timings());
        assert_eq!(
            action,
            CertAction::RenewLeaf("serving certificate expires soon")
        );
        let renewed = issue(&action, Some(&m), &sans(), t0() + days(21), &timings())
            .expect("issue")
            .expect("material");
        assert_eq!(renewed.ca_crt, m.ca_crt, "the CA stays");
        assert_ne!(renewed.tls_crt, m.tls_crt);
        assert!(signed_by(&renewed.tls_crt, &m.ca_crt));
        assert_eq!(
            decide(Some(&renewed), &sans(), t0() + days(21), &timings()),
            CertAction::Nothing
        );

        let other = vec!["histor.elsewhere.svc".to_string()];
        assert_eq!(
            decide(Some(&m), &other, t0(), &timings()),
            CertAction::RenewLeaf("serving certificate names changed")
        );
    }

    #[test]
    fn rotates_the_ca_with_overlap() {
        let timings = timings();
        let m = created(t0());
        // the CA enters its last third after 200 days
        let rotate_at = t0() + days(201);
        // keep the leaf fresh so only the CA decides
        let m = issue(
            &CertAction::RenewLeaf("test"),
            Some(&m),
            &sans(),
            rotate_at - days(1),
            &timings,
        )
        .expect("issue")
        .expect("material");
        assert_eq!(
            decide(Some(&m), &sans(), rotate_at, &timings),
            CertAction::RotateCa
        );

        // step 1: new CA, both in the bundle, old leaf still served
        let step1 = issue(
            &CertAction::RotateCa,
            Some(&m),
            &sans(),
            rotate_at,
            &timings,
        )
        .expect("issue")
        .expect("material");
        assert_ne!(step1.ca_crt, m.ca_crt);
        assert_eq!(step1.ca_previous.as_deref(), Some(m.ca_crt.as_str()));
        assert_eq!(step1.tls_crt, m.tls_crt);
        let bundle = String::from_utf8(step1.ca_bundle()).expect("utf8");
        assert!(bundle.contains(step1.ca_crt.trim_end()) && bundle.contains(m.ca_crt.trim_end()));

        // the leaf waits for the bundle to propagate
        assert_eq!(
            decide(
                Some(&step1),
                &sans(),
                rotate_at + SignedDuration::from_secs(30),
                &timings
            ),
            CertAction::Nothing
        );
        // step 2: re-issue from the new CA
        let later = rotate_at + SignedDuration::from_mins(3);
        let action = decide(Some(&step1), &sans(), later, &timings);
        assert!(matches!(action, CertAction::RenewLeaf(_)));
        let step2 = issue(&action, Some(&step1), &sans(), later, &timings)
            .expect("issue")
            .expect("material");
        assert!(signed_by(&step2.tls_crt, &step2.ca_crt));
        assert!(step2.ca_previous.is_some(), "old CA still trusted");
        assert_eq!(
            decide(Some(&step2), &sans(), later, &timings),
            CertAction::Nothing
        );

        // step 3: the overlap ends
        let end = rotate_at + days(8);
        assert_eq!(
            decide(Some(&step2), &sans(), end, &timings),
            CertAction::DropPreviousCa
        );
        let step3 = issue(
            &CertAction::DropPreviousCa,
            Some(&step2),
            &sans(),
            end,
            &timings,
        )
        .expect("issue")
        .expect("material");
        assert!(step3.ca_previous.is_none());
        assert_eq!(
            decide(Some(&step3), &sans(), end, &timings),
            CertAction::Nothing
        );
    }

    #[test]
    fn secret_round_trip() {
        let mut m = created(t0());
        m.ca_previous = Some(m.ca_crt.clone());
        m.ca_rotated_at = Some(t0());
        let secret = m.to_secret("histor-system");
        assert_eq!(TlsMaterial::from_secret(&secret), Some(m));
    }

    #[test]
    fn serving_files_are_written_only_when_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = created(t0());
        assert!(write_serving_files(dir.path(), &m).expect("write"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(TLS_CRT)).expect("read"),
            m.tls_crt
        );
        assert!(!write_serving_files(dir.path(), &m).expect("write"));
    }
}
