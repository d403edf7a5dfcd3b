//! The admin kubeconfig kubectl reads (`admin.conf`), with the certificates inlined.

use std::path::Path;

use base64::Engine as _;

use crate::pki::{PkiError, PkiFiles};

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Renders a kubeconfig for the admin user against `server` (an https URL).
pub fn admin(server: &str, files: &PkiFiles) -> Result<String, PkiError> {
    let b64 = |p: &Path| -> Result<String, PkiError> {
        Ok(base64::engine::general_purpose::STANDARD.encode(read(p)?))
    };
    Ok(format!(
        "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
preferences: {{}}
users:
- name: kubernetes-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(&files.ca_cert)?,
        cert = b64(&files.admin_cert)?,
        key = b64(&files.admin_key)?,
    ))
}

/// Writes the admin kubeconfig (mode 0600).
pub fn write_admin(path: &Path, server: &str, files: &PkiFiles) -> Result<(), PkiError> {
    let text = admin(server, files)?;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    crate::pki::write(path, &text, true)
}
