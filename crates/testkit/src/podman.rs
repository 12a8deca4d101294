//! podman and buildah (Debian's, built on containers/image like skopeo) as real clients, with an
//! image store of the test's own: `--root`, `--runroot` and the temp files of both under one temp
//! dir, `vfs` storage (plain directories, nothing from the kernel), and their configuration
//! files there too, so neither the host's `/etc/containers` registries and storage settings nor
//! another test's images are ever seen. Nothing here runs a container, so there is no daemon,
//! no conmon and nothing left to stop.
//!
//! The test registries speak plain http on loopback: every push passes `--tls-verify=false`
//! (containers/image has no loopback exception, unlike dockerd). The registries file names no
//! search registry, so a short name can never be resolved against a public registry.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

use crate::bounded::{assert_success, run_bounded};
use crate::dockerd::{CLIENT_TIMEOUT, client_bin};

/// podman: `$PODMAN_BIN`, else `/usr/bin/podman`, else `podman` on `PATH`.
pub fn podman_bin() -> PathBuf {
    client_bin("PODMAN_BIN", "podman", "/usr/bin/podman")
}

/// buildah: `$BUILDAH_BIN`, else `/usr/bin/buildah`, else `buildah` on `PATH`.
pub fn buildah_bin() -> PathBuf {
    client_bin("BUILDAH_BIN", "buildah", "/usr/bin/buildah")
}

/// One image store shared by podman and buildah (what `podman import` stores, `buildah push`
/// can push). Removed with its temp dir on drop.
pub struct Podman {
    root: PathBuf,
    runroot: PathBuf,
    tmp: PathBuf,
    dir: TempDir,
}

impl Podman {
    /// A fresh, empty store and its configuration files.
    pub fn new() -> Podman {
        let dir = crate::process::temp_dir("rg-podman-");
        let root = dir.path().join("root");
        let runroot = dir.path().join("run");
        let tmp = dir.path().join("tmp");
        for d in [&root, &runroot, &tmp] {
            std::fs::create_dir_all(d).expect("temp dir is writable");
        }
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("temp dir is writable");
        };
        write(
            "registries.conf",
            "unqualified-search-registries = []\n".to_owned(),
        );
        write(
            "storage.conf",
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                root.display(),
                runroot.display()
            ),
        );
        // No credentials: the test registries are open, and the host's are never sent.
        write("auth.json", "{\"auths\":{}}\n".to_owned());
        // No journald events and no systemd cgroups: neither exists on a test machine.
        write(
            "containers.conf",
            "[engine]\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\n".to_owned(),
        );
        Podman {
            root,
            runroot,
            tmp,
            dir,
        }
    }

    /// The temp dir holding the store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `podman <store flags> <args>`, killed after 60 s (the test then fails).
    pub async fn podman<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut cmd = self.command(podman_bin());
        cmd.arg("--cgroup-manager")
            .arg("cgroupfs")
            .arg("--events-backend")
            .arg("none")
            .arg("--tmpdir")
            .arg(&self.tmp)
            .args(args);
        run_bounded(cmd, CLIENT_TIMEOUT, &describe("podman", args)).await
    }

    /// `buildah <store flags> <args>`, killed after 60 s (the test then fails).
    pub async fn buildah<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut cmd = self.command(buildah_bin());
        cmd.args(args);
        run_bounded(cmd, CLIENT_TIMEOUT, &describe("buildah", args)).await
    }

    /// `podman import <tar> <reference>`: a one-layer image from a root filesystem archive (see
    /// `rootfs_tar`). Panics if podman refuses.
    pub async fn import(&self, tar: &Path, reference: &str) {
        let tar = tar.display().to_string();
        let out = self.podman(&["import", tar.as_str(), reference]).await;
        assert_success(&out, &format!("podman import {tar} {reference}"));
    }

    fn command(&self, bin: PathBuf) -> Command {
        let mut cmd = Command::new(bin);
        let conf = |name: &str| self.dir.path().join(name);
        cmd.env("CONTAINERS_REGISTRIES_CONF", conf("registries.conf"))
            .env("CONTAINERS_STORAGE_CONF", conf("storage.conf"))
            .env("CONTAINERS_CONF", conf("containers.conf"))
            .env("REGISTRY_AUTH_FILE", conf("auth.json"))
            // Layers are staged in TMPDIR (default /var/tmp).
            .env("TMPDIR", &self.tmp)
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .arg("--storage-driver")
            .arg("vfs");
        cmd
    }
}

impl Default for Podman {
    fn default() -> Podman {
        Podman::new()
    }
}

fn describe<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    format!("{program} {}", shown.join(" "))
}
