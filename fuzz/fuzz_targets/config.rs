//! `compile(ConfigSource::File)`: any text as a configuration file, every problem collected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_gateway_policy::{ConfigSource, compile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = ConfigSource::File {
        name: "config.yaml".to_owned(),
        text: text.to_owned(),
    };
    let _ = compile(&source);
});
