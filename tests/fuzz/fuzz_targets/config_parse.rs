//! The configuration parser: never panics; an accepted configuration renders to TOML that
//! parses back to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidecache::config::Config;

fuzz_target!(|text: &str| {
    if let Ok(config) = Config::parse(text) {
        let rendered = config.to_toml();
        let again = Config::parse(&rendered).expect("a rendered config parses");
        assert_eq!(again, config, "{rendered}");
    }
});
