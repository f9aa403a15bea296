//! `https.cipher_suites`: the TLS cipher suites this build can offer, by IANA name, resolved
//! once when the file is read.

use std::fmt;

use rustls::SupportedCipherSuite;

/// The IANA name of a rustls cipher suite (rustls spells TLS 1.3 ones `TLS13_...`).
fn suite_name(suite: &SupportedCipherSuite) -> String {
    format!("{:?}", suite.suite()).replacen("TLS13_", "TLS_", 1)
}

/// Every cipher suite this build can offer, by IANA name (for error messages and docs).
pub fn cipher_suite_names() -> Vec<String> {
    rustls::crypto::ring::ALL_CIPHER_SUITES
        .iter()
        .map(suite_name)
        .collect()
}

/// One entry of `https.cipher_suites`: a suite this build offers.
#[derive(Clone, Copy)]
pub struct CipherSuiteSetting(SupportedCipherSuite);

impl CipherSuiteSetting {
    /// The suite called `name` (IANA spelling, case-insensitive), or why there is none.
    pub fn parse(name: &str) -> Result<CipherSuiteSetting, String> {
        rustls::crypto::ring::ALL_CIPHER_SUITES
            .iter()
            .find(|suite| suite_name(suite).eq_ignore_ascii_case(name.trim()))
            .map(|suite| CipherSuiteSetting(*suite))
            .ok_or_else(|| {
                format!(
                    "{name:?} is not a suite this build offers (one of: {})",
                    cipher_suite_names().join(", ")
                )
            })
    }

    /// The suite, as rustls offers it.
    pub fn suite(self) -> SupportedCipherSuite {
        self.0
    }

    /// Its IANA name.
    pub fn name(self) -> String {
        suite_name(&self.0)
    }
}

impl fmt::Debug for CipherSuiteSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl PartialEq for CipherSuiteSetting {
    fn eq(&self, other: &Self) -> bool {
        self.0.suite() == other.0.suite()
    }
}

string_setting!(CipherSuiteSetting, |suite| suite.name());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_case_insensitively_and_render_in_iana_spelling() {
        let suite = CipherSuiteSetting::parse("tls_aes_128_gcm_sha256").unwrap();
        assert_eq!(suite.name(), "TLS_AES_128_GCM_SHA256");
        assert_eq!(
            CipherSuiteSetting::parse(&suite.name()).unwrap(),
            suite,
            "a rendered name parses back"
        );
    }

    #[test]
    fn an_unknown_suite_is_refused_with_the_list() {
        let err = CipherSuiteSetting::parse("TLS_RSA_WITH_RC4_128_MD5").unwrap_err();
        assert!(err.contains("TLS_AES_128_GCM_SHA256"), "{err}");
    }
}
