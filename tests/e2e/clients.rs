//! Real clients with image stores of their own push through the real stack (distribution,
//! Envoy running `envoy/envoy.yaml`, the sidecar): `docker push` and `docker manifest push`
//! against a dockerd of the test's own (the kit's `Dockerd`), `podman push`,
//! `podman manifest push` and `buildah push` (the kit's `Podman` store). For each, a push within
//! the limits is stored, and each refusal prints the gateway's own reason to the user: what a
//! client shows on refusal is the product's promise, and only the real client can prove it.
//! docs/clients.md is the table of what each client shows, these tests its evidence.
//!
//! Images are made without the network: a tar archive of one file of incompressible bytes,
//! imported (`docker import`, `podman import`) or added (`buildah add`) as one layer. The clients
//! gzip it on push, so a layer is a little over its file's size: a file of 200 KiB makes an image
//! well within `max_image_size: 1MB`, one of 2 MiB an image well over it.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::{
    Dockerd, DockerdOptions, Podman, Stack, assert_success, output_text, random_file, rootfs_tar,
};

/// `limited/*`: 1MB (1048576 bytes) and 2 tags; everything else the roomy global limits, for
/// the children a docker manifest list is assembled from.
const CONFIG: &str = "\
max_image_size: 100MB
tag_count_limit: 100
rules:
  - path: ^limited/.*
    limit:
      max_image_size: 1MB
      tag_count_limit: 2
";

const KIB: usize = 1024;
/// A file that makes an image well within 1MB.
const SMALL: usize = 200 * KIB;
/// A file that makes an image well over 1MB.
const BIG: usize = 2 * 1024 * KIB;

/// The key parts of the gateway's size refusal for `limited/*` (the measured total differs by
/// client, since each gzips the layer itself).
const SIZE_REASON: &[&str] = &[
    "refused: the image's layers total",
    "over the limit of 1048576 bytes (1MB) set by rule 0 (path `^limited/.*`)",
    "Make the image smaller",
];
/// The key part of the gateway's schema 1 refusal.
const SCHEMA1_REASON: &str = "Docker schema 1 manifests carry no layer sizes and are not accepted; push the image as Docker schema 2 or OCI instead";

fn temp_dir() -> tempfile::TempDir {
    support::temp_dir("rg-e2e-clients-")
}

/// A root filesystem archive of one `size`-byte file, in `dir`.
fn rootfs(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    let path = dir.join(format!("{name}.tar"));
    rootfs_tar(&path, "data.bin", size, seed);
    path
}

/// The client failed, and what it printed holds every fragment.
fn assert_refused(output: &Output, what: &str, fragments: &[&str]) {
    let text = output_text(output);
    assert!(
        !output.status.success(),
        "{what}: expected a refusal, the client succeeded:\n{text}"
    );
    for fragment in fragments {
        assert!(
            text.contains(fragment),
            "{what}: the client's output lacks {fragment:?}:\n{text}"
        );
    }
}

/// docker (a dockerd of the test's own) or podman (a store of the test's own): the steps their
/// tests share.
#[derive(Clone, Copy)]
enum Client<'a> {
    Docker(&'a Dockerd),
    Podman(&'a Podman),
}

impl Client<'_> {
    fn name(self) -> &'static str {
        match self {
            Client::Docker(_) => "docker",
            Client::Podman(_) => "podman",
        }
    }

    /// Runs the client with `args`.
    async fn run(self, args: &[&str]) -> Output {
        match self {
            Client::Docker(docker) => docker.docker(args).await,
            Client::Podman(podman) => podman.podman(args).await,
        }
    }

    /// Imports a root filesystem of one `size`-byte file (in `dir`, named `name`) as `image`.
    async fn import(self, dir: &Path, name: &str, size: usize, seed: u64, image: &str) {
        let archive = rootfs(dir, name, size, seed);
        match self {
            Client::Docker(docker) => docker.import(&archive, image).await,
            Client::Podman(podman) => podman.import(&archive, image).await,
        }
    }

    /// [`Client::import`] as `<Envoy's host>/<path>`, which it returns.
    async fn import_for(
        self,
        stack: &Stack,
        (dir, name): (&Path, &str),
        size: usize,
        seed: u64,
        path: &str,
    ) -> String {
        let image = format!("{}/{path}", stack.envoy_host());
        self.import(dir, name, size, seed, &image).await;
        image
    }

    /// Pushes `image` to the plain-http registry it names.
    async fn push(self, image: &str) -> Output {
        match self {
            Client::Docker(_) => self.run(&["push", image]).await,
            Client::Podman(_) => self.run(&["push", "--tls-verify=false", image]).await,
        }
    }
}

