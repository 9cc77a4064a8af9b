//! HTTP/1.1 on the fast path: reading the request heads it takes, and the one writer of
//! response heads and bodies.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request, StatusCode, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest request head: longer ones are answered 431 (by the fast path with a JSON error, by
/// hyper, whose read buffer it bounds, without).
pub(super) const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in a request head the fast path takes (more: hyper's).
const MAX_HEADERS: usize = 48;

/// What [`read_head`] found.
#[derive(Debug)]
pub(super) enum Head {
    /// A request the fast path takes.
    Take(Box<Request<Body>>),
    /// Anything else: hyper gets it with the bytes read.
    Other,
    /// No complete head within [`MAX_HEAD`] bytes.
    TooLarge,
}

/// Reads until a complete request head. Returns the request when the fast path takes it: a
/// plain HTTP/1.1 `GET` of `path` with nothing after its head (no body: no `Content-Length`,
/// no `Transfer-Encoding`, no pipelined request). [`Head::Other`] for anything else, which
/// hyper gets with the bytes read, so every request the fast path does not take, malformed
/// ones included, is answered exactly as `axum::serve` answers it.
pub(super) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    path: &str,
) -> io::Result<Head> {
    loop {
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let takes = len == buf.len()
                    && request.version == Some(1)
                    && request.method == Some(Method::GET.as_str())
                    && request
                        .path
                        .is_some_and(|p| p.split('?').next() == Some(path))
                    && !request.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str())
                            || h.name.eq_ignore_ascii_case(TRANSFER_ENCODING.as_str())
                    });
                if !takes {
                    return Ok(Head::Other);
                }
                let mut builder = Request::builder()
                    .method(Method::GET)
                    .uri(request.path.unwrap_or("/"))
                    .version(Version::HTTP_11);
                for header in request.headers.iter() {
                    builder = builder.header(header.name, header.value);
                }
                // A name or value `http` refuses: hyper answers it.
                return Ok(builder
                    .body(Body::empty())
                    .map_or(Head::Other, |r| Head::Take(Box::new(r))));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => return Ok(Head::TooLarge),
            // Too many header lines for the fast path, or malformed: hyper answers it.
            Err(_) => return Ok(Head::Other),
        }
    }
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// By the end of the connection (an event stream: its batches go out as they are).
    Close,
    /// No body at all (1xx, 204, 304).
    Empty,
}

/// Writes a response head: the status line, the response's own headers (its framing headers
/// replaced by `framing`'s), and `connection: close`, since the fast path serves one request
/// per connection.
pub(super) fn write_head(out: &mut Vec<u8>, response: &http::response::Parts, framing: Framing) {
    let status = response.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &response.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Close | Framing::Empty => {}
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
}

/// Writes a whole response that the fast path does not stream itself (a refusal, a backoff,
/// or whatever else the router answered), then closes the connection.
pub(super) async fn write_response(stream: &mut TcpStream, response: Response) -> io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let framing = if parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else {
        body.size_hint()
            .exact()
            .map_or(Framing::Chunked, Framing::Length)
    };
    let mut out = Vec::with_capacity(256);
    write_head(&mut out, &parts, framing);
    stream.write_all(&out).await?;
    if framing != Framing::Empty {
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            // A body that fails ends the response early; the client sees the connection close.
            let Ok(frame) = frame else { break };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if framing == Framing::Chunked {
                stream
                    .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                    .await?;
                stream.write_all(&data).await?;
                stream.write_all(b"\r\n").await?;
            } else {
                stream.write_all(&data).await?;
            }
        }
        if framing == Framing::Chunked {
            stream.write_all(b"0\r\n\r\n").await?;
        }
    }
    stream.shutdown().await
}

/// A stream that first yields bytes already read: how hyper gets a connection whose head the
/// fast path read and did not take.
pub(super) struct Rewind {
    pub(super) prefix: Bytes,
    pub(super) inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;
    use proptest::prelude::*;

    use super::*;

