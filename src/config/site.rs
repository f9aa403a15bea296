//! `[site]`: the boxes of one site (CONTRACT section 7), checked once when the file is read.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::units::HumanDuration;

/// A `[site]` mistake: the key at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteError {
    /// The dotted key, e.g. `site.peer[1].url`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl SiteError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> SiteError {
        SiteError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Most copies of an object a site keeps: beyond a handful, a copy buys no availability.
pub const MAX_COPIES: u32 = 16;

/// `[site]`: this box's place in a site of boxes that act as one cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// This box's name, unique in the site; placement hashes it, so renaming a box moves
    /// its share.
    #[serde(rename = "box")]
    pub box_name: String,
    /// The bearer token the site's boxes share for peer fill (`/v1/site/...`); needed as
    /// soon as the site has a peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Copies of each object the site holds, unless its manifest entry says otherwise.
    pub copies: u32,
    /// This box's share, relative to the peers' weights (its capacity is a good choice).
    pub weight: f64,
    /// How often each peer's `/readyz` is asked; a peer that fails one check is out of
    /// every redirect until one succeeds.
    pub check_interval: HumanDuration,
    /// How long a readiness check may take before the peer counts as not ready.
    pub check_timeout: HumanDuration,
    /// Every other box of the site (`[[site.peer]]`).
    #[serde(rename = "peer")]
    pub peers: Vec<PeerConfig>,
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            box_name: String::new(),
            token_file: None,
            copies: 1,
            weight: 1.0,
            check_interval: HumanDuration(std::time::Duration::from_secs(2)),
            check_timeout: HumanDuration(std::time::Duration::from_secs(1)),
            peers: Vec::new(),
        }
    }
}

/// `[[site.peer]]`: another box of the site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its `site.box`.
    pub name: String,
    /// Its viewer base URL, where viewers are redirected (`http://10.0.0.2:8080`).
    pub url: String,
    /// Its admin base URL, for readiness checks and peer fill (`http://10.0.0.2:8081`).
    pub admin: String,
    /// Its `site.weight`.
    #[serde(default = "default_weight")]
    pub weight: f64,
}

fn default_weight() -> f64 {
    1.0
}

impl SiteConfig {
    /// Checks what types alone cannot, naming the key at fault.
    pub(super) fn validate(&self) -> Result<(), SiteError> {
        if self.box_name.trim().is_empty() {
            return Err(SiteError::invalid(
                "site.box",
                "is empty: name this box, uniquely in its site",
            ));
        }
        if self.box_name.trim() != self.box_name {
            return Err(SiteError::invalid(
                "site.box",
                format!("{:?} has spaces around it", self.box_name),
            ));
        }
        if !(1..=MAX_COPIES).contains(&self.copies) {
            return Err(SiteError::invalid(
                "site.copies",
                format!("must be between 1 and {MAX_COPIES}"),
            ));
        }
        check_weight("site.weight", self.weight)?;
        if self.check_interval.0.is_zero() {
            return Err(SiteError::invalid("site.check_interval", "must be above 0"));
        }
        if self.check_timeout.0.is_zero() {
            return Err(SiteError::invalid("site.check_timeout", "must be above 0"));
        }
        if !self.peers.is_empty() && self.token_file.is_none() {
            return Err(SiteError::invalid(
                "site.token_file",
                "is needed when the site has peers: they fill from each other with it",
            ));
        }
        let mut names = HashSet::from([self.box_name.as_str()]);
        for (index, peer) in self.peers.iter().enumerate() {
            let key = |field: &str| format!("site.peer[{index}].{field}");
            if peer.name.trim().is_empty() {
                return Err(SiteError::invalid(key("name"), "is empty"));
            }
            if peer.name.trim() != peer.name {
                return Err(SiteError::invalid(
                    key("name"),
                    format!("{:?} has spaces around it", peer.name),
                ));
            }
            if peer.name == self.box_name {
                return Err(SiteError::invalid(
                    key("name"),
                    format!(
                        "{:?} is this box (site.box): list only the other boxes",
                        peer.name
                    ),
                ));
            }
            if !names.insert(peer.name.as_str()) {
                return Err(SiteError::invalid(
                    key("name"),
                    format!("{:?} is listed twice", peer.name),
                ));
            }
            check_base_url(&peer.url, &["http", "https"])
                .map_err(|why| SiteError::invalid(key("url"), format!("{:?} {why}", peer.url)))?;
            check_base_url(&peer.admin, &["http"]).map_err(|why| {
                SiteError::invalid(key("admin"), format!("{:?} {why}", peer.admin))
            })?;
            check_weight(&key("weight"), peer.weight)?;
            if let Some(other) = self.peers[..index]
                .iter()
                .find(|other| other.admin.trim_end_matches('/') == peer.admin.trim_end_matches('/'))
            {
                return Err(SiteError::invalid(
                    key("admin"),
                    format!("{:?} is also {}'s admin URL", peer.admin, other.name),
                ));
            }
        }
        Ok(())
    }
}

