//! Certificate generation with rcgen: a private CA and serving certificates signed by it.
//! Pure: returns PEM strings; callers decide where they live (files, a Secret).

use crate::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct PemPair {
    /// The certificate.
    pub cert: String,
    /// Its PKCS#8 private key.
    pub key: String,
}

/// A CA and a serving certificate it signed.
#[derive(Clone, Debug)]
pub struct ServingBundle {
    /// The CA: its certificate goes into a webhook's caBundle or a client's trust store.
    pub ca: PemPair,
    /// The serving certificate and key.
    pub leaf: PemPair,
}

fn tls(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

/// Makes a new CA valid for `days`, and a serving certificate valid for `leaf_days` for `names`
/// (DNS names or IP addresses).
pub fn generate(names: &[String], days: i64, leaf_days: i64) -> Result<ServingBundle> {
    let now = time_now();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params.distinguished_name.push(DnType::CommonName, "histor CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.not_before = now - std::time::Duration::from_secs(300);
    ca_params.not_after = now + std::time::Duration::from_secs(days.max(1) as u64 * 86_400);
    let ca_key = KeyPair::generate().map_err(tls)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(tls)?;

    let mut leaf_params = CertificateParams::new(names.to_vec()).map_err(tls)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, names.first().cloned().unwrap_or_else(|| "histor".into()));
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf_params.not_before = now - std::time::Duration::from_secs(300);
    leaf_params.not_after = now + std::time::Duration::from_secs(leaf_days.max(1) as u64 * 86_400);
    let leaf_key = KeyPair::generate().map_err(tls)?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(tls)?;

    Ok(ServingBundle {
        ca: PemPair { cert: ca.pem(), key: ca_key_pem },
        leaf: PemPair { cert: leaf.pem(), key: leaf_key.serialize_pem() },
    })
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