    /// Gives its bytes in pieces cut at `cuts`, then the end of the stream.
    struct Pieces {
        bytes: Vec<u8>,
        cuts: Vec<usize>,
        at: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            let next = this
                .cuts
                .iter()
                .copied()
                .filter(|&c| c > this.at)
                .min()
                .unwrap_or(this.bytes.len())
                .min(this.bytes.len())
                .min(this.at + buf.remaining());
            buf.put_slice(&this.bytes[this.at..next]);
            this.at = next;
            Poll::Ready(Ok(()))
        }
    }

    /// `read_head` over `bytes` in pieces: it never waits (the reader never does).
    fn read(bytes: &[u8], cuts: &[usize]) -> io::Result<Head> {
        let mut reader = Pieces {
            bytes: bytes.to_vec(),
            cuts: cuts.to_vec(),
            at: 0,
        };
        let mut buf = BytesMut::new();
        read_head(&mut reader, &mut buf, "/events")
            .now_or_never()
            .expect("a reader that never waits")
    }

    fn cases(n: u32) -> ProptestConfig {
        ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(n),
        )
    }

    /// A header the fast path may see: a token name (none that frames a body) and a value
    /// of visible ASCII, spaces and tabs inside.
    fn header() -> impl Strategy<Value = (String, String)> {
        (
            "[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,20}",
            "[!-~]([ \t!-~]{0,40}[!-~])?|",
        )
            .prop_filter("no body framing", |(name, _)| {
                !name.eq_ignore_ascii_case("content-length")
                    && !name.eq_ignore_ascii_case("transfer-encoding")
            })
    }

    proptest! {
        #![proptest_config(cases(512))]

        #[test]
        fn any_bytes_never_panic(
            // Past MAX_HEAD (16 KiB) at times.
            bytes in prop_oneof![
                4 => proptest::collection::vec(any::<u8>(), 0..2000),
                1 => proptest::collection::vec(any::<u8>(), 16_000..17_000),
            ],
            cuts in proptest::collection::vec(0usize..20_000, 0..8),
        ) {
            let _ = read(&bytes, &cuts);
        }

        #[test]
        fn head_like_bytes_never_panic(
            lines in proptest::collection::vec("[ -~\t]{0,60}|\\PC{0,20}", 0..30),
            ends in proptest::collection::vec(prop_oneof![Just("\r\n"), Just("\n"), Just("\r")], 30),
            cuts in proptest::collection::vec(0usize..2000, 0..8),
        ) {
            let mut bytes = b"GET /events HTTP/1.1\r\n".to_vec();
            for (line, end) in lines.iter().zip(&ends) {
                bytes.extend_from_slice(line.as_bytes());
                bytes.extend_from_slice(end.as_bytes());
            }
            bytes.extend_from_slice(b"\r\n");
            let _ = read(&bytes, &cuts);
        }

        #[test]
        fn valid_heads_round_trip_in_any_pieces(
            query in "(\\?[A-Za-z0-9=&%._~-]{0,60})?",
            headers in proptest::collection::vec(header(), 0..MAX_HEADERS),
            cuts in proptest::collection::vec(0usize..4000, 0..8),
        ) {
            let mut head = format!("GET /events{query} HTTP/1.1\r\n");
            for (name, value) in &headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let Head::Take(request) = read(head.as_bytes(), &cuts).expect("a complete head") else {
                panic!("the fast path takes it");
            };
            prop_assert_eq!(request.uri().to_string(), format!("/events{query}"));
            let got: Vec<(String, String)> = request
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let mut want: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .collect();
            // `HeaderMap` groups the values of one name, in order.
            let mut got_sorted = got.clone();
            got_sorted.sort_by(|a, b| a.0.cmp(&b.0));
            want.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(got_sorted, want);
        }

        #[test]
        fn heads_it_does_not_take_go_to_hyper(
            method in "POST|PUT|HEAD|get",
            path in "/events/x|/event|/|/other",
            body in any::<bool>(),
        ) {
            let head = format!("{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n");
            prop_assert!(matches!(read(head.as_bytes(), &[]).expect("a complete head"), Head::Other));
            let with_body = format!(
                "GET /events HTTP/1.1\r\n{}\r\n\r\nxyz",
                if body { "content-length: 3" } else { "transfer-encoding: chunked" }
            );
            prop_assert!(matches!(read(with_body.as_bytes(), &[]).expect("a complete head"), Head::Other));
        }
    }

    fn head(response: Response, framing: Framing) -> String {
        let mut out = Vec::new();
        write_head(&mut out, &response.into_parts().0, framing);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn heads_keep_the_response_headers_and_replace_its_framing() {
        let response = Response::builder()
            .status(StatusCode::FORBIDDEN)
            .header("x-a", "1")
            .header("content-length", "999")
            .header("connection", "keep-alive")
            .body(Body::empty())
            .unwrap_or_default();
        assert_eq!(
            head(response, Framing::Length(3)),
            "HTTP/1.1 403 Forbidden\r\nx-a: 1\r\ncontent-length: 3\r\nconnection: close\r\n\r\n"
        );
        let response = Response::new(Body::empty());
        assert_eq!(
            head(response, Framing::Chunked),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }
}
