//! The certificates kube-apiserver needs when none are given: a cluster CA, a serving
//! certificate for every name and address clients use, an admin client certificate
//! (`CN=kubernetes-admin`, `O=system:masters`) and kube-apiserver's client certificate
//! towards kubelets, as kubeadm makes them. Generated once
//! under a directory and reused on later starts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A PKI problem (generation or files).
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid subject alternative name {0:?}")]
    San(String),
}

/// Paths of the PEM files in a PKI directory (kubeadm's names).
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// kube-apiserver's client certificate towards kubelets.
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
    /// The service-account token signing key and its public half (ECDSA P-256).
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

impl PkiFiles {
    pub fn in_dir(dir: &Path) -> Self {
        PkiFiles {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
            kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        }
    }
}

/// Writes a file; a private one is created with mode 0600 (never readable by others,
/// not even for a moment) and kept at 0600 if it existed.
pub(crate) fn write(path: &Path, data: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mode = if private { 0o600 } else { 0o644 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    if private {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    f.write_all(data.as_bytes()).map_err(io)
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

/// Makes what is missing of the PKI under `dir` and returns the file paths: the CA
/// (kept when present — a control-plane node joining a cluster is given the cluster's
/// CA), then the serving and admin certificates signed by it, and the service-account
/// key pair. `sans` are the serving
/// certificate's DNS names and IP addresses.
pub fn ensure(dir: &Path, sans: &[String]) -> Result<PkiFiles, PkiError> {
    let files = PkiFiles::in_dir(dir);
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| PkiError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let (ca_key, ca_pem, new_ca) = if files.ca_cert.exists() {
        (
            KeyPair::from_pem(&read(&files.ca_key)?)?,
            read(&files.ca_cert)?,
            false,
        )
    } else {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = name("kubernetes", None);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = ca.self_signed(&ca_key)?.pem();
        (ca_key, pem, true)
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;
    if new_ca || !files.serving_cert.exists() {
        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::default();
        serving.distinguished_name = name("kube-apiserver", None);
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for s in sans {
            serving.subject_alt_names.push(match s.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    SanType::DnsName(s.clone().try_into().map_err(|_| PkiError::San(s.clone()))?)
                }
            });
        }
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;
        write(&files.serving_key, &serving_key.serialize_pem(), true)?;
        write(&files.serving_cert, &serving_cert.pem(), false)?;
    }
    // The administrator, and kube-apiserver itself towards kubelets (kubeadm's names).
    for (cert, key, cn, org) in [
        (
            &files.admin_cert,
            &files.admin_key,
            "kubernetes-admin",
            "system:masters",
        ),
        (
            &files.kubelet_client_cert,
            &files.kubelet_client_key,
            "kube-apiserver-kubelet-client",
            "kubeadm:cluster-admins",
        ),
    ] {
        if new_ca || !cert.exists() {
            let client_key = KeyPair::generate()?;
            let mut client = CertificateParams::default();
            client.distinguished_name = name(cn, Some(org));
            client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let client_cert = client.signed_by(&client_key, &issuer)?;
            write(key, &client_key.serialize_pem(), true)?;
            write(cert, &client_cert.pem(), false)?;
        }
    }
    // The service-account key pair, kept like the CA: every API server of a cluster
    // must share it (kubeadm copies it to joining control-plane nodes).
    if !files.sa_key.exists() {
        let sa = KeyPair::generate()?;
        write(&files.sa_pub, &sa.public_key_pem(), false)?;
        write(&files.sa_key, &sa.serialize_pem(), true)?;
    }
    if new_ca {
        write(&files.ca_key, &ca_key.serialize_pem(), true)?;
        // The CA certificate last: its presence marks a CA that is complete.
        write(&files.ca_cert, &ca_pem, false)?;
    }
    Ok(files)
}

/// The serving certificate's names, as kubeadm sets them: the host names of the
/// `kubernetes` Service, `localhost`, the advertise address, the Service's cluster IP and
/// loopback.
pub fn default_sans(advertise: IpAddr, service_ip: IpAddr, extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for ip in [advertise, service_ip, IpAddr::from([127, 0, 0, 1])] {
        if !sans.contains(&ip.to_string()) {
            sans.push(ip.to_string());
        }
    }
    sans.extend(extra.iter().cloned());
    sans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let sans = default_sans([10, 0, 0, 1].into(), [10, 96, 0, 1].into(), &[]);
        let files = ensure(dir.path(), &sans).unwrap();
        let ca = std::fs::read_to_string(&files.ca_cert).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        let again = ensure(dir.path(), &sans).unwrap();
        assert_eq!(std::fs::read_to_string(&again.ca_cert).unwrap(), ca);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.ca_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Given only the CA (a joining control-plane node), the rest is made from it.
        let other = tempfile::tempdir().unwrap();
        std::fs::copy(&files.ca_cert, other.path().join("ca.crt")).unwrap();
        std::fs::copy(&files.ca_key, other.path().join("ca.key")).unwrap();
        let joined = ensure(other.path(), &sans).unwrap();
        assert_eq!(std::fs::read_to_string(&joined.ca_cert).unwrap(), ca);
        assert!(joined.serving_cert.exists() && joined.admin_cert.exists());
        assert_ne!(
            std::fs::read(&joined.serving_cert).unwrap(),
            std::fs::read(&files.serving_cert).unwrap()
        );
    }
}
