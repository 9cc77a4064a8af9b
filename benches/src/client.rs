//! A minimal HTTP/1.1 client for load generation: thousands of SSE connections and a
//! keep-alive publisher, with as little overhead per connection as possible. SSE parsing is
//! the workspace's one parser (`resumable_sse_core::codec::Parser`).

use std::io;
use std::time::Duration;

use resumable_sse_core::codec::{Item, Parser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An `http://host:port/path?query` URL, split.
#[derive(Clone, Debug)]
pub struct Url {
    /// `host:port`.
    pub authority: String,
    /// Path and query.
    pub path: String,
}

impl Url {
    /// Parses a plain `http://` URL.
    ///
    /// # Errors
    ///
    /// When it is not `http://authority/path`.
    pub fn parse(url: &str) -> Result<Url, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Ok(Url {
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A parsed response head.
struct Head {
    status: u16,
    chunked: bool,
    length: Option<usize>,
    session: Option<String>,
    rest: Vec<u8>,
}

/// Reads a response head and what followed it in the same reads.
async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| invalid("bad status line"))?;
            let mut chunked = false;
            let mut length = None;
            let mut session = None;
            for line in lines {
                if let Some((name, value)) = line.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "transfer-encoding" => chunked = value.contains("chunked"),
                        "content-length" => length = value.trim().parse().ok(),
                        "x-sse-session" => session = Some(value.trim().to_owned()),
                        _ => {}
                    }
                }
            }
            return Ok(Head {
                status,
                chunked,
                length,
                session,
                rest: buf[end + 4..].to_vec(),
            });
        }
        if buf.len() > 64 * 1024 {
            return Err(invalid("response head too large"));
        }
    }
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Debug, Default)]
struct Dechunker {
    line: Vec<u8>,
    left: usize,
    crlf: u8,
}

impl Dechunker {
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        while !input.is_empty() {
            if self.left > 0 {
                let n = self.left.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.left -= n;
                input = &input[n..];
                if self.left == 0 {
                    self.crlf = 2;
                }
            } else if self.crlf > 0 {
                self.crlf -= 1;
                input = &input[1..];
            } else {
                let b = input[0];
                input = &input[1..];
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&self.line);
                    let size = text.trim().split(';').next().unwrap_or("");
                    self.left =
                        usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
                    self.line.clear();
                    if self.left == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "last chunk"));
                    }
                } else {
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }
}

/// One SSE response being read.
#[derive(Debug)]
pub struct SseConnection {
    stream: TcpStream,
    /// The HTTP status.
    pub status: u16,
    /// The session token the server returned (`x-sse-session`), to send back on reconnect as a
    /// well-behaved non-browser client does.
    pub session: Option<String>,
    chunked: Option<Dechunker>,
    parser: Parser,
    leftover: Vec<u8>,
    read_buf: Vec<u8>,
    body: Vec<u8>,
}

impl SseConnection {
    /// Opens `GET url` with `Accept: text/event-stream` and, if given, `Last-Event-ID` and the
    /// session token.
    ///
    /// # Errors
    ///
    /// Connection and protocol errors.
    pub async fn open(
        url: &Url,
        last_event_id: Option<&str>,
        session: Option<&str>,
    ) -> io::Result<SseConnection> {
        let mut stream = TcpStream::connect(&url.authority).await?;
        stream.set_nodelay(true)?;
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
            url.path, url.authority
        );
        if let Some(id) = last_event_id {
            request.push_str("Last-Event-ID: ");
            request.push_str(id);
            request.push_str("\r\n");
        }
        if let Some(token) = session {
            request.push_str("x-sse-session: ");
            request.push_str(token);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let head = read_head(&mut stream).await?;
        Ok(SseConnection {
            stream,
            status: head.status,
            session: head.session,
            chunked: head.chunked.then(Dechunker::default),
            parser: Parser::new(),
            leftover: head.rest,
            read_buf: Vec::new(),
            body: Vec::new(),
        })
    }

    /// Reads until at least one item is parsed; `Ok(empty)` never happens: the end of the
    /// response is `UnexpectedEof`.
    ///
    /// # Errors
    ///
    /// Connection errors and the end of the response.
    pub async fn next_items(&mut self) -> io::Result<Vec<Item>> {
        loop {
            let input = if self.leftover.is_empty() {
                if self.read_buf.len() < 16 * 1024 {
                    self.read_buf.resize(16 * 1024, 0);
                }
                let n = self.stream.read(&mut self.read_buf).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "response ended",
                    ));
                }
                self.read_buf[..n].to_vec()
            } else {
                std::mem::take(&mut self.leftover)
            };
            let items = match &mut self.chunked {
                Some(dechunker) => {
                    self.body.clear();
                    dechunker.feed(&input, &mut self.body)?;
                    self.parser.feed(&self.body)
                }
                None => self.parser.feed(&input),
            };
            if !items.is_empty() {
                return Ok(items);
            }
        }
    }

    /// The last event id seen (what a browser would send on reconnect).
    pub fn last_event_id(&self) -> &str {
        self.parser.last_event_id()
    }

    /// Frees the read buffer while the connection idles (for memory measurements of the
    /// server, the client's own buffers do not matter, but 10 000 of them add up).
    pub fn shrink(&mut self) {
        self.read_buf = Vec::new();
    }
}

/// A keep-alive HTTP/1.1 client for `POST` requests with a JSON body.
#[derive(Debug)]
pub struct Poster {
    url: Url,
    stream: Option<TcpStream>,
}

impl Poster {
    /// A client for `url` (connects lazily).
    pub fn new(url: Url) -> Self {
        Poster { url, stream: None }
    }

    /// POSTs `body`; returns the status and the response body.
    ///
    /// # Errors
    ///
    /// Connection and protocol errors.
    pub async fn post(&mut self, body: &str) -> io::Result<(u16, String)> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                let s = TcpStream::connect(&self.url.authority).await?;
                s.set_nodelay(true)?;
                self.stream = Some(s);
            }
            let result = self.try_post(body).await;
            match result {
                Ok(r) => return Ok(r),
                Err(e) if attempt == 0 => {
                    // A keep-alive connection closed by the server: reconnect once.
                    let _ = e;
                    self.stream = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err(invalid("unreachable"))
    }

    async fn try_post(&mut self, body: &str) -> io::Result<(u16, String)> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| invalid("not connected"))?;
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            self.url.path,
            self.url.authority,
            body.len(),
            body
        );
        stream.write_all(request.as_bytes()).await?;
        let Head {
            status,
            chunked,
            length,
            mut rest,
            ..
        } = read_head(stream).await?;
        let mut body = Vec::new();
        if chunked {
            let mut dechunker = Dechunker::default();
            let mut chunk = [0u8; 4096];
            loop {
                match dechunker.feed(&rest, &mut body) {
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                    Ok(()) => {}
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                rest = chunk[..n].to_vec();
            }
            // The final CRLF after the last chunk.
            let mut crlf = [0u8; 2];
            let _ =
                tokio::time::timeout(Duration::from_millis(50), stream.read_exact(&mut crlf)).await;
        } else {
            let length = length.unwrap_or(0);
            body = rest;
            while body.len() < length {
                let mut chunk = vec![0u8; length - body.len()];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short body"));
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
