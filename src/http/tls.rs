//! TLS for the viewer and test listeners: certificates and keys from PEM files, and the
//! per-client cipher suite choice.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::SupportedCipherSuite;

use crate::config::key_file::describe_pem_error;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a certificate and key cannot serve TLS; [`TlsError::setting`] names the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read or is not PEM.
    #[error("{path}: {}", describe_pem_error(.source))]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{path}: no certificate in file")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file cannot be read or holds no private key.
    #[error("{path}: {}", describe_pem_error(.source))]
    Key {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: rustls_pki_types::pem::Error,
    },
    /// The key is not the certificate's, or rustls cannot use it.
    #[error("the certificate and key do not fit together: {0}")]
    Mismatch(rustls::Error),
    /// The offered cipher suites leave no protocol version to speak.
    #[error("no TLS version can use these suites: {0}")]
    Suites(rustls::Error),
    /// No ticket key could be made (the system's random source failed).
    #[error("cannot make TLS session ticket keys: {0}")]
    Tickets(rustls::Error),
}

impl TlsError {
    /// The configuration key an operator changes to fix it.
    pub fn setting(&self) -> &'static str {
        match self {
            TlsError::Certificate { .. } | TlsError::NoCertificate { .. } => "https.cert",
            TlsError::Key { .. } => "https.key",
            // The certificate reads; the key beside it is not its key.
            TlsError::Mismatch(_) => "https.key",
            TlsError::Suites(_) => "https.cipher_suites",
            TlsError::Tickets(_) => "https",
        }
    }
}

/// Builds the rustls server configuration from PEM files with this build's cipher suites.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    load_tls_with(cert, key, &[])
}

/// Builds the rustls server configuration from PEM files, offering `suites` (in preference
/// order; all of this build's when empty) and h2 and http/1.1 by ALPN.
pub fn load_tls_with(
    cert: &Path,
    key: &Path,
    suites: &[SupportedCipherSuite],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificate {
            path: cert.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let mut provider = rustls::crypto::ring::default_provider();
    if !suites.is_empty() {
        provider.cipher_suites = suites.to_vec();
    }
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Suites)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Mismatch)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Sessions a returning player resumes, shared by every TLS configuration the daemon builds:
/// all workers use one, and a SIGHUP keeps it as long as the certificate and key files are
/// unchanged; new ones (a renewal, a re-key after a compromise, another name) start new
/// ticket keys and an empty cache, so no session made under the old identity resumes
/// under the new one.
///
/// Why: a full handshake costs the box an ECDHE and a signature; a player that comes back
/// for its next segments after a pause should pay neither. rustls' default is a 256-entry
/// session cache per configuration, rebuilt on every reload, so on a box with thousands of
/// players a returning one almost always paid a full handshake. With stateless tickets
/// (ChaCha20-Poly1305 keys rotated every 6 hours, tickets valid for 12) any number of players
/// resume, until the process restarts; the session cache below serves TLS 1.2 clients that
/// resume by session id.
#[derive(Default)]
pub struct Resumption {
    current: std::sync::Mutex<Option<(Identity, Sessions)>>,
}

/// The sha256 of a certificate file and its key file together.
type Identity = [u8; 32];

/// Ticket keys and a session cache for one identity.
#[derive(Clone)]
struct Sessions {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    cache: Arc<dyn rustls::server::StoresServerSessions>,
}

/// TLS 1.2 sessions kept for resumption by id (each a few hundred bytes).
const SESSION_CACHE_ENTRIES: usize = 32_768;

impl Resumption {
    /// Nothing yet: the first certificate loaded makes the first ticket keys.
    pub fn new() -> Resumption {
        Resumption {
            current: std::sync::Mutex::new(None),
        }
    }

    /// Gives `config` the sessions of the identity in `cert` and `key`: the ones in use if
    /// the files are the same, new ones otherwise.
    fn apply(
        &self,
        config: &mut rustls::ServerConfig,
        cert: &Path,
        key: &Path,
    ) -> Result<(), TlsError> {
        let identity = identity_of(cert, key);
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sessions = match current.as_ref() {
            Some((known, sessions)) if *known == identity => sessions.clone(),
            _ => {
                let sessions = Sessions {
                    ticketer: rustls::crypto::ring::Ticketer::new().map_err(TlsError::Tickets)?,
                    cache: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
                };
                *current = Some((identity, sessions.clone()));
                sessions
            }
        };
        config.ticketer = sessions.ticketer;
        config.session_storage = sessions.cache;
        Ok(())
    }
}

/// The identity a certificate and key file hold: the sha256 of both files' bytes.
fn identity_of(cert: &Path, key: &Path) -> Identity {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for file in [cert, key] {
        hasher.update(std::fs::read(file).unwrap_or_default());
        hasher.update([0]);
    }
    hasher.finalize().into()
}

impl std::fmt::Debug for Resumption {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Resumption")
    }
}

