//! A minimal blocking HTTP/1.1 client over one persistent TCP connection (TCP_NODELAY), so a
//! timed request costs one write and one read and nothing else: no pool, no runtime, no
//! allocations beyond the reply. The benchmark times requests with it; [`crate::raw_http`] sends
//! exact request bytes through it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::Layout;

/// Requests larger than this are written as head, then body; smaller ones in one `write`.
const ONE_WRITE_MAX: usize = 64 * 1024;
/// The default socket read and write timeout ([`Conn::with_io_timeout`] changes it).
const IO_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_HEADER_LINES: usize = 200;

/// A complete answer (a chunked body is decoded).
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Every header line, in order, name as sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A header value (name compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive connection to `addr`, reopened when the server closes it.
pub struct Conn {
    addr: SocketAddr,
    io_timeout: Duration,
    reader: Option<BufReader<TcpStream>>,
    /// Times a kept-alive connection had been closed by the server and was reopened.
    pub reconnects: u64,
}

impl Conn {
    /// Not connected yet: the first request (or [`Conn::warm`]) connects.
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            io_timeout: IO_TIMEOUT,
            reader: None,
            reconnects: 0,
        }
    }

    /// The same, with socket reads and writes bounded by `timeout` instead of 120 s.
    pub fn with_io_timeout(mut self, timeout: Duration) -> Conn {
        self.io_timeout = timeout;
        self
    }

    fn connect(&mut self) -> io::Result<()> {
        let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.io_timeout))?;
        stream.set_write_timeout(Some(self.io_timeout))?;
        self.reader = Some(BufReader::with_capacity(64 * 1024, stream));
        Ok(())
    }

    /// Opens the connection now, so that the first timed request does not pay for it.
    pub fn warm(&mut self) -> io::Result<()> {
        if self.reader.is_none() {
            self.connect()?;
        }
        Ok(())
    }

    /// `GET target`.
    pub fn get(&mut self, target: &str) -> io::Result<Reply> {
        self.request("GET", target, &[], &[])
    }

    /// Sends one request (with `Host`, and `Content-Length` when there is a body or the method
    /// has one) and reads the whole answer. A kept-alive connection found closed is reopened once
    /// (counted in `reconnects`).
    ///
    /// # Errors
    /// Connecting, writing or reading failed, or the answer is not HTTP/1.1.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Reply> {
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        if !body.is_empty() || matches!(method, "PUT" | "POST" | "PATCH") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        self.send_raw(method, head.as_bytes(), body)
    }

    /// Sends `head` (request line and headers, exactly as given, ending in an empty line) and
    /// `body`, and reads the answer; `method` says whether the answer has a body (`HEAD`). For
    /// spellings no URL library would send unchanged. Reopens a closed kept-alive connection
    /// once, as [`Conn::request`] does.
    ///
    /// # Errors
    /// Connecting, writing or reading failed, or the answer is not HTTP/1.1.
    pub fn send_raw(&mut self, method: &str, head: &[u8], body: &[u8]) -> io::Result<Reply> {
        let reused = self.reader.is_some();
        if !reused {
            self.connect()?;
        }
        match self.exchange(method, head, body) {
            Ok(reply) => Ok(reply),
            Err(e)
                if reused
                    && matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                    ) =>
            {
                self.reconnects += 1;
                self.connect()?;
                self.exchange(method, head, body)
            }
            Err(e) => Err(e),
        }
    }

    fn exchange(&mut self, method: &str, head: &[u8], body: &[u8]) -> io::Result<Reply> {
        let result = self.exchange_inner(method, head, body);
        match &result {
            Ok((_, keep)) if *keep => {}
            _ => self.reader = None,
        }
        result.map(|(reply, _)| reply)
    }

    fn exchange_inner(
        &mut self,
        method: &str,
        head: &[u8],
        body: &[u8],
    ) -> io::Result<(Reply, bool)> {
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| io::Error::other("not connected"))?;
        {
            let stream = reader.get_mut();
            if body.len() <= ONE_WRITE_MAX {
                let mut buf = head.to_vec();
                buf.extend_from_slice(body);
                stream.write_all(&buf)?;
            } else {
                stream.write_all(head)?;
                stream.write_all(body)?;
            }
        }

        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the status line",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut reply_headers = Vec::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the headers",
                ));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if reply_headers.len() >= MAX_HEADER_LINES {
                return Err(io::Error::other("too many header lines"));
            }
            if let Some((k, v)) = l.split_once(':') {
                reply_headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let find = |name: &str| {
            reply_headers
                .iter()
                .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut keep = !find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let no_body =
            method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
        let mut body_out = Vec::new();
        if no_body {
        } else if find("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            loop {
                line.clear();
                reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        line.clear();
                        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body_out.len();
                body_out.resize(start + size, 0);
                reader.read_exact(&mut body_out[start..])?;
                line.clear();
                reader.read_line(&mut line)?;
            }
        } else if let Some(len) = find("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| io::Error::other(format!("bad content-length {len:?}")))?;
            body_out.resize(len, 0);
            reader.read_exact(&mut body_out)?;
        } else {
            reader.read_to_end(&mut body_out)?;
            keep = false;
        }
        Ok((
            Reply {
                status,
                headers: reply_headers,
                body: body_out,
            },
            keep,
        ))
    }
}

