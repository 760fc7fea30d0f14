//! TLS material: the cluster CA, node and agent certificates (rcgen), peer
//! identities, and rustls configurations for mutual TLS 1.3.
//!
//! Identities live in a certificate's subject alternative names as URIs:
//! `ringvault://node/<id>` for a chunk server,
//! `ringvault://agent/<repository>/<agent-id>/<role>` for an agent (see
//! [`Role`]) and `ringvault://operator/<name>` for an operator. webpki checks
//! the chain, dates and key usage, not names, so servers map a verified
//! peer certificate to a [`PeerIdentity`] with [`PeerIdentity::from_der`].
//! Every node certificate also names the DNS SAN [`NODE_SERVER_NAME`], the
//! name clients verify, so a client that knows only an address can connect.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::wire::ALPN;
use crate::{NodeId, RepoId};

/// The DNS name every node certificate carries and every client verifies.
pub const NODE_SERVER_NAME: &str = "ringvault-node";

/// Errors from making or loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen failed to make or parse a certificate or key.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// PEM text did not hold what was expected.
    #[error("PEM: {0}")]
    Pem(String),
    /// The certificate names no ringvault identity.
    #[error("certificate has no ringvault identity: {0}")]
    Identity(String),
    /// Client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct PemPair {
    /// Certificate, PEM.
    pub cert: String,
    /// PKCS#8 private key, PEM. Secret: write with mode 0600.
    pub key: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair").finish_non_exhaustive()
    }
}

/// Who is on the other end of a verified connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A chunk server of the cluster.
    Node(NodeId),
    /// An agent, allowed one repository in one role.
    Agent {
        /// The repository it may use.
        repo: RepoId,
        /// Its agent id.
        agent: String,
        /// What it may do there.
        role: Role,
    },
    /// A cluster operator: may change the cluster map. Minted for one
    /// command from the CA key (`ringvault cluster add-node` and friends).
    Operator(String),
}

/// What an agent certificate allows in its repository. Servers check it on
/// every request.
///
/// A writer can back up but not destroy: a compromised host cannot delete
/// its own backups (the append-only mode restic users asked for in restic
/// issue 187).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads everything in the repository; writes and deletes nothing.
    Reader,
    /// Adds chunks and snapshots; reads chunks and its own snapshots only;
    /// deletes nothing, forgets nothing, prunes nothing, manages no keys.
    Writer,
    /// Everything: reads every snapshot, forgets, prunes, manages keys.
    Admin,
}

impl Role {
    /// The name used in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Writer => "writer",
            Self::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s {
            "reader" => Ok(Self::Reader),
            "writer" => Ok(Self::Writer),
            "admin" => Ok(Self::Admin),
            other => Err(TlsError::Identity(format!(
                "unknown role {other:?} (reader, writer or admin)"
            ))),
        }
    }
}

/// Makes a new cluster CA (ECDSA P-256, self-signed, valid until 4096).
///
/// # Errors
/// [`TlsError::Rcgen`] if key generation fails.
pub fn make_ca(name: &str) -> Result<PemPair, TlsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let key_pem = key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(params, key)?;
    Ok(PemPair {
        cert: ca.pem(),
        key: key_pem,
    })
}

/// Issues a node certificate for `node`, valid for [`NODE_SERVER_NAME`],
/// `node-<id>.ringvault` and the given extra host names or IP addresses.
///
/// # Errors
/// [`TlsError`] if the CA does not load or a name is invalid.
pub fn issue_node(ca: &PemPair, node: NodeId, hosts: &[String]) -> Result<PemPair, TlsError> {
    let mut sans = vec![
        NODE_SERVER_NAME.to_owned(),
        format!("node-{}.ringvault", node.0),
    ];
    sans.extend(hosts.iter().cloned());
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("ringvault node {}", node.0));
    params.subject_alt_names.push(SanType::URI(
        format!("ringvault://node/{}", node.0).try_into()?,
    ));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    issue(ca, params)
}

/// Issues an agent (client) certificate for `agent` in `repo` with `role`.
///
/// # Errors
/// [`TlsError`] if the CA does not load or the agent id is not a valid URI
/// segment.
pub fn issue_agent(
    ca: &PemPair,
    repo: &RepoId,
    agent: &str,
    role: Role,
) -> Result<PemPair, TlsError> {
    if agent.is_empty()
        || !agent
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(TlsError::Identity(format!("bad agent id {agent:?}")));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("ringvault agent {agent} ({role})"),
    );
    params.subject_alt_names.push(SanType::URI(
        format!("ringvault://agent/{repo}/{agent}/{role}").try_into()?,
    ));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    issue(ca, params)
}

/// Issues an operator certificate named `name`, valid for one hour from
/// `now` (five minutes earlier too, for clock skew): what
/// `ringvault cluster` commands present to change the cluster map. They mint
/// it from the CA key and never write it to disk.
///
/// # Errors
/// [`TlsError`] if the CA does not load or the name is not a valid URI
/// segment.
pub fn issue_operator(
    ca: &PemPair,
    name: &str,
    now: std::time::SystemTime,
) -> Result<PemPair, TlsError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(TlsError::Identity(format!("bad operator name {name:?}")));
    }
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("ringvault operator {name}"));
    params.subject_alt_names.push(SanType::URI(
        format!("ringvault://operator/{name}").try_into()?,
    ));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::from(now);
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::hours(1);
    issue(ca, params)
}

