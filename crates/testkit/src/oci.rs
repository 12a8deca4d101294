//! OCI image layouts built on disk without Docker, and skopeo to push them.
//!
//! Layer blobs are deterministic pseudo-random bytes of exactly the requested sizes, with media
//! type `application/vnd.oci.image.layer.v1.tar` (uncompressed, so the config's `diff_ids` are the
//! layer digests and the image is valid). They are not real tar files; no registry or client
//! looks inside a layer when copying.
//!
//! skopeo gzips uncompressed layers on their way to a registry unless told otherwise, which
//! changes sizes and digests; [`skopeo_copy`] therefore passes `--preserve-digests`, so the
//! manifest the registry (and the gateway) sees is byte for byte [`Layout::manifest`].

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{sha256_digest, skopeo_bin};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// How long one skopeo run may take before it is killed and the test fails.
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);

/// Platforms given to the children of [`oci_index_layout`], in order (then repeated).
const PLATFORMS: &[(&str, &str, Option<&str>)] = &[
    ("linux", "amd64", None),
    ("linux", "arm64", None),
    ("linux", "arm", Some("v7")),
    ("linux", "ppc64le", None),
    ("linux", "s390x", None),
    ("linux", "riscv64", None),
    ("linux", "386", None),
    ("linux", "mips64le", None),
];

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// One image manifest in a layout, with its blobs.
#[derive(Clone, Debug)]
pub struct OciImage {
    /// Always [`OCI_MANIFEST`].
    pub media_type: String,
    /// The exact manifest bytes (what is PUT and hashed).
    pub manifest: Vec<u8>,
    /// `sha256:` of `manifest`.
    pub digest: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// `(os, architecture, variant)`.
    pub platform: (String, String, Option<String>),
}

