//! TLS material for the ext_proc listener: files given on the command line, or a certificate
//! generated at start (agentgateway and Envoy AI Gateway connect with TLS without verifying).

use std::fmt;
use std::path::Path;

use crate::cli::Tls;

/// PEM certificate chain and private key.
#[derive(Clone)]
pub struct Material {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Material { .. }")
    }
}

#[derive(Debug)]
pub enum TlsError {
    Read {
        flag: &'static str,
        path: String,
        why: String,
    },
    Generate(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { flag, path, why } => write!(f, "{flag} {path}: {why}"),
            TlsError::Generate(why) => write!(f, "generating a self-signed certificate: {why}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        flag,
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

/// None = plaintext.
pub fn material(tls: &Tls) -> Result<Option<Material>, TlsError> {
    match tls {
        Tls::Plaintext => Ok(None),
        Tls::Files { cert, key } => Ok(Some(Material {
            cert_pem: read("--tls-cert", cert)?,
            key_pem: read("--tls-key", key)?,
        })),
        Tls::SelfSigned => self_signed().map(Some),
    }
}

/// A fresh self-signed certificate for `localhost` and `llm-router-extproc`.
pub fn self_signed() -> Result<Material, TlsError> {
    let names = vec!["localhost".to_string(), "llm-router-extproc".to_string()];
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(Material {
        cert_pem: certified.cert.pem().into_bytes(),
        key_pem: certified.signing_key.serialize_pem().into_bytes(),
    })
}
