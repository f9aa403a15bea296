//! The TLS cipher suites this build can offer, by IANA name, for `https.cipher_suites`.

/// The IANA name of a rustls cipher suite (rustls spells TLS 1.3 ones `TLS13_...`).
fn suite_name(suite: &rustls::SupportedCipherSuite) -> String {
    format!("{:?}", suite.suite()).replacen("TLS13_", "TLS_", 1)
}

/// Every cipher suite this build can offer, by IANA name (for `https.cipher_suites`).
pub fn cipher_suite_names() -> Vec<String> {
    rustls::crypto::ring::ALL_CIPHER_SUITES
        .iter()
        .map(suite_name)
        .collect()
}

/// The suite called `name` (IANA spelling, case-insensitive), if this build offers it.
pub fn cipher_suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    rustls::crypto::ring::ALL_CIPHER_SUITES
        .iter()
        .find(|suite| suite_name(suite).eq_ignore_ascii_case(name.trim()))
        .copied()
}