/// The path and query of a `Location` (absolute or not), to send to the same server.
pub fn location_target(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => rest[i..].to_owned(),
            None => "/".to_owned(),
        },
        None => location.to_owned(),
    }
}

/// The distribution API over a [`Conn`], for the benchmark's timed loops (the tests use the async
/// [`crate::RegistryClient`]). Failures are messages naming the call and the answer.
impl Conn {
    /// Monolithic blob upload: `POST /v2/<repo>/blobs/uploads/`, then `PUT <location>&digest=`
    /// with the bytes. Returns when the registry answered `201`.
    ///
    /// # Errors
    /// A request failed or was not answered `202` / `201`.
    pub fn upload_blob(&mut self, repo: &str, bytes: &[u8], digest: &str) -> Result<(), String> {
        let started = self
            .request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[])
            .map_err(|e| format!("POST blob upload: {e}"))?;
        let started = answered(started, 202, "POST blob upload")?;
        let location = started
            .header("location")
            .ok_or("POST blob upload: no Location")?;
        let mut target = location_target(location);
        target.push(if target.contains('?') { '&' } else { '?' });
        target.push_str("digest=");
        target.push_str(digest);
        let put = self
            .request(
                "PUT",
                &target,
                &[("Content-Type", "application/octet-stream")],
                bytes,
            )
            .map_err(|e| format!("PUT blob: {e}"))?;
        answered(put, 201, "PUT blob").map(drop)
    }

    /// Uploads the config and layers of every image of `layout` into `repo`.
    ///
    /// # Errors
    /// As [`Conn::upload_blob`].
    pub fn upload_layout_blobs(&mut self, repo: &str, layout: &Layout) -> Result<(), String> {
        for image in &layout.images {
            for blob in std::iter::once(&image.config).chain(&image.layers) {
                self.upload_blob(repo, &layout.read_blob(&blob.digest), &blob.digest)?;
            }
        }
        Ok(())
    }

    /// `PUT /v2/<repo>/manifests/<reference>` of the layout's top manifest; returns the status.
    ///
    /// # Errors
    /// The request failed (any answer is returned as its status).
    pub fn put_layout_manifest(
        &mut self,
        repo: &str,
        reference: &str,
        layout: &Layout,
    ) -> Result<u16, String> {
        let reply = self
            .request(
                "PUT",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Content-Type", &layout.media_type)],
                &layout.manifest,
            )
            .map_err(|e| format!("PUT manifest {repo}:{reference}: {e}"))?;
        Ok(reply.status)
    }

    /// Every tag of `repo` (one unpaginated `GET /v2/<repo>/tags/list`).
    ///
    /// # Errors
    /// The request failed, was not answered `200`, or the answer is not a tag list.
    pub fn list_tags(&mut self, repo: &str) -> Result<Vec<String>, String> {
        let reply = self
            .get(&format!("/v2/{repo}/tags/list"))
            .map_err(|e| format!("GET tags/list: {e}"))?;
        let reply = answered(reply, 200, "GET tags/list")?;
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
}

/// `reply` if it is `status`, else an error naming `what` and the answer.
fn answered(reply: Reply, status: u16, what: &str) -> Result<Reply, String> {
    if reply.status == status {
        Ok(reply)
    } else {
        Err(format!("{what}: HTTP {} {}", reply.status, reply.text()))
    }
}
