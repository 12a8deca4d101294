//! A registry's answer to a tag-list page request: `Link` (next page, held to the registry's
//! origin), `WWW-Authenticate` (which challenge to answer) and the JSON page, as the registry
//! client reads them. The input is header lines, an empty line, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_gateway::registry::RegistryClient;

fuzz_target!(|data: &[u8]| {
    RegistryClient::fuzz_tag_list_page(data);
});
