//! Filling a registry fast with raw API calls: one image's blobs uploaded once, mounted into
//! other repositories (`POST …/blobs/uploads/?mount=&from=`, no bytes sent), and the same
//! manifest PUT under many repositories and tags, concurrently but bounded.

use tokio::task::JoinSet;

use crate::{Layout, RegistryClient};

/// Mounts every blob (configs and layers) of `layout` from repository `from` into `repo`; the
/// blobs must already be in `from`. Panics unless the registry answers `201` to each.
pub async fn mount_layout_blobs(client: &RegistryClient, repo: &str, from: &str, layout: &Layout) {
    for image in &layout.images {
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            let target = format!(
                "/v2/{repo}/blobs/uploads/?mount={}&from={from}",
                blob.digest
            );
            let reply = client.request("POST", &target, &[], None).await;
            assert_eq!(
                reply.status,
                201,
                "mounting {} from {from} into {repo}: {}",
                blob.digest,
                reply.text()
            );
        }
    }
}

/// Mounts `layout`'s blobs from `from` into each of `repos`, at most `concurrency` at a time.
pub async fn mount_layout_blobs_many(
    client: &RegistryClient,
    repos: &[String],
    from: &str,
    layout: &Layout,
    concurrency: usize,
) {
    let mut running = JoinSet::new();
    for repo in repos {
        while running.len() >= concurrency.max(1) {
            finish_one(&mut running).await;
        }
        let (client, repo, from, layout) = (
            client.clone(),
            repo.clone(),
            from.to_owned(),
            layout.clone(),
        );
        running.spawn(async move { mount_layout_blobs(&client, &repo, &from, &layout).await });
    }
    while !running.is_empty() {
        finish_one(&mut running).await;
    }
}

/// PUTs the same manifest (`media_type`, `body`) to every `(repository, reference)` of
/// `targets`, at most `concurrency` requests at a time. The blobs it names must be in each
/// repository. Panics unless every PUT is answered `201`.
pub async fn put_manifest_many(
    client: &RegistryClient,
    targets: impl IntoIterator<Item = (String, String)>,
    media_type: &str,
    body: &[u8],
    concurrency: usize,
) {
    let body: std::sync::Arc<[u8]> = body.into();
    let mut running = JoinSet::new();
    for (repo, reference) in targets {
        while running.len() >= concurrency.max(1) {
            finish_one(&mut running).await;
        }
        let (client, media_type, body) = (client.clone(), media_type.to_owned(), body.clone());
        running.spawn(async move {
            let reply = client
                .put_manifest(&repo, &reference, &media_type, &body)
                .await;
            assert_eq!(
                reply.status,
                201,
                "PUT {repo}:{reference}: {}",
                reply.text()
            );
        });
    }
    while !running.is_empty() {
        finish_one(&mut running).await;
    }
}

async fn finish_one(running: &mut JoinSet<()>) {
    if let Some(Err(e)) = running.join_next().await {
        std::panic::resume_unwind(e.into_panic());
    }
}
