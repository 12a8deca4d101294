//! Manifests by tag or digest, `GET /v2/<name>/manifests/<reference>`, for `audit` to measure
//! exactly as a push of the same bytes would be measured.

use std::sync::LazyLock;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tracing::debug;

use super::RegistryClient;
use super::http::read_body;
use super::links::repository_url;
use super::read::ReadError;
use crate::policy::{MAX_MANIFEST_BYTES, MediaType};

/// A manifest as the registry stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedManifest {
    /// The response's `Content-Type`: what the registry says the body is, which decides how it
    /// is measured, as it does for a push.
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// `Accept` for manifest reads: the OCI and Docker schema 2 types, images and indexes. Without
/// the OCI types distribution 2.8 answers 404 for an OCI manifest; without the Docker ones it
/// would rewrite a schema 2 manifest as schema 1.
pub fn manifest_accept() -> &'static HeaderValue {
    static ACCEPT: LazyLock<HeaderValue> = LazyLock::new(|| {
        let types = [
            MediaType::OciManifest,
            MediaType::OciIndex,
            MediaType::DockerManifest,
            MediaType::DockerManifestList,
        ]
        .map(MediaType::as_str)
        .join(", ");
        HeaderValue::from_str(&types).expect("media type names are header text")
    });
    &ACCEPT
}

impl RegistryClient {
    /// The manifest `repository:reference` (a tag or a digest) within the registry deadline;
    /// `Ok(None)` when the registry does not have it (404: deleted since it was listed).
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<FetchedManifest>, ReadError> {
        tokio::time::timeout(self.timeout, self.read_manifest(repository, reference))
            .await
            .unwrap_or(Err(ReadError::Timeout(self.timeout)))
    }

    async fn read_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<FetchedManifest>, ReadError> {
        let url = repository_url(&self.base_url, repository, &["manifests", reference])?;
        let mut credentials = self.credentials.current(false).await;
        let mut auth = self.initial_auth(repository, &credentials);
        let response = self
            .send_get(
                repository,
                &url,
                Some(manifest_accept()),
                &mut auth,
                &mut credentials,
                |status| {
                    debug!(
                        repository,
                        reference,
                        status = status.as_u16(),
                        "registry manifest"
                    );
                },
            )
            .await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status == StatusCode::FORBIDDEN {
            return Err(ReadError::Unauthorized {
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(ReadError::status(status.as_u16(), response.headers()));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_body(response, MAX_MANIFEST_BYTES).await?;
        Ok(Some(FetchedManifest { content_type, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_names_the_four_measurable_types() {
        let accept = manifest_accept().to_str().expect("ascii");
        for t in [
            MediaType::OciManifest,
            MediaType::OciIndex,
            MediaType::DockerManifest,
            MediaType::DockerManifestList,
        ] {
            assert!(accept.contains(t.as_str()), "{accept}");
        }
        assert!(
            !accept.contains("distribution.manifest.v1"),
            "no schema 1: {accept}"
        );
    }
}
