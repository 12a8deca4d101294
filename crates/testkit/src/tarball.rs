//! Root filesystems for real clients: a POSIX tar archive holding one file of pseudo-random bytes,
//! which `docker import` and `podman import` turn into a one-layer image without the network.
//! (The OCI layouts of `oci.rs` hold blobs that are not tar files: fine for skopeo, which copies
//! blobs as they are, but a client with an image store unpacks every layer.)
//!
//! The file's bytes are incompressible, so the gzip layer a client pushes is a little larger than
//! the file: a test that wants an image over a limit makes the file larger than the limit, one
//! that wants it within makes it well below.

use std::path::Path;

use crate::random_bytes;

const BLOCK: usize = 512;

/// Writes to `tar_path` a tar archive with one regular file, `name` (mode 0644, owned by root,
/// mtime 0), of `size` pseudo-random bytes from `seed`. Returns the archive's length.
pub fn rootfs_tar(tar_path: &Path, name: &str, size: usize, seed: u64) -> u64 {
    let data = random_bytes(size, seed);
    let mut archive = Vec::with_capacity(BLOCK + size.next_multiple_of(BLOCK) + 2 * BLOCK);
    archive.extend_from_slice(&ustar_header(name, size));
    archive.extend_from_slice(&data);
    archive.resize(archive.len().next_multiple_of(BLOCK), 0);
    // Two zero blocks end the archive.
    archive.resize(archive.len() + 2 * BLOCK, 0);
    std::fs::write(tar_path, &archive)
        .unwrap_or_else(|e| panic!("writing {}: {e}", tar_path.display()));
    archive.len() as u64
}

/// Writes `size` pseudo-random bytes from `seed` to `path` (for `buildah add`).
pub fn random_file(path: &Path, size: usize, seed: u64) {
    std::fs::write(path, random_bytes(size, seed))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A ustar header block (POSIX.1-1988) for a regular file.
fn ustar_header(name: &str, size: usize) -> [u8; BLOCK] {
    assert!(
        name.len() < 100 && !name.is_empty(),
        "a ustar name field holds 1 to 99 bytes: {name:?}"
    );
    let mut header = [0u8; BLOCK];
    let mut put = |offset: usize, bytes: &[u8]| {
        header[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, name.as_bytes());
    put(100, b"0000644\0"); // mode
    put(108, b"0000000\0"); // uid
    put(116, b"0000000\0"); // gid
    put(124, format!("{size:011o}\0").as_bytes());
    put(136, b"00000000000\0"); // mtime
    put(148, b"        "); // checksum, counted as spaces while it is computed
    put(156, b"0"); // regular file
    put(257, b"ustar\0");
    put(263, b"00");
    put(265, b"root");
    put(297, b"root");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_is_whole_blocks_with_the_file_after_its_header() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rootfs.tar");
        let len = rootfs_tar(&path, "data.bin", 1000, 7);
        let bytes = std::fs::read(&path).expect("written");
        assert_eq!(len, bytes.len() as u64);
        assert_eq!(bytes.len(), BLOCK + 1024 + 2 * BLOCK);
        assert_eq!(
            &bytes[BLOCK..BLOCK + 1000],
            random_bytes(1000, 7).as_slice()
        );
        assert_eq!(&bytes[124..136], b"00000001750\0");
        // The checksum counts its own field as spaces.
        let mut counted = bytes[..BLOCK].to_vec();
        counted[148..156].copy_from_slice(b"        ");
        let sum: u32 = counted.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(&bytes[148..156], format!("{sum:06o}\0 ").as_bytes());
    }
}
