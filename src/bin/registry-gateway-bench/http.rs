//! A minimal blocking HTTP/1.1 client over one persistent TCP connection (TCP_NODELAY), so a
//! timed request costs one write and one read and nothing else: no pool, no runtime, no
//! allocations beyond the reply.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Requests larger than this are written as head, then body; smaller ones in one `write`.
const ONE_WRITE_MAX: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_HEADER_LINES: usize = 200;

/// A complete answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// A header value (name compared without case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive connection to `addr`, reopened when the server closes it.
pub(crate) struct Conn {
    addr: SocketAddr,
    reader: Option<BufReader<TcpStream>>,
    /// Times a kept-alive connection had been closed by the server and was reopened.
    pub(crate) reconnects: u64,
}

impl Conn {
    pub(crate) fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            reader: None,
            reconnects: 0,
        }
    }

    fn connect(&mut self) -> io::Result<()> {
        let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        self.reader = Some(BufReader::with_capacity(64 * 1024, stream));
        Ok(())
    }

    /// Opens the connection now, so that the first timed request does not pay for it.
    pub(crate) fn warm(&mut self) -> io::Result<()> {
        if self.reader.is_none() {
            self.connect()?;
        }
        Ok(())
    }

    pub(crate) fn get(&mut self, target: &str) -> io::Result<Reply> {
        self.request("GET", target, &[], &[])
    }

    /// Sends one request and reads the whole answer. A kept-alive connection found closed is
    /// reopened once (counted in `reconnects`).
    pub(crate) fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Reply> {
        let reused = self.reader.is_some();
        if !reused {
            self.connect()?;
        }
        match self.exchange(method, target, headers, body) {
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
                self.exchange(method, target, headers, body)
            }
            Err(e) => Err(e),
        }
    }

    fn exchange(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Reply> {
        let result = self.exchange_inner(method, target, headers, body);
        match &result {
            Ok((_, keep)) if *keep => {}
            _ => self.reader = None,
        }
        result.map(|(reply, _)| reply)
    }

    fn exchange_inner(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<(Reply, bool)> {
        let addr = self.addr;
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| io::Error::other("not connected"))?;
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n");
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
        {
            let stream = reader.get_mut();
            if body.len() <= ONE_WRITE_MAX {
                let mut buf = head.into_bytes();
                buf.extend_from_slice(body);
                stream.write_all(&buf)?;
            } else {
                stream.write_all(head.as_bytes())?;
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

/// The path and query of a `Location` (absolute or not).
pub(crate) fn location_target(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => rest[i..].to_owned(),
            None => "/".to_owned(),
        },
        None => location.to_owned(),
    }
}
