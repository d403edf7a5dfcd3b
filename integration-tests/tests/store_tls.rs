//! TLS on both ports: members replicate over mutually authenticated https peer URLs, and
//! etcdctl reaches the client port only with a certificate the cluster's CA signed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{etcdctl, Cluster};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and one certificate for 127.0.0.1 usable as server and client.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "member.key",
        "-out",
        "member.csr",
        "-subj",
        "/CN=member",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "member.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "member.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[tokio::test]
async fn members_and_clients_over_tls() {
    let mut c = Cluster::new(3, &[]).unwrap();
    let d = c.dir.path().to_path_buf();
    make_certs(&d);
    let f = |n: &str| d.join(n).display().to_string();
    for m in &mut c.members {
        m.tls = true;
        m.extra_args = vec![
            "--cert-file".into(),
            f("member.crt"),
            "--key-file".into(),
            f("member.key"),
            "--trusted-ca-file".into(),
            f("ca.crt"),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            f("member.crt"),
            "--peer-key-file".into(),
            f("member.key"),
            "--peer-trusted-ca-file".into(),
            f("ca.crt"),
        ];
    }
    let ic = c.initial_cluster();
    for m in &mut c.members {
        m.start(&ic, "new").unwrap();
    }
    let (ca, cert, key) = (
        format!("--cacert={}", f("ca.crt")),
        format!("--cert={}", f("member.crt")),
        format!("--key={}", f("member.key")),
    );
    let tls = [ca.as_str(), cert.as_str(), key.as_str()];
    let ep0 = c.members[0].endpoint();
    let ep2 = c.members[2].endpoint();
    let with = |extra: &[&str]| -> Vec<String> {
        tls.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |ep: &str, extra: &[&str]| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        etcdctl(ep, &args)
    };
    // Wait (bounded) for a leader elected over the TLS peer transport.
    let deadline = Instant::now() + Duration::from_secs(20);
    while run(&ep0, &["put", "secure", "yes"]).is_err() {
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("no leader over TLS");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Replicated to another member (read locally there).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run(&ep2, &["get", "secure", "--consistency=s"]).unwrap_or_default();
        if out == "secure\nyes\n" {
            break;
        }
        assert!(Instant::now() < deadline, "not replicated: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let members = run(&ep0, &["member", "list"]).unwrap();
    assert_eq!(members.matches(", started, ").count(), 3, "{members}");
    assert!(members.contains("https://127.0.0.1:"), "{members}");
    // Without a client certificate the client port refuses the request.
    let err = etcdctl(
        &ep0,
        &[
            ca.as_str(),
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "get",
            "secure",
        ],
    );
    assert!(err.is_err(), "a client without a certificate was served");
    // And plain-text clients get nothing either.
    assert!(etcdctl(
        &ep0,
        &["--dial-timeout=2s", "--command-timeout=3s", "get", "secure"]
    )
    .is_err());
}