fn issue(ca: &PemPair, mut params: CertificateParams) -> Result<PemPair, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

impl PeerIdentity {
    /// Reads the ringvault identity from a (verified) DER certificate.
    ///
    /// # Errors
    /// [`TlsError::Identity`] if it names none, or names it badly.
    pub fn from_der(der: &[u8]) -> Result<Self, TlsError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| TlsError::Identity(format!("unparsable certificate: {e}")))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| TlsError::Identity(e.to_string()))?
            .ok_or_else(|| TlsError::Identity("no subject alternative names".into()))?;
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(id) = Self::from_uri(uri)
            {
                return Ok(id);
            }
        }
        Err(TlsError::Identity("no ringvault:// URI".into()))
    }

    fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("ringvault://")?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["node", id] => Some(Self::Node(NodeId(id.parse().ok()?))),
            ["operator", name] if !name.is_empty() => Some(Self::Operator((*name).to_owned())),
            ["agent", repo, agent, role] if !agent.is_empty() => Some(Self::Agent {
                repo: RepoId::new(repo).ok()?,
                agent: (*agent).to_owned(),
                role: role.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// SHA-256 fingerprint of a DER certificate, lowercase hex (64 digits):
/// what `openssl x509 -fingerprint -sha256` prints, without the colons.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The [`fingerprint`] of the first certificate in PEM text.
///
/// # Errors
/// [`TlsError::Pem`] when the text holds no certificate.
pub fn fingerprint_pem(pem: &str) -> Result<String, TlsError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
    Ok(fingerprint(&der))
}

/// Certificates and a key parsed from PEM, ready for rustls.
#[derive(Debug)]
pub struct TlsMaterial {
    /// The cluster CA certificate.
    pub ca: CertificateDer<'static>,
    /// Our certificate chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// Our private key.
    pub key: PrivateKeyDer<'static>,
}

impl TlsMaterial {
    /// Parses PEM text: the CA certificate, our certificate, our key.
    ///
    /// # Errors
    /// [`TlsError::Pem`] naming which part failed.
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Result<Self, TlsError> {
        let ca = CertificateDer::from_pem_slice(ca.as_bytes())
            .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError::Pem(
                "certificate file holds no certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
        Ok(Self { ca, chain, key })
    }

    /// Our own identity, from our certificate.
    ///
    /// # Errors
    /// [`TlsError::Identity`] if the certificate names none.
    pub fn identity(&self) -> Result<PeerIdentity, TlsError> {
        PeerIdentity::from_der(&self.chain[0])
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(roots)
    }

    /// A rustls server config: TLS 1.3 only, ALPN `ringvault/1`, client
    /// certificates required and verified against the CA.
    ///
    /// # Errors
    /// [`TlsError`] if rustls refuses the material.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// A rustls client config: TLS 1.3 only, ALPN `ringvault/1`, servers
    /// verified against the CA, our certificate offered.
    ///
    /// # Errors
    /// [`TlsError`] if rustls refuses the material.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip() {
        let ca = make_ca("test ca").unwrap();
        let node = issue_node(&ca, NodeId(7), &["127.0.0.1".into()]).unwrap();
        let repo = RepoId::new("home").unwrap();
        let agent = issue_agent(&ca, &repo, "laptop", Role::Writer).unwrap();
        let m = TlsMaterial::from_pem(&ca.cert, &node.cert, &node.key).unwrap();
        assert_eq!(m.identity().unwrap(), PeerIdentity::Node(NodeId(7)));
        m.server_config().unwrap();
        let m = TlsMaterial::from_pem(&ca.cert, &agent.cert, &agent.key).unwrap();
        assert_eq!(
            m.identity().unwrap(),
            PeerIdentity::Agent {
                repo: repo.clone(),
                agent: "laptop".into(),
                role: Role::Writer,
            }
        );
        for role in [Role::Reader, Role::Admin] {
            let pair = issue_agent(&ca, &repo, "host", role).unwrap();
            let m = TlsMaterial::from_pem(&ca.cert, &pair.cert, &pair.key).unwrap();
            assert!(
                matches!(m.identity().unwrap(), PeerIdentity::Agent { role: r, .. } if r == role)
            );
        }
        m.client_config().unwrap();
        assert_eq!(fingerprint(&m.chain[0]).len(), 64);
        let op = issue_operator(&ca, "admin", std::time::SystemTime::now()).unwrap();
        let m = TlsMaterial::from_pem(&ca.cert, &op.cert, &op.key).unwrap();
        assert_eq!(
            m.identity().unwrap(),
            PeerIdentity::Operator("admin".into())
        );
        assert!(issue_operator(&ca, "a/b", std::time::SystemTime::now()).is_err());
    }

    #[test]
    fn an_agent_uri_without_a_known_role_is_no_identity() {
        assert_eq!(
            PeerIdentity::from_uri("ringvault://agent/home/laptop"),
            None
        );
        assert_eq!(
            PeerIdentity::from_uri("ringvault://agent/home/laptop/root"),
            None
        );
        assert_eq!(
            PeerIdentity::from_uri("ringvault://agent/home/laptop/admin/x"),
            None
        );
        assert!(PeerIdentity::from_uri("ringvault://agent/home/laptop/admin").is_some());
    }

    #[test]
    fn garbage_is_not_an_identity() {
        assert!(PeerIdentity::from_der(b"not a cert").is_err());
        assert!(TlsMaterial::from_pem("x", "y", "z").is_err());
    }
}
