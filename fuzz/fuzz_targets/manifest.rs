//! `measure(content_type, body)`: the input's first line is the `Content-Type`, the rest the
//! body, so the seeds read as what a client sends and the fuzzer mutates both.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_gateway_policy::manifest::measure;

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let content_type = std::str::from_utf8(content_type).ok();
    let _ = measure(content_type, body);
});