fn check_weight(key: &str, weight: f64) -> Result<(), SiteError> {
    if weight.is_finite() && weight > 0.0 {
        Ok(())
    } else {
        Err(SiteError::invalid(key, "must be a number above 0"))
    }
}

/// Whether `text` is a base URL with one of `schemes`, a host, and nothing after the
/// path (no query or fragment, which a path appended to it would land inside).
fn check_base_url(text: &str, schemes: &[&str]) -> Result<(), String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| "is not a URL (e.g. http://10.0.0.2:8080)".to_owned())?;
    let scheme = uri.scheme_str().unwrap_or("");
    if !schemes.contains(&scheme) {
        return Err(format!("must start with {}://", schemes.join(":// or ")));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    let authority = uri.authority().map_or("", |authority| authority.as_str());
    if authority.contains('@') {
        return Err("must not carry a user or password".to_owned());
    }
    // A port, when given, is a number from 1 to 65535 (the parser takes any text there).
    if let Some((_, port)) = authority
        .rsplit_once(':')
        .filter(|(_, port)| !port.ends_with(']'))
    {
        if !port.parse::<u16>().is_ok_and(|port| port > 0) {
            return Err(format!("has no valid port ({port:?})"));
        }
    }
    if uri.query().is_some() || text.contains('#') {
        return Err("must not have a query or fragment".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> SiteConfig {
        SiteConfig {
            box_name: "box-a".to_owned(),
            token_file: Some(PathBuf::from("/etc/tidecache/site.token")),
            peers: vec![PeerConfig {
                name: "box-b".to_owned(),
                url: "http://10.0.0.2:8080".to_owned(),
                admin: "http://10.0.0.2:8081".to_owned(),
                weight: 1.0,
            }],
            ..SiteConfig::default()
        }
    }

    fn key_of_error(site: &SiteConfig) -> String {
        match site.validate() {
            Err(SiteError { key, .. }) => key,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_valid_site_passes_and_each_mistake_names_its_key() {
        assert!(site().validate().is_ok());
        let second_peer = |site: &mut SiteConfig| {
            let mut other = site.peers[0].clone();
            other.name = "box-c".to_owned();
            site.peers.push(other);
        };
        type Mistake<'a> = &'a dyn Fn(&mut SiteConfig);
        let mistakes: [(&str, Mistake<'_>); 15] = [
            ("site.peer[0].name", &|site| {
                site.peers[0].name = "box-a".to_owned()
            }),
            ("site.peer[1].name", &|site| {
                site.peers.push(site.peers[0].clone())
            }),
            ("site.peer[0].url", &|site| {
                site.peers[0].url = "10.0.0.2:8080".to_owned()
            }),
            ("site.peer[0].admin", &|site| {
                site.peers[0].admin = "https://10.0.0.2:8081".to_owned()
            }),
            ("site.token_file", &|site| site.token_file = None),
            ("site.box", &|site| site.box_name = String::new()),
            ("site.peer[0].weight", &|site| site.peers[0].weight = 0.0),
            ("site.copies", &|site| site.copies = 0),
            ("site.peer[0].admin", &|site| {
                site.peers[0].admin = "http://10.0.0.2:notaport".to_owned()
            }),
            ("site.peer[0].admin", &|site| {
                site.peers[0].admin = "http://10.0.0.2:99999".to_owned()
            }),
            ("site.peer[0].admin", &|site| {
                site.peers[0].admin = "http://10.0.0.2:0".to_owned()
            }),
            ("site.peer[0].url", &|site| {
                site.peers[0].url = "http://user:pw@10.0.0.2".to_owned()
            }),
            ("site.peer[0].name", &|site| {
                site.peers[0].name = "box-b ".to_owned()
            }),
            ("site.peer[1].admin", &second_peer),
            ("site.box", &|site| site.box_name = " box-a".to_owned()),
        ];
        for (key, mistake) in mistakes {
            let mut wrong = site();
            mistake(&mut wrong);
            assert_eq!(key_of_error(&wrong), key, "{wrong:?}");
        }
        let mut ipv6 = site();
        ipv6.peers[0].admin = "http://[2001:db8::2]:8081".to_owned();
        ipv6.peers[0].url = "http://[2001:db8::2]".to_owned();
        assert!(ipv6.validate().is_ok());
    }
}
