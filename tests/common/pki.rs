//! A throw-away X.509 PKI for page-server TLS tests: a CA, certificates it signs (PEM files in
//! a directory), and CRLs. Also included by the library's unit tests (`src/pages/tls.rs`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority writing into `dir`.
pub struct Ca {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate (PEM): what peers trust.
    pub cert: PathBuf,
}

impl Ca {
    /// A new CA named `name` (files `name-ca.pem`).
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        Ca {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(p, key),
            cert: path,
        }
    }

    /// A certificate with subject CN `name`, subjectAltNames `sans` (IP addresses or DNS
    /// names) and serial number `serial` (files `name-cert.pem`, `name-key.pem`).
    pub fn leaf(&self, name: &str, sans: &[&str], serial: u64) -> Leaf {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.serial_number = Some(SerialNumber::from(serial));
        p.use_authority_key_identifier_extension = true;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let l = Leaf {
            cert: self.dir.join(format!("{name}-cert.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&l.cert, cert.pem()).unwrap();
        std::fs::write(&l.key, key.serialize_pem()).unwrap();
        l
    }

    /// A CRL revoking the certificates of serial numbers `revoked` (file `crl.pem`).
    pub fn crl(&self, revoked: &[u64]) -> PathBuf {
        let now = rcgen::date_time_ymd(2024, 1, 1);
        let p = CertificateRevocationListParams {
            this_update: now,
            next_update: rcgen::date_time_ymd(4000, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&s| RevokedCertParams {
                    serial_number: SerialNumber::from(s),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let path = self.dir.join("crl.pem");
        std::fs::write(&path, p.signed_by(&self.issuer).unwrap().pem().unwrap()).unwrap();
        path
    }
}
