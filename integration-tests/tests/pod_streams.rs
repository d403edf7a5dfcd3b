//! Streaming through kube-apiserver to the kubelet with stock kubectl: `logs` (with
//! -f, --previous, --tail, --since, --timestamps, --limit-bytes, -c, --all-containers,
//! label selectors), `exec` (stdin, TTY with its size, exit codes), `cp` both ways,
//! `attach`, and `port-forward` (pod and service, several ports) — over WebSocket, as
//! kubectl 1.32 speaks first, and over SPDY, its fallback — and `kubectl top`, whose
//! figures kube-apiserver also gets from the kubelet.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};

use integration_tests::apiserver::ApiServer;
use integration_tests::node::*;

/// kubectl with the streaming protocol chosen: WebSocket (kubectl's default) or SPDY.
fn kubectl(api: &ApiServer, spdy: bool, args: &[&str]) -> Command {
    let mut c = api.kubectl_command(args);
    c.env(
        "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
        if spdy { "false" } else { "true" },
    )
    .env(
        "KUBECTL_PORT_FORWARD_WEBSOCKETS",
        if spdy { "false" } else { "true" },
    );
    c
}

/// Runs kubectl with `stdin`; its exit code, stdout and stderr.
fn run_io(mut c: Command, stdin: &[u8]) -> (i32, String, String) {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a kubectl command in a pseudo-terminal (`script`), after `setup` there; its
/// output. `typed` is typed into the terminal once the output shows its marker.
fn in_terminal(c: Command, setup: &str, typed: Option<(&str, &str)>) -> String {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
    let mut line = quote(c.get_program());
    for a in c.get_args() {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let envs: String = c
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={} ", k.to_string_lossy(), quote(v?))))
        .collect();
    // Stdin stays open, as a person's terminal does, until the command is done.
    let mut child = Command::new("script")
        .args(["-qec", &format!("{setup}; {envs}{line}"), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut keyboard = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let collected = out.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            collected
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut typed = typed;
    loop {
        if let Some((marker, text)) = typed {
            if out.lock().unwrap().contains(marker) {
                keyboard.write_all(text.as_bytes()).unwrap();
                typed = None;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = reader.join();
    drop(keyboard);
    let text = out.lock().unwrap().replace('\r', "");
    text
}

fn running(api: &ApiServer, name: &str, node: &Node) {
    wait_for(
        &format!("{name} to run"),
        60,
        || pod(api, name)["status"]["phase"] == "Running",
        node,
    );
}

#[test]
fn logs_as_upstream() {
    let w = world();
    let api = &w.api;
    let root = w.dir.path().join("kubelet");
    let node = start_node(&w, &root);
    apply(
        api,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: talk, labels: {app: talk}}
spec:
  nodeName: node-1
  containers:
  - name: a
    image: busybox
    command: [sh, -c, 'echo err-line >&2; sleep 0.5; for i in 1 2 3 4 5; do echo a-$i; done; sleep 3600']
  - name: b
    image: busybox
    command: [sh, -c, 'echo b-1; sleep 3600']
---
apiVersion: v1
kind: Pod
metadata: {name: restarts}
spec:
  nodeName: node-1
  volumes: [{name: d, emptyDir: {}}]
  containers:
  - name: c
    image: busybox
    volumeMounts: [{name: d, mountPath: /data}]
    command: [sh, -c, 'n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo attempt-$n; if [ $n -lt 2 ]; then exit 1; fi; sleep 3600']
---
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  nodeName: node-1
  restartPolicy: Never
  containers:
  - name: t
    image: busybox
    command: [sh, -c, 'sleep 2; for i in 1 2 3 4; do echo tick-$i; sleep 0.5; done']
---
apiVersion: v1
kind: Pod
metadata: {name: nowhere}
spec:
  nodeName: node-1
  containers: [{name: x, image: "busybox:no-such-tag"}]
"#,
    );
    running(api, "talk", &node);
    wait_for(
        "talk's output",
        20,
        || {
            api.kubectl(&["logs", "talk", "-c", "a"])
                .unwrap_or_default()
                .contains("a-5")
        },
        &node,
    );
    // The follower started before the ticker writes; it ends when the container does.
    let mut follow = api.kubectl_command(&["logs", "-f", "ticker"]);
    follow.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut follower = follow.spawn().unwrap();

    assert_eq!(
        api.ok(&["logs", "talk", "-c", "a"]),
        "err-line\na-1\na-2\na-3\na-4\na-5\n"
    );
    assert_eq!(
        api.ok(&["logs", "talk", "-c", "a", "--tail=2"]),
        "a-4\na-5\n"
    );
    assert_eq!(
        api.ok(&["logs", "talk", "-c", "a", "--limit-bytes=6"]),
        "err-li"
    );
    assert_eq!(
        api.ok(&["logs", "talk", "-c", "a", "--since=1h", "--tail=1"]),
        "a-5\n"
    );
    let stamped = api.ok(&["logs", "talk", "-c", "b", "--timestamps"]);
    let (stamp, text) = stamped.trim_end().split_once(' ').unwrap();
    assert_eq!(text, "b-1");
    // RFC 3339 with nanoseconds, trailing zeros dropped (Go's RFC3339Nano).
    let b = stamp.as_bytes();
    assert!(
        stamp.len() >= 20 && b[4] == b'-' && b[10] == b'T' && stamp.ends_with('Z'),
        "{stamped}"
    );
    // kubectl picks the first container itself; the API asks for one.
    let raw = api
        .kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/talk/log"])
        .unwrap_err();
    assert!(
        raw.contains("a container name must be specified for pod talk, choose one of: [a b]"),
        "{raw}"
    );
    let wrong = api.kubectl(&["logs", "talk", "-c", "zz"]).unwrap_err();
    assert!(
        wrong.contains("container zz is not valid for pod talk"),
        "{wrong}"
    );
    let all = api.ok(&["logs", "talk", "--all-containers", "--prefix"]);
    assert!(
        all.contains("[pod/talk/a] a-3") && all.contains("[pod/talk/b] b-1"),
        "{all}"
    );
    let by_label = api.ok(&["logs", "-l", "app=talk", "-c", "b"]);
    assert_eq!(by_label, "b-1\n");
    let none = api
        .kubectl(&["logs", "talk", "-c", "b", "--previous"])
        .unwrap_err();
    assert!(
        none.contains("previous terminated container \"b\" in pod \"talk\" not found"),
        "{none}"
    );
    wait_for(
        "the image pull to fail",
        30,
        || {
            api.kubectl(&["logs", "nowhere"])
                .err()
                .is_some_and(|e| e.contains("is waiting to start"))
        },
        &node,
    );

    // The second attempt runs; --previous shows the first.
    wait_for(
        "the restarted container",
        60,
        || api.kubectl(&["logs", "restarts"]).unwrap_or_default() == "attempt-2\n",
        &node,
    );
    assert_eq!(api.ok(&["logs", "restarts", "--previous"]), "attempt-1\n");

    let mut out = String::new();
    follower
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = follower.wait().unwrap();
    assert!(status.success(), "logs -f: {out}");
    assert_eq!(out, "tick-1\ntick-2\ntick-3\ntick-4\n");
    delete_all_pods(api, &["talk", "restarts", "ticker", "nowhere"], &node);
}

#[test]
fn exec_and_cp_over_websocket_and_spdy() {
    let w = world();
    let api = &w.api;
    let root = w.dir.path().join("kubelet");
    let node = start_node(&w, &root);
    apply(
        api,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: box}
spec:
  nodeName: node-1
  containers:
  - {name: main, image: busybox, command: [sleep, "3600"]}
  - {name: side, image: busybox, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  nodeName: node-1
  containers:
  - {name: main, image: busybox, command: [sh, -c, "exit 1"]}
"#,
    );
    running(api, "box", &node);
    wait_for(
        "crash to back off",
        60,
        || {
            pod(api, "crash")["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CrashLoopBackOff"
        },
        &node,
    );
    for spdy in [false, true] {
        let proto = if spdy { "SPDY" } else { "WebSocket" };
        // The kubelet refuses a container that is not running, before the upgrade.
        let (code, _, err) = run_io(kubectl(api, spdy, &["exec", "crash", "--", "true"]), b"");
        assert_ne!(code, 0, "{proto}");
        assert!(
            err.contains(r#"unable to upgrade connection: container not found ("main")"#),
            "{proto}: {err}"
        );

        let (code, out, err) = run_io(
            kubectl(
                api,
                spdy,
                &[
                    "exec",
                    "box",
                    "-c",
                    "main",
                    "--",
                    "sh",
                    "-c",
                    "echo out; echo err >&2; exit 3",
                ],
            ),
            b"",
        );
        assert_eq!((code, out.as_str()), (3, "out\n"), "{proto}: {err}");
        assert!(err.contains("err\n"), "{proto}: {err}");
        assert!(
            err.contains("command terminated with exit code 3"),
            "{proto}: {err}"
        );

        let (code, out, err) = run_io(
            kubectl(
                api,
                spdy,
                &[
                    "exec",
                    "-i",
                    "box",
                    "-c",
                    "side",
                    "--",
                    "sh",
                    "-c",
                    "cat; echo done",
                ],
            ),
            b"line one\nline two\n",
        );
        assert_eq!(
            (code, out.as_str()),
            (0, "line one\nline two\ndone\n"),
            "{proto}: {err}"
        );

        // A terminal of the caller's size (kubectl under `script`, in a pty). Sizes travel
        // apart from the command (upstream applies them asynchronously too): on a loaded
        // machine the first may land just after the command starts, so it waits (bounded)
        // for the size to show.
        let out = in_terminal(
            kubectl(
                api,
                spdy,
                &[
                    "exec",
                    "-it",
                    "box",
                    "-c",
                    "main",
                    "--",
                    "sh",
                    "-c",
                    "tty; i=0; while [ \"$(stty size 2>/dev/null)\" != '37 91' ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; stty size",
                ],
            ),
            "stty cols 91 rows 37",
            None,
        );
        assert!(out.contains("/dev/pts/"), "{proto}: {out}");
        assert!(out.contains("37 91"), "{proto}: {out}");

        let (code, _, err) = run_io(
            kubectl(api, spdy, &["exec", "box", "-c", "nope", "--", "true"]),
            b"",
        );
        assert_ne!(code, 0);
        assert!(
            err.contains("container nope is not valid for pod box"),
            "{proto}: {err}"
        );
        let (code, _, err) = run_io(
            kubectl(
                api,
                spdy,
                &["exec", "box", "-c", "main", "--", "no-such-command"],
            ),
            b"",
        );
        assert_ne!(code, 0, "{proto}");
        assert!(err.contains("executable file not found"), "{proto}: {err}");

        // cp both ways (tar in the container), a file and a directory.
        let local = w.dir.path().join(format!("cp-{spdy}"));
        std::fs::create_dir_all(local.join("tree/sub")).unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(local.join("tree/sub/blob.bin"), &payload).unwrap();
        std::fs::write(local.join("note.txt"), "hello from the host\n").unwrap();
        let file = local.join("note.txt").display().to_string();
        let tree = local.join("tree").display().to_string();
        let (code, _, err) = run_io(
            kubectl(api, spdy, &["cp", &file, "box:/tmp/note.txt", "-c", "main"]),
            b"",
        );
        assert_eq!(code, 0, "{proto}: {err}");
        let (_, out, _) = run_io(
            kubectl(
                api,
                spdy,
                &["exec", "box", "-c", "main", "--", "cat", "/tmp/note.txt"],
            ),
            b"",
        );
        assert_eq!(out, "hello from the host\n", "{proto}");
        let (code, _, err) = run_io(
            kubectl(api, spdy, &["cp", &tree, "box:/tmp/tree", "-c", "main"]),
            b"",
        );
        assert_eq!(code, 0, "{proto}: {err}");
        let back = local.join("back");
        let back_s = back.display().to_string();
        let (code, _, err) = run_io(
            kubectl(api, spdy, &["cp", "box:/tmp/tree", &back_s, "-c", "main"]),
            b"",
        );
        assert_eq!(code, 0, "{proto}: {err}");
        assert_eq!(
            std::fs::read(back.join("sub/blob.bin")).unwrap(),
            payload,
            "{proto}"
        );
    }
    delete_all_pods(api, &["box", "crash"], &node);
}

/// A `kubectl port-forward` running until dropped.
struct Forwarding(std::process::Child);

impl Drop for Forwarding {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `kubectl port-forward ARGS` and waits until it listens on every local port.
fn port_forward(
    api: &ApiServer,
    spdy: bool,
    args: &[&str],
    ports: &[u16],
    node: &Node,
) -> Forwarding {
    let mut a = vec!["port-forward"];
    a.extend_from_slice(args);
    let mut c = kubectl(api, spdy, &a);
    // A forward lives longer than one request's timeout.
    let program = c.get_program().to_owned();
    let argv: Vec<std::ffi::OsString> = c
        .get_args()
        .filter(|a| *a != "--request-timeout=10s")
        .map(|a| a.to_owned())
        .collect();
    let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> = c
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    c = Command::new(program);
    c.args(argv).envs(envs).env_remove("KUBECONFIG");
    let log = tempfile::NamedTempFile::new().unwrap();
    c.stdout(log.reopen().unwrap()).stderr(Stdio::null());
    let f = Forwarding(c.spawn().unwrap());
    wait_for(
        "kubectl port-forward to listen",
        20,
        || {
            let out = std::fs::read_to_string(log.path()).unwrap_or_default();
            ports
                .iter()
                .all(|p| out.contains(&format!("Forwarding from 127.0.0.1:{p}")))
        },
        node,
    );
    f
}

/// `GET http://127.0.0.1:PORT/PATH` from inside the test namespace.
fn get(w: &World, port: u16, path: &str) -> Result<String, String> {
    let out =
        w.ns.command("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                &format!("http://127.0.0.1:{port}{path}"),
            ])
            .output()
            .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn port_forward_to_pods_and_services() {
    let w = world();
    let api = &w.api;
    let root = w.dir.path().join("kubelet");
    let node = start_node(&w, &root);
    apply(
        api,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: node-1
  containers:
  - name: server
    image: ferrokube/test-server
    ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#,
    );
    running(api, "web", &node);
    let mut port = 18080;
    for spdy in [false, true] {
        let proto = if spdy { "SPDY" } else { "WebSocket" };
        // Two local ports to the same pod port, several requests each.
        let (p1, p2) = (port, port + 1);
        port += 2;
        let a1 = format!("{p1}:8080");
        let a2 = format!("{p2}:http");
        let f = port_forward(api, spdy, &["pod/web", &a1, &a2], &[p1, p2], &node);
        // The server may still be starting.
        wait_for(
            "the server to answer",
            20,
            || get(&w, p1, "/hostname").is_ok(),
            &node,
        );
        for _ in 0..3 {
            for p in [p1, p2] {
                assert_eq!(
                    get(&w, p, "/hostname").as_deref(),
                    Ok("web\n"),
                    "{proto} port {p}"
                );
            }
        }
        // A large answer comes through whole.
        let env = get(&w, p1, "/env").unwrap();
        assert!(
            env.contains("HOSTNAME") || env.contains("PATH"),
            "{proto}: {env}"
        );
        drop(f);

        // A Service: kubectl picks a pod behind it and maps the port.
        let p3 = port;
        port += 1;
        let a3 = format!("{p3}:80");
        let f = port_forward(api, spdy, &["svc/web", &a3], &[p3], &node);
        assert_eq!(
            get(&w, p3, "/hostname").as_deref(),
            Ok("web\n"),
            "{proto} service"
        );
        drop(f);

        // Nothing listens: the connection fails, kubectl reports it.
        let p4 = port;
        port += 1;
        let a4 = format!("{p4}:9999");
        let f = port_forward(api, spdy, &["pod/web", &a4], &[p4], &node);
        assert!(get(&w, p4, "/").is_err(), "{proto}: port 9999 answered");
        drop(f);
    }
    delete_all_pods(api, &["web"], &node);
}

/// A quantity as `kubectl top` prints it (`199m`, `2`, `21Mi`, `1Gi`) in millicores or
/// MiB.
fn top_value(q: &str) -> f64 {
    let (num, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: f64 = num.parse().unwrap_or_else(|_| panic!("quantity {q:?}"));
    match unit {
        "m" => n,
        "" => n * 1000.0,
        "Ki" => n / 1024.0,
        "Mi" => n,
        "Gi" => n * 1024.0,
        u => panic!("unit {u:?} in {q:?}"),
    }
}

#[test]
fn top_nodes_and_pods() {
    let w = world();
    let api = &w.api;
    let root = w.dir.path().join("kubelet");
    let node = start_node(&w, &root);
    apply(
        api,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: burn, labels: {app: burn}}
spec:
  nodeName: node-1
  containers:
  - name: loop
    image: busybox
    command: [sh, -c, 'while :; do :; done']
    resources: {limits: {cpu: 200m, memory: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: hog, labels: {app: hog}}
spec:
  nodeName: node-1
  volumes: [{name: mem, emptyDir: {medium: Memory}}]
  containers:
  - name: hold
    image: busybox
    volumeMounts: [{name: mem, mountPath: /mem}]
    command: [sh, -c, 'head -c 24000000 /dev/zero > /mem/blob; sleep 3600']
  - name: idle
    image: busybox
    command: [sleep, '3600']
"#,
    );
    running(api, "burn", &node);
    running(api, "hog", &node);

    // The kubelet samples every 10 s: metrics come within a couple of samples.
    let mut nodes = String::new();
    wait_for(
        "node metrics",
        40,
        || {
            nodes = api
                .kubectl(&["top", "node", "--no-headers"])
                .unwrap_or_default();
            nodes.starts_with("node-1") && !nodes.contains("<unknown>")
        },
        &node,
    );
    let cols: Vec<&str> = nodes.split_whitespace().collect();
    assert_eq!(cols.len(), 5, "{nodes}");
    assert!(
        top_value(cols[1]) >= 150.0,
        "the node runs a 200m loop: {nodes}"
    );
    assert!(cols[2].ends_with('%') && cols[4].ends_with('%'), "{nodes}");
    assert!(top_value(cols[3]) > 20.0, "{nodes}");
    let one = api.ok(&["top", "node", "node-1"]);
    assert!(
        one.starts_with("NAME") && one.contains("CPU(cores)"),
        "{one}"
    );

    let mut pods = String::new();
    wait_for(
        "pod metrics",
        40,
        || {
            pods = api
                .kubectl(&["top", "pod", "--no-headers"])
                .unwrap_or_default();
            pods.contains("burn") && pods.contains("hog")
        },
        &node,
    );
    let row = |name: &str| -> Vec<String> {
        pods.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {pods}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    // The loop is held to its 200m quota.
    let burn = row("burn");
    let cpu = top_value(&burn[1]);
    assert!((120.0..=260.0).contains(&cpu), "burn: {burn:?}");
    // 24 MB written to memory (tmpfs pages count as the writer's).
    let hog = row("hog");
    assert!(top_value(&hog[2]) >= 20.0, "hog: {hog:?}");

    // Per container, by label, one by name, as JSON from the API.
    let containers = api.ok(&["top", "pod", "hog", "--containers", "--no-headers"]);
    let names: Vec<&str> = containers
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default())
        .collect();
    assert_eq!(names, ["hold", "idle"], "{containers}");
    let by_label = api.ok(&["top", "pod", "-l", "app=burn", "--no-headers"]);
    assert!(
        by_label.starts_with("burn") && !by_label.contains("hog"),
        "{by_label}"
    );
    let raw: serde_json::Value = serde_json::from_str(&api.ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/burn",
    ]))
    .unwrap();
    assert_eq!(raw["kind"], "PodMetrics");
    assert_eq!(raw["metadata"]["labels"]["app"], "burn");
    assert_eq!(raw["containers"][0]["name"], "loop");
    assert!(raw["window"].as_str().unwrap().ends_with('s'), "{raw}");
    let table = api.ok(&["get", "pods.metrics.k8s.io"]);
    assert!(
        table.starts_with("NAME") && table.contains("WINDOW") && table.contains("burn"),
        "{table}"
    );

    // What has no metrics, and what the API does not do.
    let e = api.fails(&["top", "pod", "nosuch"]);
    assert!(
        e.contains(r#"podmetrics.metrics.k8s.io "default/nosuch" not found"#),
        "{e}"
    );
    let e = api.fails(&["top", "node", "nosuch"]);
    assert!(
        e.contains(r#"nodemetrics.metrics.k8s.io "nosuch" not found"#),
        "{e}"
    );
    let e = api.fails(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/pods?watch=true",
    ]);
    assert!(e.contains("MethodNotAllowed"), "{e}");
    delete_all_pods(api, &["burn", "hog"], &node);
}

/// Runs kubectl until its output satisfies `done` (or 60 s pass, or it ends), then
/// stops it; the output so far.
fn output_until(mut c: Command, done: impl Fn(&str) -> bool) -> String {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut out = Vec::new();
    while !done(&String::from_utf8_lossy(&out)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => out.extend(chunk),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn attach_and_run_interactively() {
    let w = world();
    let api = &w.api;
    let root = w.dir.path().join("kubelet");
    let node = start_node(&w, &root);
    let mut pods = String::new();
    for i in 0..2 {
        pods += &format!(
            r#"
---
apiVersion: v1
kind: Pod
metadata: {{name: reader-{i}}}
spec:
  nodeName: node-1
  restartPolicy: Never
  containers:
  - name: r
    image: busybox
    stdin: true
    stdinOnce: true
    command: [sh, -c, 'while read l; do echo got-$l; echo err-$l >&2; done; echo bye']
"#
        );
    }
    pods += r#"
---
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  nodeName: node-1
  containers:
  - {name: t, image: busybox, command: [sh, -c, 'i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done']}
---
apiVersion: v1
kind: Pod
metadata: {name: term}
spec:
  nodeName: node-1
  restartPolicy: Never
  containers:
  - {name: sh, image: busybox, stdin: true, tty: true, command: [sh]}
"#;
    apply(api, &pods);
    for p in ["reader-0", "reader-1", "ticker", "term"] {
        running(api, p, &node);
    }

    // Output only: what the container writes from now on.
    let ticks = |out: &str| -> Vec<u32> {
        out.lines()
            .filter_map(|l| l.strip_prefix("tick-")?.trim().parse().ok())
            .collect()
    };
    let out = output_until(kubectl(api, false, &["attach", "ticker"]), |o| {
        ticks(o).len() >= 10
    });
    let seen = ticks(&out);
    assert!(seen.len() >= 10, "{out}");
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{out}");

    // stdin: the container reads what kubectl sends; with stdinOnce its input ends when
    // kubectl's does, it finishes, and the session ends with it.
    for (i, spdy) in [false, true].into_iter().enumerate() {
        let proto = if spdy { "SPDY" } else { "WebSocket" };
        let pod = format!("reader-{i}");
        let (code, out, err) = run_io(kubectl(api, spdy, &["attach", "-i", &pod]), b"one\ntwo\n");
        assert_eq!(
            (code, out.as_str()),
            (0, "got-one\ngot-two\nbye\n"),
            "{proto}: {err}"
        );
        assert!(err.contains("err-one\nerr-two\n"), "{proto}: {err}");
        wait_for(
            "the reader to finish",
            30,
            || pod_phase(api, &pod) == "Succeeded",
            &node,
        );
        let e = api.fails(&["attach", &pod]);
        assert!(
            e.contains("cannot attach a container in a completed pod; current phase is Succeeded"),
            "{e}"
        );
    }

    // A terminal: typed input echoes, the caller's size applies, `exit` ends it all.
    let out = in_terminal(
        kubectl(api, false, &["attach", "-it", "term"]),
        "stty cols 83 rows 29",
        Some((
            "If you don't see a command prompt",
            "sleep 1; stty size; echo tty-$((6*7)); exit\n",
        )),
    );
    assert!(out.contains("29 83"), "{out}");
    assert!(out.contains("tty-42"), "{out}");
    wait_for(
        "the shell to end",
        30,
        || pod_phase(api, "term") == "Succeeded",
        &node,
    );

    // `kubectl run -i --rm`: attached from the start; the pod's exit code is kubectl's,
    // and the pod is gone afterwards.
    let (code, out, err) = run_io(
        kubectl(
            api,
            false,
            &[
                "run",
                "once",
                "-i",
                "--rm",
                "--restart=Never",
                "--image=busybox",
                r#"--overrides={"apiVersion":"v1","spec":{"nodeName":"node-1"}}"#,
                "--",
                "sh",
            ],
        ),
        b"echo hello-$((40+2)); exit 3\n",
    );
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(out.contains("hello-42"), "{out}\n{err}");
    wait_for(
        "the pod to go",
        30,
        || api.kubectl(&["get", "pod", "once"]).is_err(),
        &node,
    );

    // Bad input: kubectl checks the container name itself; the API refuses it too.
    let e = api.fails(&["attach", "ticker", "-c", "nosuch"]);
    assert!(
        e.contains("container nosuch not found in pod ticker"),
        "{e}"
    );
    let e = api.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/ticker/attach?container=nosuch&stdout=true",
        "-f",
        "/dev/null",
    ]);
    assert!(
        e.contains("container nosuch is not valid for pod ticker"),
        "{e}"
    );
    delete_all_pods(api, &["reader-0", "reader-1", "ticker", "term"], &node);
}

fn pod_phase(api: &ApiServer, name: &str) -> String {
    pod(api, name)["status"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