/// `limited/app:big` (a file of [`BIG`] bytes, seeded `seed`) pushed by `client`: refused, the
/// output holding `first` and then the size reason, and nothing stored.
async fn assert_size_refusal(stack: &Stack, client: Client<'_>, seed: u64, first: &[&str]) {
    let dir = temp_dir();
    let image = client
        .import_for(stack, (dir.path(), "big"), BIG, seed, "limited/app:big")
        .await;

    let refused = client.push(&image).await;
    let mut expected = first.to_vec();
    expected.extend(SIZE_REASON);
    let what = format!("{} push over the size limit", client.name());
    assert_refused(&refused, &what, &expected);
    assert_tags(stack, "limited/app", &[]).await;
}

/// `limited/app` (2 tags at most): `client` pushes `v1` and `v2` of one image, and its push of
/// `v3` is refused with the gateway's tag-limit reason.
async fn assert_tag_limit_refusal(stack: &Stack, client: Client<'_>, seed: u64) {
    let name = client.name();
    let dir = temp_dir();
    let repo = format!("{}/limited/app", stack.envoy_host());
    let v1 = format!("{repo}:v1");
    client.import(dir.path(), "small", SMALL, seed, &v1).await;
    for tag in ["v2", "v3"] {
        let tagged = client.run(&["tag", &v1, &format!("{repo}:{tag}")]).await;
        assert_success(&tagged, &format!("{name} tag"));
    }
    for tag in ["v1", "v2"] {
        let pushed = client.push(&format!("{repo}:{tag}")).await;
        assert_success(&pushed, &format!("{name} push of {tag}"));
    }

    let refused = client.push(&format!("{repo}:v3")).await;
    assert_refused(
        &refused,
        &format!("{name} push of a third tag"),
        &[
            "denied: push to limited/app:v3 refused",
            "repository limited/app already has 2 tags and the limit set by rule 0 (path `^limited/.*`) is 2 tags, so the new tag v3 cannot be created",
        ],
    );
    assert_tags(stack, "limited/app", &["v1", "v2"]).await;
}

/// Two manifest lists pushed by `client` as `push_list(tag, second)` does, each of child `a`
/// and child `second`: `ok` (with `b`, within the limits) is stored; `bad` (with `big`) is
/// refused with `first` and the size reason, its oversized child refused before the list, so
/// only `ok` is tagged.
async fn assert_list_pushes(
    stack: &Stack,
    client: Client<'_>,
    first: &str,
    push_list: impl AsyncFn(&str, &str) -> Output,
) {
    let name = client.name();
    for (tag, second, refused) in [("ok", "b", false), ("bad", "big", true)] {
        let pushed = push_list(tag, second).await;
        if refused {
            let mut expected = vec![first, "denied: push to limited/multi@sha256:"];
            expected.extend(SIZE_REASON);
            let what = format!("{name} manifest push of a list with a big child");
            assert_refused(&pushed, &what, &expected);
        } else {
            let what = format!("{name} manifest push of a list within the limits");
            assert_success(&pushed, &what);
        }
    }
    assert_tags(stack, "limited/multi", &["ok"]).await;
}

/// The stack, a fresh podman store and a temp dir: what every podman and buildah test starts
/// with.
async fn podman_stack() -> (Stack, Podman, tempfile::TempDir) {
    (Stack::start(CONFIG).await, Podman::new(), temp_dir())
}

