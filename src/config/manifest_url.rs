//! `fill.manifest_url`: where a fill pulls its manifest from when it starts, if anywhere,
//! told apart once when the file is read.

use std::fmt;
use std::path::PathBuf;

/// Where the manifest is pulled from at the start of a fill.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum ManifestUrl {
    /// Nowhere: manifests are only pushed (`""` in the file).
    #[default]
    None,
    /// An `http://` or `https://` URL, fetched with a conditional GET.
    Http(String),
    /// A `file://` URL: this local file.
    File(PathBuf),
}

impl ManifestUrl {
    /// Tells the kinds apart, or says why the text is none of them.
    pub fn parse(text: &str) -> Result<ManifestUrl, String> {
        if text.is_empty() {
            Ok(ManifestUrl::None)
        } else if let Some(path) = text.strip_prefix("file://") {
            Ok(ManifestUrl::File(PathBuf::from(path)))
        } else if text.starts_with("http://") || text.starts_with("https://") {
            Ok(ManifestUrl::Http(text.to_owned()))
        } else {
            Err(format!("{text:?} must be an http, https or file URL"))
        }
    }

    /// The URL as it would be written in the file.
    pub fn to_url(&self) -> String {
        match self {
            ManifestUrl::None => String::new(),
            ManifestUrl::Http(url) => url.clone(),
            ManifestUrl::File(path) => format!("file://{}", path.display()),
        }
    }
}

impl fmt::Debug for ManifestUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_url(), f)
    }
}

string_setting!(ManifestUrl, ManifestUrl::to_url);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_parses_and_renders_back() {
        for text in ["", "https://origin.example/m.json", "file:///srv/m.json"] {
            assert_eq!(ManifestUrl::parse(text).unwrap().to_url(), text);
        }
        assert_eq!(
            ManifestUrl::parse("file:///srv/m.json").unwrap(),
            ManifestUrl::File(PathBuf::from("/srv/m.json"))
        );
        assert!(ManifestUrl::parse("ftp://x/m.json").is_err());
    }
}
