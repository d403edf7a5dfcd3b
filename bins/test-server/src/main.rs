//! `test-server`: a small HTTP/1.1 server for tests (the `ferrokube/test-server` image).
//!
//! ```text
//! test-server [--port N] [--start-delay SECS] [--echo-any-path]
//!                                               serve (PORT from the environment too)
//! test-server udp [--port N]                     UDP: print each datagram, answer it
//! test-server exit CODE                         exit with CODE at once
//! test-server sleep SECS                        sleep, then exit 0
//! ```
//!
//! Endpoints: `/` (host name, request line, headers), `/hostname`, `/env`, `/healthz`
//! (500 while `/tmp/unhealthy` exists), `/readyz` (503 while `/tmp/notready` exists),
//! `/sleep/SECS` (answer after a delay), `/exit/CODE` (answer, then exit with CODE);
//! other paths 404, or with `--echo-any-path` answer as `/` does (routing tests).
//! Only the standard library: the image stays small.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `--echo-any-path`: unknown paths are echoed, not 404.
static ECHO_ANY_PATH: AtomicBool = AtomicBool::new(false);

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn respond(mut s: &TcpStream, code: u16, body: &str) {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    let _ = write!(
        s,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn handle(stream: TcpStream) {
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut headers = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => headers.push_str(line.trim_end()),
        }
        headers.push('\n');
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    match path.as_str() {
        p if p == "/" || (ECHO_ANY_PATH.load(Ordering::Relaxed) && !is_fixed(p)) => respond(
            &stream,
            200,
            &format!(
                "hostname: {}\nrequest: {}\n{headers}",
                hostname(),
                request.trim_end()
            ),
        ),
        "/hostname" => respond(&stream, 200, &format!("{}\n", hostname())),
        "/env" => {
            let mut env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            env.sort();
            respond(&stream, 200, &(env.join("\n") + "\n"));
        }
        "/healthz" if std::path::Path::new("/tmp/unhealthy").exists() => {
            respond(&stream, 500, "unhealthy\n")
        }
        "/healthz" => respond(&stream, 200, "ok\n"),
        "/readyz" if std::path::Path::new("/tmp/notready").exists() => {
            respond(&stream, 503, "not ready\n")
        }
        "/readyz" => respond(&stream, 200, "ok\n"),
        p if p.starts_with("/sleep/") => {
            let secs: u64 = p[7..].parse().unwrap_or(0);
            std::thread::sleep(Duration::from_secs(secs));
            respond(&stream, 200, "slept\n");
        }
        p if p.starts_with("/exit/") => {
            let code: i32 = p[6..].parse().unwrap_or(1);
            respond(&stream, 200, &format!("exiting with {code}\n"));
            let _ = (&stream).flush();
            std::process::exit(code);
        }
        _ => respond(&stream, 404, "not found\n"),
    }
}

/// Prints every datagram received on `port` (`udp from PEER: TEXT`) and answers it with
/// `HOSTNAME TEXT`.
fn serve_udp(port: u16) {
    let socket = match std::net::UdpSocket::bind(("0.0.0.0", port)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: listening on udp port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on udp port {port}");
    let mut buf = [0u8; 65535];
    while let Ok((n, peer)) = socket.recv_from(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
        println!("udp from {peer}: {text}");
        let _ = socket.send_to(format!("{} {text}\n", hostname()).as_bytes(), peer);
    }
}

/// The paths with an answer of their own.
fn is_fixed(p: &str) -> bool {
    ["/hostname", "/env", "/healthz", "/readyz"].contains(&p)
        || p.starts_with("/sleep/")
        || p.starts_with("/exit/")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("exit") => std::process::exit(args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1)),
        Some("sleep") => {
            std::thread::sleep(Duration::from_secs(
                args.get(1).and_then(|c| c.parse().ok()).unwrap_or(0),
            ));
            return;
        }
        _ => {}
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let port = flag("--port")
        .or_else(|| std::env::var("PORT").ok())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(8080);
    ECHO_ANY_PATH.store(
        args.iter().any(|a| a == "--echo-any-path"),
        Ordering::Relaxed,
    );
    if let Some(d) = flag("--start-delay").and_then(|d| d.parse().ok()) {
        std::thread::sleep(Duration::from_secs(d));
    }
    if args.first().map(String::as_str) == Some("udp") {
        serve_udp(port);
        return;
    }
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: listening on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on port {port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || handle(stream));
    }
}