/// The TLS settings of HTTPS viewer listeners (swapped whole on SIGHUP).
///
/// Cipher suites follow the server's order (`https.cipher_suites`, AES-128-GCM first by
/// default), except for a client that lists a ChaCha20-Poly1305 suite first of all: such a
/// client (BoringSSL on a phone without AES instructions) says ChaCha20 is much cheaper for
/// it, and it gets it, as OpenSSL's `SSL_OP_PRIORITIZE_CHACHA` does. Following clients'
/// order alone would hand ChaCha20 to every OpenSSL client (ffmpeg), whose fixed order is
/// AES-256-GCM, ChaCha20, AES-128-GCM, even on AES hardware.
pub struct ViewerTls {
    server_order: Arc<rustls::ServerConfig>,
    client_order: Arc<rustls::ServerConfig>,
    offered: Vec<rustls::CipherSuite>,
}

impl ViewerTls {
    /// Loads the certificate and key and offers `suites` (in preference order), resuming
    /// sessions through `resumption`.
    pub fn load(
        cert: &Path,
        key: &Path,
        suites: &[SupportedCipherSuite],
        resumption: &Resumption,
    ) -> Result<ViewerTls, TlsError> {
        let mut client_order = (*load_tls_with(cert, key, suites)?).clone();
        resumption.apply(&mut client_order, cert, key)?;
        let client_order = Arc::new(client_order);
        let mut server_order = (*client_order).clone();
        server_order.ignore_client_order = true;
        let offered = client_order
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|suite| suite.suite())
            .collect();
        Ok(ViewerTls {
            server_order: Arc::new(server_order),
            client_order,
            offered,
        })
    }

    /// Reads the ClientHello and completes the handshake with the configuration it calls
    /// for.
    pub async fn accept<IO>(&self, stream: IO) -> io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await?;
        let config = if client_prefers_chacha20(start.client_hello().cipher_suites(), &self.offered)
        {
            Arc::clone(&self.client_order)
        } else {
            Arc::clone(&self.server_order)
        };
        start.into_stream(config).await
    }
}

/// Whether the client lists a ChaCha20-Poly1305 suite first of all real suites, and it is
/// `offered`. GREASE values (RFC 8701: Chrome, Cronet and every BoringSSL client put one
/// first) and signalling values (the renegotiation and fallback SCSVs) are not suites and
/// are skipped.
pub fn client_prefers_chacha20(
    client: &[rustls::CipherSuite],
    offered: &[rustls::CipherSuite],
) -> bool {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS13_CHACHA20_POLY1305_SHA256,
    };
    let first_real = client
        .iter()
        .find(|suite| !is_grease_or_signal(u16::from(**suite)));
    first_real.is_some_and(|suite| {
        offered.contains(suite)
            && matches!(
                suite,
                TLS13_CHACHA20_POLY1305_SHA256
                    | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
    })
}

/// RFC 8701 GREASE values (0x0A0A, 0x1A1A, ... 0xFAFA) and the two signalling cipher suite
/// values, TLS_EMPTY_RENEGOTIATION_INFO_SCSV (0x00FF) and TLS_FALLBACK_SCSV (0x5600).
fn is_grease_or_signal(value: u16) -> bool {
    let [high, low] = value.to_be_bytes();
    (high == low && low & 0x0f == 0x0a) || value == 0x00ff || value == 0x5600
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite::{
        TLS13_AES_128_GCM_SHA256 as AES128, TLS13_AES_256_GCM_SHA384 as AES256,
        TLS13_CHACHA20_POLY1305_SHA256 as CHACHA,
    };

    #[test]
    fn chacha20_goes_only_to_clients_that_list_it_first_of_all() {
        let offered = [AES128, CHACHA];
        assert!(client_prefers_chacha20(&[CHACHA, AES128], &offered));
        assert!(
            !client_prefers_chacha20(&[AES256, CHACHA, AES128], &offered),
            "OpenSSL's fixed order says nothing about its hardware"
        );
        assert!(!client_prefers_chacha20(&[AES128, CHACHA], &offered));
        assert!(!client_prefers_chacha20(&[AES256], &offered));
        assert!(!client_prefers_chacha20(&[CHACHA], &[AES128]));
    }

    #[test]
    fn grease_and_signalling_values_are_not_the_clients_first_choice() {
        let offered = [AES128, CHACHA];
        let value = rustls::CipherSuite::from;
        // Chrome on a phone without AES: GREASE, then ChaCha20.
        assert!(client_prefers_chacha20(
            &[value(0x0a0a), CHACHA, AES128],
            &offered
        ));
        assert!(client_prefers_chacha20(
            &[value(0xfafa), value(0x00ff), CHACHA],
            &offered
        ));
        // Chrome with AES: GREASE, then AES.
        assert!(!client_prefers_chacha20(
            &[value(0x1a1a), AES128, CHACHA],
            &offered
        ));
        assert!(!client_prefers_chacha20(&[value(0x0a0a)], &offered));
        for grease in (0..16u16).map(|n| (n << 12) | (n << 4) | 0x0a0a) {
            assert!(is_grease_or_signal(grease), "{grease:#06x}");
        }
        for real in [0x1301u16, 0x1303, 0xc02b, 0xcca8, 0x0a0b, 0x1a0a] {
            assert!(!is_grease_or_signal(real), "{real:#06x}");
        }
    }
}
