//! Blobs, manifests and OCI layouts made without Docker, and raw distribution API calls.

use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::http::{Conn, location_target};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// `sha256:<hex>`.
pub(crate) fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `size` deterministic pseudo-random bytes (SplitMix64 from `seed`): incompressible, and
/// different seeds give different blobs.
pub(crate) fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; size];
    let mut state = seed ^ 0xA076_1D64_78BD_642F;
    for word in out.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
    }
    out
}

/// A content descriptor.
#[derive(Clone, Debug)]
pub(crate) struct Desc {
    pub(crate) media_type: &'static str,
    pub(crate) digest: String,
    pub(crate) size: usize,
}

/// An image: config, layers and the manifest over them, all bytes in memory.
pub(crate) struct Image {
    pub(crate) config: (Desc, Vec<u8>),
    pub(crate) layers: Vec<(Desc, Vec<u8>)>,
    pub(crate) manifest: Vec<u8>,
    pub(crate) manifest_digest: String,
}

/// An image of `layers` layers of `layer_size` random bytes each, content from `seed`.
pub(crate) fn image(layers: usize, layer_size: usize, seed: u64) -> Image {
    let layers: Vec<(Desc, Vec<u8>)> = (0..layers)
        .map(|i| {
            let bytes = random_bytes(layer_size, seed.wrapping_mul(1000).wrapping_add(i as u64));
            let d = Desc {
                media_type: OCI_LAYER_TAR,
                digest: digest(&bytes),
                size: bytes.len(),
            };
            (d, bytes)
        })
        .collect();
    let diff_ids: Vec<&str> = layers.iter().map(|(d, _)| d.digest.as_str()).collect();
    let config_bytes = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [{ "created_by": format!("registry-gateway bench, seed {seed}") }],
    }))
    .expect("JSON value serialises");
    let config = Desc {
        media_type: OCI_CONFIG,
        digest: digest(&config_bytes),
        size: config_bytes.len(),
    };
    let desc = |d: &Desc| json!({ "mediaType": d.media_type, "digest": d.digest, "size": d.size });
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(&config),
        "layers": layers.iter().map(|(d, _)| desc(d)).collect::<Vec<_>>(),
    }))
    .expect("JSON value serialises");
    let manifest_digest = digest(&manifest);
    Image {
        config: (config, config_bytes),
        layers,
        manifest,
        manifest_digest,
    }
}

/// Monolithic blob upload: `POST /v2/<repo>/blobs/uploads/`, then `PUT <location>&digest=` with
/// the bytes. Returns when the registry answered `201`.
pub(crate) fn upload_blob(
    conn: &mut Conn,
    repo: &str,
    bytes: &[u8],
    digest: &str,
) -> Result<(), String> {
    let started = conn
        .request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[])
        .map_err(|e| format!("POST blob upload: {e}"))?;
    if started.status != 202 {
        return Err(format!(
            "POST blob upload: HTTP {} {}",
            started.status,
            started.text()
        ));
    }
    let location = started
        .header("location")
        .ok_or("POST blob upload: no Location")?;
    let mut target = location_target(location);
    target.push(if target.contains('?') { '&' } else { '?' });
    target.push_str("digest=");
    target.push_str(digest);
    let put = conn
        .request(
            "PUT",
            &target,
            &[("Content-Type", "application/octet-stream")],
            bytes,
        )
        .map_err(|e| format!("PUT blob: {e}"))?;
    if put.status != 201 {
        return Err(format!("PUT blob: HTTP {} {}", put.status, put.text()));
    }
    Ok(())
}

/// Uploads the config and layers of `image` into `repo`.
pub(crate) fn upload_image_blobs(conn: &mut Conn, repo: &str, image: &Image) -> Result<(), String> {
    upload_blob(conn, repo, &image.config.1, &image.config.0.digest)?;
    for (d, bytes) in &image.layers {
        upload_blob(conn, repo, bytes, &d.digest)?;
    }
    Ok(())
}

/// `PUT /v2/<repo>/manifests/<reference>`; returns the status.
pub(crate) fn put_manifest(
    conn: &mut Conn,
    repo: &str,
    reference: &str,
    manifest: &[u8],
) -> Result<u16, String> {
    let reply = conn
        .request(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", OCI_MANIFEST)],
            manifest,
        )
        .map_err(|e| format!("PUT manifest {repo}:{reference}: {e}"))?;
    Ok(reply.status)
}

/// Every tag of `repo` (one unpaginated `GET /v2/<repo>/tags/list`).
pub(crate) fn list_tags(conn: &mut Conn, repo: &str) -> Result<Vec<String>, String> {
    let reply = conn
        .get(&format!("/v2/{repo}/tags/list"))
        .map_err(|e| format!("GET tags/list: {e}"))?;
    if reply.status != 200 {
        return Err(format!(
            "GET tags/list: HTTP {} {}",
            reply.status,
            reply.text()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&reply.body).map_err(|e| format!("tags/list JSON: {e}"))?;
    Ok(v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Writes `image` as an OCI image layout in `dir` (for `skopeo copy oci:<dir>`).
pub(crate) fn write_layout(dir: &Path, image: &Image) -> Result<(), String> {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| format!("{}: {e}", blobs.display()))?;
    let write = |digest: &str, bytes: &[u8]| {
        let path = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&image.config.0.digest, &image.config.1)?;
    for (d, bytes) in &image.layers {
        write(&d.digest, bytes)?;
    }
    write(&image.manifest_digest, &image.manifest)?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    }))
    .expect("JSON value serialises");
    std::fs::write(dir.join("index.json"), index).map_err(|e| format!("index.json: {e}"))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| format!("oci-layout: {e}"))
}