/// [`podman_stack`] with a small image (a file of [`SMALL`] bytes, seeded `seed`) imported as
/// `<Envoy's host>/<path>`, which it returns too.
async fn podman_stack_with_small_image(
    seed: u64,
    path: &str,
) -> (Stack, Podman, tempfile::TempDir, String) {
    let (stack, podman, dir) = podman_stack().await;
    let image = Client::Podman(&podman)
        .import_for(&stack, (dir.path(), "small"), SMALL, seed, path)
        .await;
    (stack, podman, dir, image)
}

/// The registry (asked directly) lists exactly `tags` for `repo`.
async fn assert_tags(stack: &Stack, repo: &str, tags: &[&str]) {
    assert_eq!(
        stack.registry_client().list_tags(repo).await,
        tags,
        "{repo}"
    );
}

/// The digest docker prints for a pushed tag (`<tag>: digest: sha256:… size: …`).
fn docker_pushed_digest(output: &Output) -> String {
    let text = output_text(output);
    text.split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in docker's output:\n{text}"))
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// docker (dockerd 20.10, the Debian docker.io of the machine)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_push_within_the_limits_is_stored() {
    let stack = Stack::start(CONFIG).await;
    let docker = Dockerd::start().await;
    // Plain http to Envoy works without `--insecure-registry` because of this default.
    assert!(
        docker
            .insecure_registries()
            .await
            .contains(&"127.0.0.0/8".to_owned()),
        "dockerd no longer treats loopback registries as insecure by default"
    );
    let dir = temp_dir();
    let image = Client::Docker(&docker)
        .import_for(&stack, (dir.path(), "small"), SMALL, 1, "limited/app:v1")
        .await;

    let pushed = docker.docker(&["push", image.as_str()]).await;
    assert_success(&pushed, "docker push within the limits");

    let registry = stack.registry_client();
    assert_eq!(registry.list_tags("limited/app").await, ["v1"]);
    let stored = registry.get_manifest("limited/app", "v1").await;
    assert_eq!(
        support::sha256_digest(&stored.body),
        docker_pushed_digest(&pushed)
    );
    assert_eq!(
        stored.header("content-type"),
        Some("application/vnd.docker.distribution.manifest.v2+json"),
        "dockerd 20.10 pushes Docker schema 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_push_over_the_size_limit_prints_our_reason() {
    let stack = Stack::start(CONFIG).await;
    let docker = Dockerd::start().await;
    let first = ["denied: push to limited/app:big refused"];
    assert_size_refusal(&stack, Client::Docker(&docker), 2, &first).await;
    // Without DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE (the last test) dockerd stops at our answer:
    // one decision, no schema 1 retry.
    let log = stack.gateway.log();
    assert_eq!(
        log.matches("reason=\"image_too_large\"").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("reason=\"schema1\""), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_push_of_a_tag_over_the_tag_limit_prints_our_reason() {
    let stack = Stack::start(CONFIG).await;
    let docker = Dockerd::start().await;
    assert_tag_limit_refusal(&stack, Client::Docker(&docker), 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_manifest_push_with_an_oversized_child_prints_our_reason() {
    let stack = Stack::start(CONFIG).await;
    let docker = Dockerd::start().await;
    let dir = temp_dir();
    let host = stack.envoy_host();
    // `docker manifest create` takes children that are already in a registry: pushed to a
    // repository under the global limits, then copied by digest into the list's repository,
    // where each is judged.
    let sources = [("a", SMALL, 4), ("b", SMALL, 5), ("big", BIG, 6)];
    for (tag, size, seed) in sources {
        let image = format!("{host}/wide/src:{tag}");
        docker
            .import(&rootfs(dir.path(), tag, size, seed), &image)
            .await;
        assert_success(
            &docker.docker(&["push", image.as_str()]).await,
            "docker push of a child",
        );
    }
    let names = |tag: &str, second: &str| {
        (
            format!("{host}/limited/multi:{tag}"),
            format!("{host}/wide/src:a"),
            format!("{host}/wide/src:{second}"),
        )
    };

    let push_list = async |tag: &str, second: &str| {
        let (list, first, second) = names(tag, second);
        let created = docker
            .docker(&["manifest", "create", "--insecure", &list, &first, &second])
            .await;
        assert_success(&created, "docker manifest create");
        // Both children are linux/amd64 as imported; a list names each platform once.
        let annotated = docker
            .docker(&["manifest", "annotate", "--arch", "arm64", &list, &second])
            .await;
        assert_success(&annotated, "docker manifest annotate");
        docker
            .docker(&["manifest", "push", "--insecure", &list])
            .await
    };
    let first = "failed to put manifest";
    assert_list_pushes(&stack, Client::Docker(&docker), first, push_list).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pushes_schema_1_only_as_a_fallback_its_daemon_is_told_to_make() {
    let stack = Stack::start(CONFIG).await;
    // dockerd 20.10 builds schema 1 only when the schema 2 PUT failed and this variable (made
    // for its own CI) is set; without it (every other test) it never pushes schema 1.
    let docker = Dockerd::start_with(DockerdOptions {
        env: vec![("DOCKER_ALLOW_SCHEMA1_PUSH_DONOTUSE".into(), "1".into())],
    })
    .await;
    let dir = temp_dir();
    let repo = format!("{}/limited/old", stack.envoy_host());
    docker
        .import(
            &rootfs(dir.path(), "small", SMALL, 7),
            &format!("{repo}:ok"),
        )
        .await;
    docker
        .import(&rootfs(dir.path(), "big", BIG, 8), &format!("{repo}:big"))
        .await;

    // Within the limits the schema 2 PUT is stored and no fallback happens.
    assert_success(
        &docker.docker(&["push", &format!("{repo}:ok")]).await,
        "docker push within the limits",
    );
    let stored = stack
        .registry_client()
        .get_manifest("limited/old", "ok")
        .await;
    assert_eq!(
        stored.header("content-type"),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );

    // Over the limit: our 403 makes dockerd retry as schema 1, which we refuse too, and that
    // second answer is the one the user sees; the size reason is only in the daemon's log.
    let refused = docker.docker(&["push", &format!("{repo}:big")]).await;
    assert_refused(
        &refused,
        "docker push over the size limit, schema 1 fallback on",
        &[
            "manifest invalid: push to limited/old:big refused",
            SCHEMA1_REASON,
        ],
    );
    assert!(
        !output_text(&refused).contains(SIZE_REASON[0]),
        "{}",
        output_text(&refused)
    );
    let daemon_log = docker.log();
    assert!(
        daemon_log.contains("falling back to schema1") && daemon_log.contains(SIZE_REASON[0]),
        "{daemon_log}"
    );
    let log = stack.gateway.log();
    assert!(log.contains("reason=\"image_too_large\""), "{log}");
    assert!(log.contains("reason=\"schema1\""), "{log}");
    assert_tags(&stack, "limited/old", &["ok"]).await;
}

// ---------------------------------------------------------------------------------------------
// podman (4.3, containers/image)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_push_within_the_limits_is_stored() {
    let (stack, podman, dir, image) = podman_stack_with_small_image(11, "limited/app:v1").await;
    let digest_file = dir.path().join("digest");
    let digest_arg = digest_file.display().to_string();
    let pushed = podman
        .podman(&[
            "push",
            "--tls-verify=false",
            "--digestfile",
            digest_arg.as_str(),
            image.as_str(),
        ])
        .await;
    assert_success(&pushed, "podman push within the limits");

    let registry = stack.registry_client();
    assert_eq!(registry.list_tags("limited/app").await, ["v1"]);
    let stored = registry.get_manifest("limited/app", "v1").await;
    let digest = std::fs::read_to_string(&digest_file).expect("podman wrote the digest");
    assert_eq!(support::sha256_digest(&stored.body), digest.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_push_over_the_size_limit_prints_our_reason() {
    let stack = Stack::start(CONFIG).await;
    let podman = Podman::new();
    let first = [
        "uploading manifest big to",
        "denied: push to limited/app:big refused",
    ];
    assert_size_refusal(&stack, Client::Podman(&podman), 12, &first).await;
    // DENIED is not "manifest rejected" for containers/image: no retry in another format.
    let log = stack.gateway.log();
    assert_eq!(log.matches("outcome=\"deny\"").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_push_of_a_tag_over_the_tag_limit_prints_our_reason() {
    let stack = Stack::start(CONFIG).await;
    let podman = Podman::new();
    assert_tag_limit_refusal(&stack, Client::Podman(&podman), 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_push_as_schema_1_prints_our_schema_1_answer() {
    let (stack, podman, _dir, image) = podman_stack_with_small_image(14, "limited/old:v1").await;

    // An explicit --format is the only one tried: our MANIFEST_INVALID ends the push, with our
    // text (containers/image falls back to another format only when it chose the format).
    let refused = podman
        .podman(&[
            "push",
            "--tls-verify=false",
            "--format",
            "v2s1",
            image.as_str(),
        ])
        .await;
    assert_refused(
        &refused,
        "podman push --format v2s1",
        &[
            "manifest invalid: push to limited/old:v1 refused",
            SCHEMA1_REASON,
        ],
    );
    assert_tags(&stack, "limited/old", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_manifest_push_with_an_oversized_child_prints_our_reason() {
    let (stack, podman, dir) = podman_stack().await;
    let host = stack.envoy_host();
    for (name, size, seed) in [("a", SMALL, 15), ("b", SMALL, 16), ("big", BIG, 17)] {
        podman
            .import(
                &rootfs(dir.path(), name, size, seed),
                &format!("localhost/src:{name}"),
            )
            .await;
    }

    let push_list = async |tag: &str, second: &str| {
        let list = format!("localhost/list:{tag}");
        assert_success(
            &podman.podman(&["manifest", "create", list.as_str()]).await,
            "podman manifest create",
        );
        for (arch, child) in [("amd64", "a"), ("arm64", second)] {
            let child = format!("containers-storage:localhost/src:{child}");
            let added = podman
                .podman(&["manifest", "add", "--arch", arch, &list, &child])
                .await;
            assert_success(&added, "podman manifest add");
        }
        let dest = format!("docker://{host}/limited/multi:{tag}");
        podman
            .podman(&[
                "manifest",
                "push",
                "--all",
                "--tls-verify=false",
                &list,
                &dest,
            ])
            .await
    };
    let first = "copying image 2/2 from manifest list";
    assert_list_pushes(&stack, Client::Podman(&podman), first, push_list).await;
}

// ---------------------------------------------------------------------------------------------
// buildah (1.28, containers/image)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildah_push_within_the_limits_passes_and_over_the_size_limit_prints_our_reason() {
    let (stack, store, dir) = podman_stack().await;
    let repo = format!("{}/limited/built", stack.envoy_host());
    for (tag, size, seed) in [("v1", SMALL, 21), ("big", BIG, 22)] {
        let file = dir.path().join(format!("{tag}.bin"));
        random_file(&file, size, seed);
        let from = store.buildah(&["from", "scratch"]).await;
        assert_success(&from, "buildah from scratch");
        let container = String::from_utf8_lossy(&from.stdout).trim().to_owned();
        let file = file.display().to_string();
        assert_success(
            &store
                .buildah(&["add", container.as_str(), file.as_str(), "/data.bin"])
                .await,
            "buildah add",
        );
        assert_success(
            &store
                .buildah(&["commit", "-q", container.as_str(), &format!("{repo}:{tag}")])
                .await,
            "buildah commit",
        );
        assert_success(
            &store.buildah(&["rm", container.as_str()]).await,
            "buildah rm",
        );
    }

    let pushed = store
        .buildah(&["push", "--tls-verify=false", &format!("{repo}:v1")])
        .await;
    assert_success(&pushed, "buildah push within the limits");
    let refused = store
        .buildah(&["push", "--tls-verify=false", &format!("{repo}:big")])
        .await;
    let mut expected = vec!["denied: push to limited/built:big refused"];
    expected.extend(SIZE_REASON);
    assert_refused(&refused, "buildah push over the size limit", &expected);
    assert_tags(&stack, "limited/built", &["v1"]).await;
}
