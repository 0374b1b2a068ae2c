//! Throw-away certificates for tests and the benchmark (feature
//! `test-pki`): made at run time in a directory the caller owns, so no
//! private key is ever committed.

use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams,
    CertificateRevocationListParams, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};

use crate::tls::{Tls, TlsError};

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The CA file to trust.
    pub ca: PathBuf,
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl Credentials {
    /// Loads them as a node does.
    pub fn load(&self) -> Result<Tls, TlsError> {
        Tls::load(&self.ca, &self.cert, &self.key)
    }
}

/// A CA, its CRL and certificates of every kind a test needs.
#[derive(Clone, Debug)]
pub struct TestPki {
    /// A node's certificate from the CA; the CA file holds the CA and its
    /// CRL.
    pub node: Credentials,
    /// A second certificate of the same CA, revoked by the CRL; its own CA
    /// file has no CRL (a node not told yet), so it starts, but peers that
    /// have the CRL refuse it.
    pub revoked: Credentials,
    /// A certificate of the same CA that expired in 2001.
    pub expired: Credentials,
    /// A node of another CA, trusting only that other CA.
    pub foreign: Credentials,
}

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused.
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

struct Authority {
    certificate: Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key)?;
        Ok(Authority { certificate, key })
    }

    /// A node's certificate: its name as common name and as the one host
    /// name (which NEO never checks: nodes connect to addresses).
    fn issue(&self, name: &str, serial: u64, expired: bool) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.serial_number = Some(SerialNumber::from(serial));
        // OpenSSL's strict checks (NEO/py's) want it.
        params.use_authority_key_identifier_extension = true;
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let certificate = params.signed_by(&key, &self.certificate, &self.key)?;
        Ok((certificate.pem(), key.serialize_pem()))
    }

    fn revocation_list(&self, revoked: u64) -> Result<String, PkiError> {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(2090, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(revoked),
                revocation_time: date_time_ymd(2020, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.certificate, &self.key)?.pem()?)
    }
}

fn write(path: PathBuf, contents: &str) -> Result<PathBuf, PkiError> {
    std::fs::write(&path, contents).map_err(|source| PkiError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

impl TestPki {
    /// Makes the certificates into `dir`.
    pub fn create(dir: &Path) -> Result<TestPki, PkiError> {
        const REVOKED: u64 = 3;
        let authority = Authority::new("NEO test CA")?;
        let crl = authority.revocation_list(REVOKED)?;
        let ca = write(
            dir.join("ca.crt"),
            &format!("{}{crl}", authority.certificate.pem()),
        )?;
        let credentials = |name: &str, (cert, key): (String, String)| {
            Ok::<_, PkiError>(Credentials {
                ca: ca.clone(),
                cert: write(dir.join(format!("{name}.crt")), &cert)?,
                key: write(dir.join(format!("{name}.key")), &key)?,
            })
        };
        let node = credentials("node", authority.issue("node", 2, false)?)?;
        let mut revoked = credentials("revoked", authority.issue("revoked", REVOKED, false)?)?;
        revoked.ca = write(dir.join("ca-without-crl.crt"), &authority.certificate.pem())?;
        let expired = credentials("expired", authority.issue("expired", 4, true)?)?;
        let other = Authority::new("another CA")?;
        let (cert, key) = other.issue("foreign", 2, false)?;
        let foreign = Credentials {
            ca: write(dir.join("foreign-ca.crt"), &other.certificate.pem())?,
            cert: write(dir.join("foreign.crt"), &cert)?,
            key: write(dir.join("foreign.key"), &key)?,
        };
        Ok(TestPki {
            node,
            revoked,
            expired,
            foreign,
        })
    }
}
