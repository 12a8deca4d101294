//! The registry client against canned-response HTTP servers: raw HTTP/1.1 on a tokio listener at
//! 127.0.0.1:0, one request per connection (`connection: close`), every request recorded.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry_gateway::check::{TagError, TagSource};
use registry_gateway::registry::{Credentials, RegistryClient, RegistryConfig};
use reqwest::Url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Every test's client deadline, so that a broken test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
struct Request {
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn authorization(&self) -> Option<&str> {
        self.header("authorization")
    }

    /// `http://<host>`, as the client addressed this server.
    fn origin(&self) -> String {
        format!("http://{}", self.header("host").expect("a Host header"))
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    fn tags(tags: &[&str]) -> Self {
        Self::json(
            200,
            serde_json::json!({ "name": "app", "tags": tags }).to_string(),
        )
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn unauthorized(challenge: impl Into<String>) -> Self {
        Self::json(
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
        .header("www-authenticate", challenge)
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move { serve(stream, &*handler, &recorded).await });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// Accepts connections and never answers.
    async fn silent() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Self {
            addr,
            requests: Arc::default(),
            task,
        }
    }

    fn url(&self) -> Url {
        Url::parse(&format!("http://{}/", self.addr)).expect("server URL")
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("request log").clone()
    }

    fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path() == path).count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, handler: &Handler, recorded: &Mutex<Vec<Request>>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
        if !buffer[0].is_ascii_uppercase() {
            // Not HTTP/1.1 (a TLS ClientHello): hang up, as a plain-text server would.
            return;
        }
        assert!(buffer.len() < 64 * 1024, "request head too large");
    }
    let head = String::from_utf8_lossy(&buffer).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let target = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let request = Request { target, headers };
    recorded.lock().expect("request log").push(request.clone());
    let reply = handler(&request);
    let mut response = format!(
        "HTTP/1.1 {} Canned\r\ncontent-length: {}\r\nconnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&reply.body);
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn config(base_url: Url, credentials: Credentials) -> RegistryConfig {
    RegistryConfig {
        base_url,
        credentials,
        timeout: DEADLINE,
        insecure: true,
        // The fake registries here listen on plain-http loopback.
        plain_http_credentials: true,
        token_realms: Vec::new(),
        page_size: None,
    }
}

fn client(server: &Server, credentials: Credentials) -> RegistryClient {
    RegistryClient::new(config(server.url(), credentials)).expect("client")
}

fn user(username: &str, password: &str) -> Credentials {
    Credentials::Static {
        username: username.into(),
        password: password.into(),
    }
}

/// The `Authorization` value for Basic credentials, spelled out: base64 of `user:password`.
fn basic(username: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{username}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for group in input.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A registry with Basic auth: the tag `v1` to a client whose `authorization` header `accepts`
/// takes, a Basic challenge for `realm` to any other.
async fn basic_registry(
    realm: &str,
    accepts: impl Fn(Option<&str>) -> bool + Send + Sync + 'static,
) -> Server {
    let challenge = format!(r#"Basic realm="{realm}""#);
    Server::start(move |r| {
        if accepts(r.authorization()) {
            Reply::tags(&["v1"])
        } else {
            Reply::unauthorized(challenge.clone())
        }
    })
    .await
}

fn write_credentials(dir: &Path, username: &str, password: &str) {
    std::fs::write(dir.join("username"), username).expect("write username");
    std::fs::write(dir.join("password"), password).expect("write password");
}

/// A mounted Secret's directory holding `username` and `password`, and credentials read from it.
fn credentials_dir(username: &str, password: &str) -> (tempfile::TempDir, Credentials) {
    let dir = tempfile::tempdir().expect("temp dir");
    write_credentials(dir.path(), username, password);
    let credentials = Credentials::Directory(dir.path().to_owned());
    (dir, credentials)
}

#[tokio::test]
async fn a_single_page_lists_every_tag_without_asking_for_a_page_size() {
    let server = Server::start(|_| Reply::tags(&["1.0", "latest"])).await;

    let tags = client(&server, Credentials::None).list_tags("app").await;

    assert_eq!(tags, Ok(vec!["1.0".to_owned(), "latest".to_owned()]));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].target, "/v2/app/tags/list");
    assert_eq!(requests[0].authorization(), None);
}

#[tokio::test]
async fn relative_links_are_followed_over_three_pages() {
    let server = Server::start(|r| match r.query() {
        // distribution's form: an absolute path.
        "n=2" => Reply::tags(&["a", "b"])
            .header("link", r#"</v2/team/app/tags/list?last=b&n=2>; rel="next""#),
        // A path relative to the request URL.
        "last=b&n=2" => Reply::tags(&["c", "d"]).header("link", "<list?last=d&n=2>; rel=next"),
        "last=d&n=2" => Reply::tags(&["e"]),
        other => panic!("unexpected query {other:?}"),
    })
    .await;
    let client = RegistryClient::new(RegistryConfig {
        page_size: Some(2),
        ..config(server.url(), Credentials::None)
    })
    .expect("client");

    let tags = client.list_tags("team/app").await;

    assert_eq!(
        tags,
        Ok(["a", "b", "c", "d", "e"].map(String::from).to_vec())
    );
    let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/v2/team/app/tags/list?n=2",
            "/v2/team/app/tags/list?last=b&n=2",
            "/v2/team/app/tags/list?last=d&n=2",
        ]
    );
}

#[tokio::test]
async fn a_link_to_another_origin_is_refused_without_following_it() {
    let elsewhere = Server::start(|_| Reply::tags(&["stolen"])).await;
    let next = format!("<{}v2/app/tags/list?last=b>; rel=\"next\"", elsewhere.url());
    let server =
        Server::start(move |_| Reply::tags(&["a", "b"]).header("link", next.clone())).await;

    let tags = client(&server, user("u", "p")).list_tags("app").await;

    assert!(
        matches!(tags, Err(TagError::InvalidResponse(_))),
        "{tags:?}"
    );
    assert!(elsewhere.requests().is_empty());
}

#[tokio::test]
async fn an_unknown_repository_has_no_tags() {
    let server = Server::start(|_| {
        Reply::json(404, r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#)
    })
    .await;

    assert_eq!(
        client(&server, Credentials::None)
            .list_tags("new/repo")
            .await,
        Ok(vec![])
    );
}

#[tokio::test]
async fn null_tags_mean_an_empty_repository() {
    let server = Server::start(|_| Reply::json(200, r#"{"name":"app","tags":null}"#)).await;

    assert_eq!(
        client(&server, Credentials::None).list_tags("app").await,
        Ok(vec![])
    );
}

#[tokio::test]
async fn a_body_that_is_not_a_tag_list_is_an_invalid_response() {
    let server = Server::start(|_| Reply::json(200, "<html>login</html>")).await;

    let tags = client(&server, Credentials::None).list_tags("app").await;

    assert!(
        matches!(tags, Err(TagError::InvalidResponse(_))),
        "{tags:?}"
    );
}

#[tokio::test]
async fn a_basic_challenge_is_answered_and_basic_is_then_sent_up_front() {
    let expected = basic("robot$ci", "s3cret");
    let server = basic_registry("Registry Realm", move |a| a == Some(expected.as_str())).await;
    let client = client(&server, user("robot$ci", "s3cret"));

    assert_eq!(client.list_tags("app").await, Ok(vec!["v1".to_owned()]));
    assert_eq!(client.list_tags("app").await, Ok(vec!["v1".to_owned()]));

    let sent: Vec<Option<String>> = server
        .requests()
        .iter()
        .map(|r| r.authorization().map(str::to_owned))
        .collect();
    let expected = Some(basic("robot$ci", "s3cret"));
    assert_eq!(
        sent,
        [None, expected.clone(), expected],
        "challenge, answer, then up front"
    );
}

/// A token issuer and a registry on one server, as distribution with token auth or Harbor's
/// `/service/token` behave. The scope holds a comma, as a multi-action scope does.
async fn token_registry(field: &'static str) -> Server {
    Server::start(move |r| match r.path() {
        "/token" => {
            if r.authorization() != Some(basic("alice", "pw").as_str()) {
                return Reply::json(401, r#"{"details":"invalid credentials"}"#);
            }
            assert_eq!(
                r.query(),
                "service=registry.test&scope=repository%3Ateam%2Fapp%3Apull%2Cpush",
                "service and scope are passed on from the challenge"
            );
            Reply::json(200, serde_json::json!({ field: "tok-1", "expires_in": 300 }).to_string())
        }
        _ if r.authorization() == Some("Bearer tok-1") => Reply::tags(&["v1", "v2"]),
        _ => Reply::unauthorized(format!(
            r#"Bearer realm="{}/token",service="registry.test",scope="repository:team/app:pull,push""#,
            r.origin()
        )),
    })
    .await
}

async fn bearer_flow_then_reuse(field: &'static str) {
    let server = token_registry(field).await;
    let client = client(&server, user("alice", "pw"));
    let tags = Ok(vec!["v1".to_owned(), "v2".to_owned()]);

    assert_eq!(client.list_tags("team/app").await, tags);
    assert_eq!(client.list_tags("team/app").await, tags);

    assert_eq!(
        server.count("/token"),
        1,
        "the token is cached until shortly before expiry"
    );
    assert_eq!(
        server.count("/v2/team/app/tags/list"),
        3,
        "challenge and retry, then the cached token up front"
    );
}

#[tokio::test]
async fn a_bearer_challenge_is_answered_with_a_token_field_and_the_token_is_reused() {
    bearer_flow_then_reuse("token").await;
}

#[tokio::test]
async fn a_bearer_challenge_is_answered_with_an_access_token_field_and_the_token_is_reused() {
    bearer_flow_then_reuse("access_token").await;
}

#[tokio::test]
async fn wrong_credentials_are_unauthorized_for_basic_and_for_token_registries() {
    let expected = basic("alice", "pw");
    let basic_registry = basic_registry("r", move |a| a == Some(expected.as_str())).await;
    let token_registry = token_registry("token").await;

    for server in [&basic_registry, &token_registry] {
        let tags = client(server, user("alice", "wrong"))
            .list_tags("team/app")
            .await;

        assert_eq!(tags, Err(TagError::Unauthorized { status: 401 }));
        assert!(server.requests().len() <= 3, "{:?}", server.requests());
    }
    assert_eq!(
        token_registry.count("/v2/team/app/tags/list"),
        1,
        "no retry without a token"
    );
}

#[tokio::test]
async fn a_token_the_registry_rejects_is_retried_once_then_unauthorized() {
    let server = Server::start(|r| match r.path() {
        "/token" => Reply::json(200, r#"{"token":"useless"}"#),
        _ => Reply::unauthorized(format!(
            r#"Bearer realm="{}/token",service="s",scope="repository:app:pull",error="insufficient_scope""#,
            r.origin()
        )),
    })
    .await;

    let tags = client(&server, Credentials::None).list_tags("app").await;

    assert_eq!(tags, Err(TagError::Unauthorized { status: 401 }));
    assert_eq!(server.count("/v2/app/tags/list"), 2);
    assert_eq!(server.count("/token"), 1);
    assert_eq!(
        server.requests()[1].authorization(),
        None,
        "anonymous token request"
    );
}

#[tokio::test]
async fn forbidden_is_unauthorized() {
    let server =
        Server::start(|_| Reply::json(403, r#"{"errors":[{"code":"DENIED","message":"no"}]}"#))
            .await;

    let tags = client(&server, user("u", "p")).list_tags("app").await;

    assert_eq!(tags, Err(TagError::Unauthorized { status: 403 }));
}

#[tokio::test]
async fn a_server_error_is_reported_with_its_status() {
    let server = Server::start(|_| Reply::json(500, r#"{"errors":[{"code":"UNKNOWN"}]}"#)).await;

    let tags = client(&server, Credentials::None).list_tags("app").await;

    assert_eq!(tags, Err(TagError::Status { status: 500 }));
}

#[tokio::test]
async fn a_registry_that_never_answers_times_out_at_the_deadline() {
    let server = Server::silent().await;
    let deadline = Duration::from_millis(300);
    let client = RegistryClient::new(RegistryConfig {
        timeout: deadline,
        ..config(server.url(), Credentials::None)
    })
    .expect("client");

    let started = std::time::Instant::now();
    let tags = client.list_tags("app").await;
    let elapsed = started.elapsed();

    assert_eq!(tags, Err(TagError::Timeout(deadline)));
    assert!(elapsed >= deadline, "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn an_unreachable_registry_is_a_transport_error_that_names_no_credentials() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("local addr").port()
    };
    let url = Url::parse(&format!("http://127.0.0.1:{port}/")).expect("url");
    let client = RegistryClient::new(config(url, user("alice", "hunter2"))).expect("client");

    let tags = client.list_tags("app").await;

    let Err(TagError::Transport(message)) = tags else {
        panic!("expected a transport error, got {tags:?}");
    };
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(
        !message.contains("hunter2") && !message.contains("alice"),
        "{message}"
    );
}

#[tokio::test]
async fn rotated_credentials_in_the_directory_apply_to_the_next_call() {
    let accepted = Arc::new(Mutex::new(basic("alice", "one")));
    let current = accepted.clone();
    let server = basic_registry("r", move |a| {
        a == Some(current.lock().expect("accepted").as_str())
    })
    .await;
    let (dir, credentials) = credentials_dir("alice\n", "one\n");
    let client = client(&server, credentials);
    assert_eq!(client.list_tags("app").await, Ok(vec!["v1".to_owned()]));

    // The old password is revoked at once: the 401 makes the client re-read the directory
    // without waiting for the once-a-second check.
    write_credentials(dir.path(), "bob", "two");
    *accepted.lock().expect("accepted") = basic("bob", "two");

    assert_eq!(client.list_tags("app").await, Ok(vec!["v1".to_owned()]));
    let last = server.requests().pop().expect("a request");
    assert_eq!(last.authorization(), Some(basic("bob", "two").as_str()));
}

#[tokio::test]
async fn rotated_credentials_are_picked_up_without_a_401_once_their_files_change() {
    let accepted = [basic("alice", "one"), basic("bob", "two")];
    let server = basic_registry("r", move |a| {
        accepted.iter().any(|ok| a == Some(ok.as_str()))
    })
    .await;
    let (dir, credentials) = credentials_dir("alice", "one");
    let client = client(&server, credentials);
    assert_eq!(client.list_tags("app").await, Ok(vec!["v1".to_owned()]));

    write_credentials(dir.path(), "bob", "two");
    // The directory is checked at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = server.requests().len();
    assert_eq!(client.list_tags("app").await, Ok(vec!["v1".to_owned()]));

    let requests = server.requests();
    assert_eq!(requests.len(), before + 1, "no challenge round trip");
    assert_eq!(
        requests[before].authorization(),
        Some(basic("bob", "two").as_str())
    );
}

/// Plain http with no credentials of the gateway's needs no flag; the gateway's credentials go
/// over plain http only when the operator allows it, `insecure` (TLS verification) or not.
#[tokio::test]
async fn credentials_cross_plain_http_only_when_allowed() {
    let server = Server::start(|r| match r.authorization() {
        Some(_) => Reply::tags(&["v1"]),
        None => Reply::unauthorized(r#"Basic realm="r""#),
    })
    .await;
    let strict = |credentials| RegistryConfig {
        insecure: true,
        plain_http_credentials: false,
        ..config(server.url(), credentials)
    };

    let anonymous = RegistryClient::new(strict(Credentials::None)).expect("anonymous over http");
    assert!(matches!(
        anonymous.list_tags("app").await,
        Err(TagError::Unauthorized { .. })
    ));
    let refused = RegistryClient::new(strict(user("u", "p")));
    assert!(refused.is_err_and(|e| e.to_string().contains("clear text")));

    // A mounted Secret that gains a user name after start-up is held to the same rule.
    let (dir, credentials) = credentials_dir("", "");
    let client = RegistryClient::new(strict(credentials)).expect("anonymous at start");
    write_credentials(dir.path(), "u", "p");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got = client.list_tags("app").await;
    assert!(
        matches!(got, Err(TagError::Transport(ref m)) if m.contains("clear text")),
        "{got:?}"
    );

    let allowed = RegistryClient::new(RegistryConfig {
        plain_http_credentials: true,
        ..strict(user("u", "p"))
    })
    .expect("allowed");
    assert_eq!(allowed.list_tags("app").await, Ok(vec!["v1".to_owned()]));
}

/// A challenge cannot send the gateway's password to another origin: realms are pinned to the
/// registry's own origin unless listed.
#[tokio::test]
async fn token_realms_are_pinned_to_the_registry_origin_unless_listed() {
    let issuer = Server::start(|_| Reply::json(200, r#"{"token":"t"}"#)).await;
    let issuer_realm = format!("{}/token", issuer.url().as_str().trim_end_matches('/'));
    let realm = issuer_realm.clone();
    let server = Server::start(move |r| match r.authorization() {
        Some("Bearer t") => Reply::tags(&["v1"]),
        _ => Reply::unauthorized(format!(r#"Bearer realm="{realm}",service="s""#)),
    })
    .await;

    let pinned = client(&server, user("u", "p"));
    let got = pinned.list_tags("app").await;
    assert!(
        matches!(got, Err(TagError::InvalidResponse(ref m)) if m.contains("not the registry's own origin")),
        "{got:?}"
    );
    assert!(
        issuer.requests().is_empty(),
        "the foreign realm was never asked"
    );

    let listed = RegistryClient::new(RegistryConfig {
        token_realms: vec![Url::parse(&issuer_realm).expect("realm")],
        ..config(server.url(), user("u", "p"))
    })
    .expect("client");
    assert_eq!(listed.list_tags("app").await, Ok(vec!["v1".to_owned()]));
}

/// The client check sends exactly the client's header, once, and reads the registry's verdict.
#[tokio::test]
async fn the_client_check_sends_the_clients_own_credentials() {
    let server = Server::start(|r| match (r.path(), r.authorization()) {
        ("/v2/new/tags/list", Some("Basic good")) => Reply::json(404, r#"{"errors":[]}"#),
        (_, Some("Basic good")) => Reply::tags(&["v1"]),
        (_, Some("Basic forbidden")) => Reply::json(403, r#"{"errors":[]}"#),
        (_, Some("Basic broken")) => Reply::json(500, r#"{"errors":[]}"#),
        _ => Reply::unauthorized(r#"Basic realm="r""#),
    })
    .await;
    let client = client(&server, user("gateway", "secret"));
    for (authorization, repository, want) in [
        (Some("Basic good"), "app", Ok(true)),
        (Some("Basic good"), "new", Ok(true)),
        (Some("Basic bad"), "app", Ok(false)),
        (None, "app", Ok(false)),
        (Some("Basic forbidden"), "app", Ok(false)),
        (Some("bad\nvalue"), "app", Ok(false)),
        (
            Some("Basic broken"),
            "app",
            Err(TagError::Status { status: 500 }),
        ),
    ] {
        assert_eq!(
            client.client_may_read(repository, authorization).await,
            want,
            "{authorization:?} {repository}"
        );
    }
}

#[tokio::test]
async fn nested_repository_names_keep_their_slashes_in_every_request_path() {
    let server = Server::start(|r| match r.path() {
        "/token" => Reply::json(200, r#"{"access_token":"t"}"#),
        "/v2/team/app/web/tags/list" if r.authorization() == Some("Bearer t") => {
            if r.query().is_empty() {
                Reply::tags(&["a"]).header("link", "</v2/team/app/web/tags/list?last=a>; rel=next")
            } else {
                Reply::tags(&["b"])
            }
        }
        _ => Reply::unauthorized(format!(
            r#"Bearer realm="{}/token",service="s""#,
            r.origin()
        )),
    })
    .await;

    let tags = client(&server, Credentials::None)
        .list_tags("team/app/web")
        .await;

    assert_eq!(tags, Ok(vec!["a".to_owned(), "b".to_owned()]));
    let requests = server.requests();
    assert!(requests.len() >= 4, "{requests:?}");
    for request in &requests {
        assert!(
            !request.path().to_ascii_uppercase().contains("%2F"),
            "{}",
            request.target
        );
    }
    let token = requests
        .iter()
        .find(|r| r.path() == "/token")
        .expect("a token request");
    assert_eq!(
        token.query(),
        "service=s&scope=repository%3Ateam%2Fapp%2Fweb%3Apull",
        "without a scope in the challenge, pull on the repository is asked for"
    );
}

#[tokio::test]
async fn an_https_registry_that_does_not_speak_tls_is_a_transport_error() {
    let server = Server::start(|_| Reply::tags(&["v1"])).await;
    let url = Url::parse(&format!("https://{}/", server.addr)).expect("url");
    for insecure in [false, true] {
        let client = RegistryClient::new(RegistryConfig {
            insecure,
            ..config(url.clone(), Credentials::None)
        })
        .expect("client");

        let tags = client.list_tags("app").await;

        assert!(matches!(tags, Err(TagError::Transport(_))), "{tags:?}");
    }
}
