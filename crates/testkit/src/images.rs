//! Small images pushed with raw HTTP: one real layer each, for tests that count tags and sizes
//! without building layouts on disk.

use crate::http::RegistryClient;
use crate::oci::{OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};

/// Uploads a config and one layer of `layer_bytes` bytes to `repo` and returns an OCI image
/// manifest naming them, made distinct by `marker` (an annotation), so each is its own digest.
pub async fn one_layer_image(
    client: &RegistryClient,
    repo: &str,
    layer_bytes: usize,
    marker: &str,
) -> Vec<u8> {
    let config = client.upload_blob(repo, b"{}").await;
    let layer = client.upload_blob(repo, &vec![b'x'; layer_bytes]).await;
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{config}","size":2}},"layers":[{{"mediaType":"{OCI_LAYER_TAR}","digest":"{layer}","size":{layer_bytes}}}],"annotations":{{"m":"{marker}"}}}}"#
    )
    .into_bytes()
}