impl OciImage {
    /// Σ `layers[].size`: the image size as the gateway measures it.
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`) whose
/// `index.json` names one top manifest: an image manifest, or an image index of several images.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
    /// [`OCI_MANIFEST`] or [`OCI_INDEX`].
    pub media_type: String,
    /// The exact bytes of the top manifest.
    pub manifest: Vec<u8>,
    /// `sha256:` of `manifest`: what a pull of the pushed tag must return.
    pub digest: String,
    /// The image (single-image layout) or the index's children, in index order.
    pub images: Vec<OciImage>,
}

impl Layout {
    /// Whether the top manifest is an index.
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX
    }

    /// `oci:<dir>`, the skopeo source reference.
    pub fn skopeo_ref(&self) -> String {
        format!("oci:{}", self.dir.display())
    }

    /// Where a blob of this layout is stored.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        self.dir.join("blobs").join("sha256").join(hex)
    }

    /// A blob's bytes.
    pub fn read_blob(&self, digest: &str) -> Vec<u8> {
        let path = self.blob_path(digest);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }
}

/// Writes a single-image OCI layout into `dir` (created if missing): one layer per entry of
/// `layer_sizes`, each exactly that many bytes, contents determined by `seed` (same seed and sizes
/// → same digests; different seeds → different blobs), and a small valid image config.
pub fn oci_image_layout(dir: &Path, layer_sizes: &[u64], seed: u64) -> Layout {
    init_layout_dir(dir);
    let image = write_image(dir, layer_sizes, seed, PLATFORMS[0]);
    write_index_json(dir, OCI_MANIFEST, &image.digest, image.manifest.len());
    Layout {
        dir: dir.to_owned(),
        media_type: image.media_type.clone(),
        manifest: image.manifest.clone(),
        digest: image.digest.clone(),
        images: vec![image],
    }
}

/// Writes a multi-arch OCI layout into `dir`: one image per entry of `images` (its layer sizes),
/// with platforms `linux/amd64`, `linux/arm64`, `linux/arm/v7`, `linux/ppc64le`, … in that order,
/// and an image index over them as the top manifest. Push it with [`skopeo_copy_all`].
pub fn oci_index_layout(dir: &Path, images: &[&[u64]]) -> Layout {
    oci_index_layout_seeded(dir, images, 0)
}

/// [`oci_index_layout`] with a seed, for two indexes with the same sizes but different content.
pub fn oci_index_layout_seeded(dir: &Path, images: &[&[u64]], seed: u64) -> Layout {
    init_layout_dir(dir);
    let children: Vec<OciImage> = images
        .iter()
        .enumerate()
        .map(|(i, sizes)| {
            let child_seed = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(i as u64 + 1);
            write_image(dir, sizes, child_seed, PLATFORMS[i % PLATFORMS.len()])
        })
        .collect();
    let manifests: Vec<serde_json::Value> = children
        .iter()
        .map(|child| {
            let (os, arch, variant) = &child.platform;
            let mut platform = json!({ "architecture": arch, "os": os });
            if let Some(variant) = variant {
                platform["variant"] = json!(variant);
            }
            json!({
                "mediaType": child.media_type,
                "digest": child.digest,
                "size": child.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let manifest = serde_json::to_vec(&index).expect("JSON value serialises");
    let digest = write_blob_bytes(dir, &manifest);
    write_index_json(dir, OCI_INDEX, &digest, manifest.len());
    Layout {
        dir: dir.to_owned(),
        media_type: OCI_INDEX.to_owned(),
        manifest,
        digest,
        images: children,
    }
}

fn init_layout_dir(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs").join("sha256")).expect("layout dir is writable");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("layout dir is writable");
}

/// `index.json` with one entry, tagged `latest` so both `oci:<dir>` and `oci:<dir>:latest` work.
fn write_index_json(dir: &Path, media_type: &str, digest: &str, size: usize) {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    });
    let bytes = serde_json::to_vec(&index).expect("JSON value serialises");
    std::fs::write(dir.join("index.json"), bytes).expect("layout dir is writable");
}

fn write_image(
    dir: &Path,
    layer_sizes: &[u64],
    seed: u64,
    (os, arch, variant): (&str, &str, Option<&str>),
) -> OciImage {
    let layers: Vec<Descriptor> = layer_sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| Descriptor {
            media_type: OCI_LAYER_TAR.to_owned(),
            digest: write_random_blob(dir, size, mix(seed, i as u64)),
            size,
        })
        .collect();
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let mut config = json!({
        "architecture": arch,
        "os": os,
        "config": { "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().enumerate().map(|(i, l)| json!({
            "created_by": format!("registry-gateway test layer {i} ({} bytes, seed {seed})", l.size)
        })).collect::<Vec<_>>(),
    });
    if let Some(variant) = variant {
        config["variant"] = json!(variant);
    }
    let config_bytes = serde_json::to_vec(&config).expect("JSON value serialises");
    let config = Descriptor {
        media_type: OCI_CONFIG.to_owned(),
        digest: write_blob_bytes(dir, &config_bytes),
        size: config_bytes.len() as u64,
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor_json(&config),
        "layers": layers.iter().map(descriptor_json).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).expect("JSON value serialises");
    let digest = write_blob_bytes(dir, &manifest);
    OciImage {
        media_type: OCI_MANIFEST.to_owned(),
        manifest,
        digest,
        config,
        layers,
        platform: (os.to_owned(), arch.to_owned(), variant.map(str::to_owned)),
    }
}

fn descriptor_json(d: &Descriptor) -> serde_json::Value {
    json!({ "mediaType": d.media_type, "digest": d.digest, "size": d.size })
}

fn write_blob_bytes(dir: &Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let hex = &digest["sha256:".len()..];
    std::fs::write(dir.join("blobs").join("sha256").join(hex), bytes)
        .expect("layout dir is writable");
    digest
}

/// Streams `size` pseudo-random bytes (SplitMix64 from `seed`) into a blob, hashing on the way,
/// so large layers cost no memory.
fn write_random_blob(dir: &Path, size: u64, seed: u64) -> String {
    let blobs = dir.join("blobs").join("sha256");
    let tmp = blobs.join(format!(".tmp-{seed:016x}-{size}"));
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp).expect("writable"));
    let mut hasher = Sha256::new();
    let mut state = seed;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).expect("chunk fits usize");
        for word in chunk[..n].chunks_mut(8) {
            let bytes = splitmix64(&mut state).to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        hasher.update(&chunk[..n]);
        out.write_all(&chunk[..n]).expect("writable");
        left -= n as u64;
    }
    out.flush().expect("writable");
    drop(out);
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::rename(&tmp, blobs.join(&hex)).expect("rename within the layout");
    format!("sha256:{hex}")
}

/// `size` deterministic pseudo-random bytes (SplitMix64 from `seed`, the generator of the layout
/// layers): incompressible, and different seeds give different bytes. For blobs kept in memory.
pub fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = vec![0u8; size];
    for word in out.chunks_mut(8) {
        let bytes = splitmix64(&mut state).to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
    out
}

fn mix(seed: u64, i: u64) -> u64 {
    let mut state = seed ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03);
    splitmix64(&mut state)
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `skopeo copy --dest-tls-verify=false --preserve-digests oci:<layout_dir> docker://<dest_ref>`
/// plus `extra_args` (e.g. `["--dest-creds", "user:pass"]`), killed after 120 s (the test then
/// fails). `dest_ref` is `127.0.0.1:<port>/<name>:<tag>` (a `docker://` prefix is added if
/// missing). The outcome is in the returned `Output`: a refusal shows in `stderr`.
pub async fn skopeo_copy(layout_dir: &Path, dest_ref: &str, extra_args: &[&str]) -> Output {
    let mut args = copy_args(layout_dir, dest_ref);
    args.splice(1..1, extra_args.iter().map(|a| (*a).to_owned()));
    skopeo(&args).await
}

/// [`skopeo_copy`] with `--all`: every image of an index, children by digest, then the index to
/// the tag (containers/image's order).
pub async fn skopeo_copy_all(layout_dir: &Path, dest_ref: &str, extra_args: &[&str]) -> Output {
    let mut args = copy_args(layout_dir, dest_ref);
    args.insert(1, "--all".to_owned());
    args.splice(2..2, extra_args.iter().map(|a| (*a).to_owned()));
    skopeo(&args).await
}

/// `skopeo inspect --raw --tls-verify=false docker://<image_ref>` plus `extra_args` (e.g.
/// `["--creds", "user:pass"]`): `stdout` is the manifest exactly as stored, so
/// `sha256_digest(&output.stdout)` is the pulled-back digest.
pub async fn skopeo_inspect_raw(image_ref: &str, extra_args: &[&str]) -> Output {
    let mut args = vec![
        "--insecure-policy".to_owned(),
        "inspect".to_owned(),
        "--raw".to_owned(),
        "--tls-verify=false".to_owned(),
    ];
    args.extend(extra_args.iter().map(|a| (*a).to_owned()));
    args.push(docker_ref(image_ref));
    skopeo(&args).await
}

/// `copy` arguments; extra arguments are spliced in at index 1 (after `copy`).
fn copy_args(layout_dir: &Path, dest_ref: &str) -> Vec<String> {
    vec![
        "copy".to_owned(),
        // Test registries speak plain HTTP (skopeo tries HTTPS first, then falls back).
        "--dest-tls-verify=false".to_owned(),
        "--preserve-digests".to_owned(),
        format!("oci:{}", layout_dir.display()),
        docker_ref(dest_ref),
    ]
}

fn docker_ref(reference: &str) -> String {
    if reference.starts_with("docker://") {
        reference.to_owned()
    } else {
        format!("docker://{reference}")
    }
}

/// Runs `skopeo --insecure-policy <args>` (e.g. a copy with `--format v2s2`, which cannot be
/// combined with the `--preserve-digests` of [`skopeo_copy`]), killed after 120 s (the test then
/// fails).
pub async fn skopeo<S: AsRef<str>>(args: &[S]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let bin = skopeo_bin();
    let mut cmd = Command::new(&bin);
    // No signature policy applies to a local test copy, so none is read
    // (/etc/containers/policy.json). A global flag: it goes before the subcommand.
    if args.first().map(String::as_str) != Some("--insecure-policy") {
        cmd.arg("--insecure-policy");
    }
    cmd.args(&args);
    let what = format!("skopeo {}", args.join(" "));
    crate::bounded::run_bounded(cmd, SKOPEO_TIMEOUT, &what).await
}
