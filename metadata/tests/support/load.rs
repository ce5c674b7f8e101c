//! A small bounded HTTP/1.1 load generator for the metadata service.
//!
//! `clients` concurrent tasks send `GET <path>` for `duration`, either over
//! one keep-alive connection each or with a new connection per request (as
//! curl in a guest would), and record each request's latency.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted.
const MAX_RESPONSE: usize = 64 * 1024;

/// Outcome of one load run.
#[derive(Debug)]
pub struct LoadReport {
    /// Successful (HTTP 200) requests.
    pub ok: u64,
    /// Failed requests (errors, timeouts, non-200).
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Median latency of successful requests.
    pub p50: Duration,
    /// 99th percentile latency of successful requests.
    pub p99: Duration,
    /// Slowest successful request.
    pub max: Duration,
}

impl LoadReport {
    /// Successful requests per second.
    pub fn requests_per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ok, {} errors in {:.2?}: {:.0} req/s, p50 {:.2?}, p99 {:.2?}, max {:.2?}",
            self.ok,
            self.errors,
            self.elapsed,
            self.requests_per_second(),
            self.p50,
            self.p99,
            self.max
        )
    }
}

/// Runs the load and reports; must be called in the client's namespace.
pub async fn run_load(
    server: SocketAddr,
    path: &str,
    clients: usize,
    duration: Duration,
    keep_alive: bool,
) -> LoadReport {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: {}\r\n\r\n",
        server.ip(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let request = request.clone();
        tasks.spawn(async move {
            client_loop(server, request.into_bytes(), deadline, keep_alive).await
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        let (mut lat, err) = joined.expect("load client task panicked");
        latencies.append(&mut lat);
        errors += err;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pick = |q: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index]
    };
    LoadReport {
        ok: latencies.len() as u64,
        errors,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

async fn client_loop(
    server: SocketAddr,
    request: Vec<u8>,
    deadline: Instant,
    keep_alive: bool,
) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    while Instant::now() < deadline {
        let start = Instant::now();
        let result = tokio::time::timeout(
            REQUEST_TIMEOUT,
            one_request(server, &request, &mut stream, &mut buf),
        )
        .await;
        match result {
            Ok(Ok(200)) => latencies.push(start.elapsed()),
            _ => {
                errors += 1;
                stream = None;
                // Do not spin on a broken server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if !keep_alive {
            stream = None;
        }
    }
    (latencies, errors)
}

/// Sends one request (connecting if needed) and reads the whole response;
/// returns the HTTP status.
async fn one_request(
    server: SocketAddr,
    request: &[u8],
    stream: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
) -> std::io::Result<u16> {
    let conn = match stream {
        Some(conn) => conn,
        None => {
            let conn = TcpStream::connect(server).await?;
            conn.set_nodelay(true)?;
            stream.insert(conn)
        }
    };
    conn.write_all(request).await?;
    buf.clear();
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_RESPONSE || read_more(conn, buf).await? == 0 {
            return Err(bad("connection closed before the response head"));
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("non-UTF-8 head"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let length: usize = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .ok_or_else(|| bad("no content-length"))?;
    while buf.len() < head_end + length {
        if buf.len() > MAX_RESPONSE || read_more(conn, buf).await? == 0 {
            return Err(bad("connection closed inside the body"));
        }
    }
    Ok(status)
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = conn.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}
