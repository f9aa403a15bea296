//! Configuration values sent as HTTP header values (`http.cache_control`,
//! `http.cors_allow_origin`, `schedule.fallback_url`), checked and converted once when the
//! file is read.

use std::fmt;

use http::HeaderValue;

/// Text that can be sent as an HTTP header value, kept both as written and as the value.
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderText {
    text: String,
    value: HeaderValue,
}

impl HeaderText {
    /// The text as a header value, or why it cannot be one.
    pub fn parse(text: &str) -> Result<HeaderText, String> {
        let value = HeaderValue::from_str(text)
            .map_err(|_| format!("{text:?} cannot be sent as an HTTP header"))?;
        Ok(HeaderText {
            text: text.to_owned(),
            value,
        })
    }

    /// A value known to be valid (the built-in defaults).
    pub fn from_static(text: &'static str) -> HeaderText {
        HeaderText {
            text: text.to_owned(),
            value: HeaderValue::from_static(text),
        }
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it is empty (for the keys where empty means "off").
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The header value.
    pub fn value(&self) -> &HeaderValue {
        &self.value
    }
}

impl Default for HeaderText {
    fn default() -> Self {
        HeaderText::from_static("")
    }
}

impl fmt::Debug for HeaderText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

string_setting!(HeaderText, |text| text.as_str().to_owned());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_refuses_what_cannot_be_sent() {
        assert!(HeaderText::parse("public, max-age=60").is_ok());
        let err = HeaderText::parse("a\nb").unwrap_err();
        assert!(err.contains("cannot be sent"), "{err}");
    }
}
