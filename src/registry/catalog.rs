//! The catalog, `GET /v2/_catalog`, one page at a time: the repositories `audit` walks.
//!
//! Pages are followed through their `Link` header with the tag list's own rule (same origin,
//! no credentials in the URL). Harbor answers the catalog to system administrators only; a robot
//! account gets 401 or 403 there.

use reqwest::{StatusCode, Url};
use tracing::debug;

use super::RegistryClient;
use super::http::read_body;
use super::links::{catalog_url, next_page};
use super::read::ReadError;

/// One catalog page of 1,000 names of 255 bytes is 260 KB; this leaves room for big pages.
const MAX_CATALOG_PAGE_BYTES: usize = 32 << 20;
/// The token cache's name for catalog reads: no repository is called that (names start with a
/// lowercase letter or digit), and the catalog's token scope (`registry:catalog:*`) comes from
/// the registry's challenge.
const CATALOG_KEY: &str = "_catalog";

/// One page of repository names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogPage {
    pub repositories: Vec<String>,
    /// The next page, from the `Link` header; `None` on the last page.
    pub next: Option<Url>,
}

#[derive(serde::Deserialize)]
struct Catalog {
    #[serde(default)]
    repositories: Option<Vec<String>>,
}

impl RegistryClient {
    /// The first catalog page: `{base}/v2/_catalog`, with `?n=` when `page_size` is set.
    pub fn catalog_start(&self, page_size: Option<u32>) -> Result<Url, ReadError> {
        Ok(catalog_url(&self.base_url, page_size)?)
    }

    /// Reads the catalog page at `url` (from [`catalog_start`](Self::catalog_start) or a
    /// previous page's `next`) within the registry deadline, token fetch included.
    pub async fn catalog_page(&self, url: &Url) -> Result<CatalogPage, ReadError> {
        tokio::time::timeout(self.timeout, self.read_catalog_page(url))
            .await
            .unwrap_or(Err(ReadError::Timeout(self.timeout)))
    }

    async fn read_catalog_page(&self, url: &Url) -> Result<CatalogPage, ReadError> {
        let mut credentials = self.credentials.current(false).await;
        let mut auth = self.initial_auth(CATALOG_KEY, &credentials);
        let response = self
            .send_get(
                CATALOG_KEY,
                url,
                None,
                &mut auth,
                &mut credentials,
                |status| {
                    debug!(status = status.as_u16(), "registry catalog page");
                },
            )
            .await?;
        let status = response.status();
        if status == StatusCode::FORBIDDEN {
            return Err(ReadError::Unauthorized {
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(ReadError::status(status.as_u16(), response.headers()));
        }
        let next = next_page(response.headers(), response.url(), &self.base_url)?;
        let body = read_body(response, MAX_CATALOG_PAGE_BYTES).await?;
        let catalog: Catalog = serde_json::from_slice(&body)
            .map_err(|e| ReadError::InvalidResponse(format!("not a catalog page: {e}")))?;
        Ok(CatalogPage {
            repositories: catalog.repositories.unwrap_or_default(),
            next,
        })
    }
}
