//! kube-apiserver driven by the stock kubectl 1.32: discovery, OpenAPI, the bootstrap
//! objects, every verb kubectl uses on built-in resources, table output, watches,
//! patches of all kinds, server-side apply, subresources, allocation, deletion
//! semantics, and bad input answered with upstream's errors while nothing is stored.

use std::io::BufRead as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use integration_tests::apiserver::ApiServer;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn write(dir: &std::path::Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().into_owned()
}

const DEPLOY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {tier: front}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports:
        - containerPort: 80
        - containerPort: 443
"#;

#[test]
fn discovery_openapi_and_bootstrap_state() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    let info = api.ok(&["cluster-info"]);
    assert!(
        info.contains(&format!(
            "Kubernetes control plane is running at {}",
            api.url()
        )),
        "{info}"
    );
    let versions = api.ok(&["api-versions"]);
    for gv in [
        "v1",
        "apps/v1",
        "batch/v1",
        "networking.k8s.io/v1",
        "rbac.authorization.k8s.io/v1",
    ] {
        assert!(
            versions.lines().any(|l| l == gv),
            "{gv} missing from:\n{versions}"
        );
    }
    let resources = api.ok(&["api-resources", "--no-headers"]);
    let deploy = resources
        .lines()
        .find(|l| l.starts_with("deployments "))
        .expect("deployments listed");
    let cols: Vec<&str> = deploy.split_whitespace().collect();
    assert_eq!(
        cols,
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );
    let namespaced = api.ok(&["api-resources", "--namespaced=false", "-o", "name"]);
    assert!(namespaced.lines().any(|l| l == "namespaces"));
    assert!(!namespaced.lines().any(|l| l == "pods"));
    // kubectl explain reads the OpenAPI v3 documents.
    let explain = api.ok(&["explain", "pod.spec.containers"]);
    assert!(
        explain.contains("FIELD: containers <[]Container>"),
        "{explain}"
    );
    assert!(explain.contains("image\t<string>"), "{explain}");
    let explain = api.ok(&["explain", "deployment.spec.replicas"]);
    assert!(explain.contains("GROUP:      apps"), "{explain}");
    // OpenAPI v2 for JSON clients.
    let v2 = json(&api.ok(&["get", "--raw", "/openapi/v2"]));
    assert_eq!(v2["swagger"], "2.0");
    assert!(v2["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"].is_object());
    assert!(v2["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"].is_object());
    // What a new cluster starts with.
    let ns = api.ok(&["get", "ns", "-o", "name"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.lines().any(|l| l == format!("namespace/{n}")), "{ns}");
    }
    let label = api.ok(&[
        "get",
        "ns",
        "kube-system",
        "-o",
        "jsonpath={.metadata.labels.kubernetes\\.io/metadata\\.name}",
    ]);
    assert_eq!(label, "kube-system");
    let svc = json(&api.ok(&["get", "svc", "kubernetes", "-o", "json"]));
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], api.port);
    let ep = json(&api.ok(&["get", "endpoints", "kubernetes", "-o", "json"]));
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "127.0.0.1");
    let slice = json(&api.ok(&["get", "endpointslices", "kubernetes", "-o", "json"]));
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
    let pcs = api.ok(&["get", "priorityclasses", "--no-headers"]);
    assert!(
        pcs.contains("system-cluster-critical") && pcs.contains("2000000000"),
        "{pcs}"
    );
    assert!(
        pcs.contains("system-node-critical") && pcs.contains("2000001000"),
        "{pcs}"
    );
    // A restart keeps everything and creates nothing twice.
    let uid = api.ok(&["get", "ns", "default", "-o", "jsonpath={.metadata.uid}"]);
    let mut api = api;
    api.kill();
    api.spawn();
    api.wait_ready();
    assert_eq!(
        api.ok(&["get", "ns", "default", "-o", "jsonpath={.metadata.uid}"]),
        uid
    );
    assert_eq!(
        api.ok(&["get", "svc", "-A", "--no-headers"])
            .lines()
            .count(),
        1
    );
}

#[test]
fn create_get_and_output_formats() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    let f = write(dir.path(), "d.yaml", DEPLOY);
    assert_eq!(
        api.ok(&["create", "-f", &f]).trim(),
        "deployment.apps/web created"
    );
    let err = api.fails(&["create", "-f", &f]);
    assert!(
        err.contains("AlreadyExists") && err.contains("deployments.apps \"web\" already exists"),
        "{err}"
    );

    // Defaults and server-owned metadata.
    let d = json(&api.ok(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(d["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(
        d["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 1
    );
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(c["ports"][0]["protocol"], "TCP");

    // Table output, as upstream prints it.
    let wide = api.ok(&["get", "deploy", "-o", "wide"]);
    let mut lines = wide.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    // (The Deployment controller is at work: counts move as its ReplicaSet fills.)
    assert_eq!(row[0], "web");
    assert!(row[1].ends_with("/2"), "{wide}");
    assert_eq!(row[5..], ["nginx", "nginx:1.25", "app=web"]);
    let yaml = api.ok(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("replicas: 2"),
        "{yaml}"
    );
    assert_eq!(
        api.ok(&["get", "deploy", "-o", "name"]).trim(),
        "deployment.apps/web"
    );
    assert_eq!(
        api.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].ports[*].containerPort}"
        ]),
        "80 443"
    );
    let cc = api.ok(&[
        "get",
        "deploy",
        "-o",
        "custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas",
    ]);
    assert_eq!(
        cc.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["web", "2"]
    );

    // Labels, selectors, all namespaces, field selectors.
    api.ok(&["create", "namespace", "other"]);
    api.ok(&["create", "configmap", "one", "--from-literal=a=b"]);
    api.ok(&[
        "create",
        "configmap",
        "two",
        "-n",
        "other",
        "--from-literal=a=b",
    ]);
    api.ok(&["label", "configmap", "one", "color=red"]);
    api.ok(&["label", "configmap", "two", "-n", "other", "color=blue"]);
    assert_eq!(
        api.ok(&["get", "cm", "-l", "color=red", "-o", "name"])
            .trim(),
        "configmap/one"
    );
    assert_eq!(
        api.ok(&["get", "cm", "-A", "-l", "color in (red,blue)", "-o", "name"])
            .lines()
            .count(),
        2
    );
    assert_eq!(
        // (`color` too: kube-root-ca.crt, in every namespace, has no color.)
        api.ok(&["get", "cm", "-A", "-l", "color,color!=red", "-o", "name"])
            .trim(),
        "configmap/two"
    );
    let shown = api.ok(&["get", "cm", "one", "--show-labels"]);
    assert!(
        shown.lines().next().unwrap().ends_with("LABELS") && shown.contains("color=red"),
        "{shown}"
    );
    let l = api.ok(&["get", "cm", "-A", "-L", "color", "--no-headers"]);
    assert!(
        l.lines()
            .any(|r| r.starts_with("other") && r.trim_end().ends_with("blue")),
        "{l}"
    );
    let all = api.ok(&[
        "get",
        "cm",
        "-A",
        "--field-selector",
        // (Not the controller-manager's kube-root-ca.crt, which may or may not be there
        // yet in a namespace this new.)
        "metadata.namespace=other,metadata.name!=kube-root-ca.crt",
        "-o",
        "name",
    ]);
    assert_eq!(all.trim(), "configmap/two");
    assert_eq!(
        api.ok(&[
            "get",
            "cm",
            "--field-selector",
            "metadata.name=one",
            "-o",
            "name"
        ])
        .trim(),
        "configmap/one"
    );
    let err = api.fails(&["get", "cm", "--field-selector", "spec.nope=1"]);
    assert!(
        err.contains("field label not supported: spec.nope"),
        "{err}"
    );
    let err = api.fails(&["get", "cm", "-l", "a in (("]);
    assert!(
        err.contains("unable to parse requirement")
            || err.contains("BadRequest")
            || err.contains("invalid"),
        "{err}"
    );
    // Metrics count what was served.
    let metrics = api.ok(&["get", "--raw", "/metrics"]);
    // (The two made here, and the controller-manager's CA bundles.)
    let posts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("apiserver_request_total{code=\"201\",component=\"apiserver\",group=\"\",resource=\"configmaps\",scope=\"namespace\",subresource=\"\",verb=\"POST\",version=\"v1\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(posts.is_some_and(|n| n >= 2), "{metrics}");
    assert!(metrics.contains("apiserver_request_duration_seconds_bucket{component=\"apiserver\",group=\"apps\",resource=\"deployments\",scope=\"resource\",subresource=\"\",verb=\"GET\",version=\"v1\",le=\"+Inf\"}"), "{metrics}");
    assert!(metrics.contains("etcd_request_duration_seconds_count{operation=\"create\",type=\"/registry/configmaps\"}"), "{metrics}");
    // Paging: kubectl lists in chunks with limit/continue.
    for i in 0..5 {
        api.ok(&[
            "create",
            "configmap",
            &format!("page-{i}"),
            "--from-literal=k=v",
        ]);
    }
    let paged = api.ok(&["get", "cm", "--chunk-size=2", "-o", "name"]);
    assert_eq!(
        paged
            .lines()
            .filter(|l| l.starts_with("configmap/page-"))
            .count(),
        5,
        "{paged}"
    );
    let raw = json(&api.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?limit=2",
    ]));
    assert_eq!(raw["items"].as_array().unwrap().len(), 2);
    let cont = raw["metadata"]["continue"].as_str().unwrap().to_string();
    // Seven in default: `one`, the five pages and kube-root-ca.crt.
    assert_eq!(raw["metadata"]["remainingItemCount"], 5);
    let next = json(&api.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?limit=10&continue={cont}"),
    ]));
    assert_eq!(next["items"].as_array().unwrap().len(), 5);
    assert_eq!(
        next["metadata"]["resourceVersion"],
        raw["metadata"]["resourceVersion"]
    );
    assert!(next["metadata"].get("continue").is_none());
}

#[test]
fn the_generators_kubectl_sends_as_protobuf() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    api.ok(&["create", "namespace", "shop"]);
    api.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.25",
        "--replicas=3",
        "-n",
        "shop",
    ]);
    let d = json(&api.ok(&["get", "deploy", "web", "-n", "shop", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.25"
    );
    api.ok(&[
        "create",
        "deployment",
        "zero",
        "--image=nginx",
        "--replicas=0",
        "-n",
        "shop",
    ]);
    assert_eq!(
        api.ok(&[
            "get",
            "deploy",
            "zero",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "0"
    );
    let file = write(dir.path(), "app.properties", "color=blue\nsize=3\n");
    api.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "shop",
        "--from-literal=mode=prod",
        &format!("--from-file={file}"),
    ]);
    let cm = json(&api.ok(&["get", "cm", "cfg", "-n", "shop", "-o", "json"]));
    assert_eq!(cm["data"]["mode"], "prod");
    assert_eq!(cm["data"]["app.properties"], "color=blue\nsize=3\n");
    api.ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "-n",
        "shop",
        "--from-literal=password=s3cret",
    ]);
    let s = json(&api.ok(&["get", "secret", "db", "-n", "shop", "-o", "json"]));
    assert_eq!(s["type"], "Opaque");
    assert_eq!(s["data"]["password"], "czNjcmV0");
    api.ok(&[
        "create",
        "service",
        "clusterip",
        "web",
        "--tcp=80:8080",
        "-n",
        "shop",
    ]);
    let svc = json(&api.ok(&["get", "svc", "web", "-n", "shop", "-o", "json"]));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    let ip: std::net::Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    assert_eq!(ip.octets()[0..2], [10, 96 + (ip.octets()[1] - 96) % 16]);
    api.ok(&[
        "expose",
        "deployment",
        "web",
        "-n",
        "shop",
        "--name=web-np",
        "--port=80",
        "--type=NodePort",
    ]);
    let np = json(&api.ok(&["get", "svc", "web-np", "-n", "shop", "-o", "json"]));
    let port = np["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&port), "{port}");
    assert_eq!(np["spec"]["selector"]["app"], "web");
    api.ok(&[
        "create",
        "job",
        "once",
        "--image=busybox",
        "-n",
        "shop",
        "--",
        "echo",
        "hi",
    ]);
    let job = json(&api.ok(&["get", "job", "once", "-n", "shop", "-o", "json"]));
    let uid = job["metadata"]["uid"].as_str().unwrap();
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"]["job-name"],
        "once"
    );
    assert_eq!(job["spec"]["backoffLimit"], 6);
    api.ok(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=*/5 * * * *",
        "-n",
        "shop",
        "--",
        "date",
    ]);
    api.ok(&[
        "create",
        "job",
        "manual",
        "--from=cronjob/tick",
        "-n",
        "shop",
    ]);
    api.ok(&[
        "run",
        "pod1",
        "--image=busybox",
        "-n",
        "shop",
        "--",
        "sleep",
        "3600",
    ]);
    let pod = json(&api.ok(&["get", "pod", "pod1", "-n", "shop", "-o", "json"]));
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    // --dry-run=client prints without sending; --dry-run=server sends and stores nothing.
    let y = api.ok(&[
        "run",
        "x",
        "--image=nginx",
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    assert!(y.contains("kind: Pod") && y.contains("image: nginx"), "{y}");
    api.ok(&[
        "create",
        "configmap",
        "dry",
        "--from-literal=a=b",
        "--dry-run=server",
    ]);
    assert!(api.fails(&["get", "cm", "dry"]).contains("NotFound"));
    let all = api.ok(&["get", "all", "-n", "shop", "--no-headers"]);
    for want in [
        "pod/pod1",
        "service/web",
        "deployment.apps/web",
        "job.batch/once",
        "cronjob.batch/tick",
    ] {
        assert!(all.contains(want), "{want} missing from get all:\n{all}");
    }
}

#[test]
fn apply_patch_edit_replace_scale_label_annotate() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    let f = write(dir.path(), "d.yaml", DEPLOY);
    assert_eq!(
        api.ok(&["apply", "-f", &f]).trim(),
        "deployment.apps/web created"
    );
    assert_eq!(
        api.ok(&["apply", "-f", &f]).trim(),
        "deployment.apps/web unchanged"
    );
    // Change the image, drop a port: the three-way patch removes it.
    let changed = DEPLOY
        .replace("nginx:1.25", "nginx:1.26")
        .replace("        - containerPort: 443\n", "");
    let f = write(dir.path(), "d.yaml", &changed);
    assert_eq!(
        api.ok(&["apply", "-f", &f]).trim(),
        "deployment.apps/web configured"
    );
    let d = json(&api.ok(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.26"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(d["metadata"]["generation"], 2);
    assert!(
        d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );

    api.ok(&["label", "deploy", "web", "env=prod"]);
    api.ok(&["annotate", "deploy", "web", "owner=team-a"]);
    let err = api.fails(&["label", "deploy", "web", "env=dev"]);
    assert!(err.contains("already has a value"), "{err}");
    api.ok(&["label", "deploy", "web", "env=dev", "--overwrite"]);
    api.ok(&["label", "deploy", "web", "tier-"]);
    let d = json(&api.ok(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(d["metadata"]["labels"], serde_json::json!({"env": "dev"}));
    assert_eq!(d["metadata"]["annotations"]["owner"], "team-a");
    assert_eq!(
        d["metadata"]["generation"], 2,
        "metadata changes keep the generation"
    );

    // The three patch types.
    api.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox"}]}}}}"#,
    ]);
    let d = json(&api.ok(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "strategic merge adds by name"
    );
    api.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":4}}"#,
    ]);
    api.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/template/spec/containers/1"}]"#,
    ]);
    let d = json(&api.ok(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 4);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let err = api.fails(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
    ]);
    assert!(
        err.contains("testing value failed") || err.contains("Invalid"),
        "{err}"
    );
    let err = api.fails(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":"many"}}"#,
    ]);
    assert!(err.contains("cannot be handled as a Deployment"), "{err}");

    // scale (the scale subresource), edit (EDITOR), replace.
    assert_eq!(
        api.ok(&["scale", "deploy", "web", "--replicas=1"]).trim(),
        "deployment.apps/web scaled"
    );
    let scale = json(&api.ok(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
    ]));
    assert_eq!(
        (scale["kind"].as_str(), scale["spec"]["replicas"].as_i64()),
        (Some("Scale"), Some(1))
    );
    assert_eq!(scale["status"]["selector"], "app=web");
    let editor = write(
        dir.path(),
        "editor.sh",
        "#!/bin/sh\nsed -i 's/replicas: 1/replicas: 5/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = api
        .kubectl_command(&["edit", "deploy", "web"])
        .env("EDITOR", &editor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        api.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "5"
    );
    // Read, change, replace — again from a fresh read when the deployment controller's
    // status write got in between (a conflict, as upstream), a bounded number of times.
    let mut rf = String::new();
    for attempt in 0..5 {
        let mut d = json(&api.ok(&["get", "deploy", "web", "-o", "json"]));
        d["spec"]["replicas"] = 6.into();
        rf = write(dir.path(), "r.json", &d.to_string());
        match api.kubectl(&["replace", "-f", &rf]) {
            Ok(_) => break,
            Err(e) if e.contains("Conflict") && attempt < 4 => continue,
            Err(e) => panic!("replace: {e}"),
        }
    }
    assert_eq!(
        api.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "6"
    );
    // The same stale resourceVersion again: conflict.
    let err = api.fails(&["replace", "-f", &rf]);
    assert!(
        err.contains("Conflict") && err.contains("the object has been modified"),
        "{err}"
    );
    let desc = api.ok(&["describe", "deploy", "web"]);
    assert!(
        desc.contains("Name:") && desc.contains("web") && desc.contains("6 desired"),
        "{desc}"
    );

    // Server-side apply: ownership and conflicts.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    let f = write(dir.path(), "cm.yaml", cm);
    api.ok(&["apply", "--server-side", "-f", &f]);
    let f2 = write(
        dir.path(),
        "cm2.yaml",
        &cm.replace("a: \"1\"", "a: \"9\"")
            .replace("  b: \"2\"\n", ""),
    );
    let err = api.fails(&["apply", "--server-side", "--field-manager=other", "-f", &f2]);
    assert!(
        err.contains("conflict with \"kubectl\"") && err.contains(".data.a"),
        "{err}"
    );
    api.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        &f2,
    ]);
    let c = json(&api.ok(&["get", "cm", "owned", "-o", "json", "--show-managed-fields"]));
    assert_eq!(c["data"], serde_json::json!({"a": "9", "b": "2"}));
    let managers: Vec<&str> = c["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["kubectl", "other"]);
    // Other writes own what they set: kubectl create, then kubectl label.
    api.ok(&["create", "configmap", "plain", "--from-literal=k=v"]);
    api.ok(&["label", "cm", "plain", "tier=db"]);
    let p = json(&api.ok(&["get", "cm", "plain", "-o", "json", "--show-managed-fields"]));
    let entries: Vec<(String, String, String)> = p["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap().to_string(),
                m["operation"].as_str().unwrap().to_string(),
                m["fieldsV1"].to_string(),
            )
        })
        .collect();
    assert_eq!(entries[0].0, "kubectl-create");
    assert!(entries[0].2.contains("f:k"), "{entries:?}");
    assert_eq!(
        (entries[1].0.as_str(), entries[1].1.as_str()),
        ("kubectl-label", "Update")
    );
    assert!(entries[1].2.contains("f:tier"), "{entries:?}");
    // An apply that changes a field kubectl-create set conflicts with it.
    let f4 = write(
        dir.path(),
        "plain.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\ndata:\n  k: other\n",
    );
    let err = api.fails(&["apply", "--server-side", "-f", &f4]);
    assert!(err.contains("conflict with \"kubectl-create\""), "{err}");
    // kubectl drops b from its configuration: b goes (nobody else owns it).
    let f3 = write(
        dir.path(),
        "cm3.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\ndata: {}\n",
    );
    api.ok(&["apply", "--server-side", "-f", &f3]);
    assert_eq!(
        json(&api.ok(&["get", "cm", "owned", "-o", "json"]))["data"],
        serde_json::json!({"a": "9"})
    );
}

#[test]
fn watch_sees_later_changes() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    api.ok(&["create", "configmap", "w1", "--from-literal=a=1"]);
    let mut child = api
        .kubectl_command(&[
            "get",
            "cm",
            "-w",
            "--output-watch-events",
            "--request-timeout=0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let expect = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(want) => return l,
                Ok(_) => {}
                Err(_) => panic!("no watch line with {want:?}"),
            }
        }
    };
    expect("ADDED");
    api.ok(&["create", "configmap", "w2", "--from-literal=a=1"]);
    let l = expect("w2");
    assert!(l.starts_with("ADDED"), "{l}");
    api.ok(&["label", "cm", "w1", "x=y"]);
    assert!(expect("w1").starts_with("MODIFIED"));
    api.ok(&["delete", "cm", "w2"]);
    assert!(expect("w2").starts_with("DELETED"));
    let _ = child.kill();
    let _ = child.wait();

    // The raw stream: from a resourceVersion, with a label selector; an object that
    // stops matching is DELETED for that watcher.
    let rv = json(&api.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps"]))["metadata"]
        ["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    api.ok(&["label", "cm", "w1", "x-"]);
    let out = api.ok(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&labelSelector=x%3Dy&timeoutSeconds=1")]);
    let events: Vec<Value> = out.lines().map(json).collect();
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0]["type"], "DELETED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "w1");
    // Bookmarks and the end of the initial events.
    let out = api.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1"]);
    let events: Vec<Value> = out.lines().map(json).collect();
    let bookmark = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .expect("bookmark");
    assert_eq!(
        bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert!(events
        .iter()
        .any(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "w1"));
}

#[test]
fn deletion_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    for i in 0..3 {
        api.ok(&[
            "create",
            "configmap",
            &format!("c{i}"),
            "--from-literal=a=b",
        ]);
    }
    api.ok(&["label", "cm", "c0", "c1", "group=x"]);
    assert_eq!(
        api.ok(&["delete", "cm", "c2"]).trim(),
        "configmap \"c2\" deleted"
    );
    assert!(api
        .fails(&["delete", "cm", "c2"])
        .contains("configmaps \"c2\" not found"));
    api.ok(&["delete", "cm", "-l", "group=x"]);
    // Only the controller-manager's CA bundle is left.
    assert_eq!(
        api.ok(&["get", "cm", "-o", "name"]).trim(),
        "configmap/kube-root-ca.crt"
    );
    for i in 0..3 {
        api.ok(&[
            "create",
            "configmap",
            &format!("d{i}"),
            "--from-literal=a=b",
        ]);
    }
    api.ok(&["delete", "cm", "--all"]);
    // All gone (the controller-manager may already have put its CA bundle back).
    let left = api.ok(&["get", "cm", "-o", "name"]);
    assert!(
        left.lines().all(|l| l == "configmap/kube-root-ca.crt"),
        "{left}"
    );

    // Finalizers hold an object until they are removed.
    api.ok(&["create", "configmap", "held", "--from-literal=a=b"]);
    api.ok(&[
        "patch",
        "cm",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    api.ok(&["delete", "cm", "held", "--wait=false"]);
    let held = json(&api.ok(&["get", "cm", "held", "-o", "json"]));
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    api.ok(&[
        "patch",
        "cm",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    assert!(api.fails(&["get", "cm", "held"]).contains("NotFound"));

    // A pod bound to a node terminates gracefully; --grace-period=0 --force removes it.
    api.ok(&["run", "p", "--image=busybox"]);
    let binding = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"node-1"}}"#;
    let f = write(dir.path(), "binding.json", binding);
    api.ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/p/binding",
        "-f",
        &f,
    ]);
    let pod = json(&api.ok(&["get", "pod", "p", "-o", "json"]));
    assert_eq!(pod["spec"]["nodeName"], "node-1");
    let err = api.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/p/binding",
        "-f",
        &f,
    ]);
    assert!(err.contains("already assigned"), "{err}");
    api.ok(&["delete", "pod", "p", "--wait=false"]);
    let pod = json(&api.ok(&["get", "pod", "p", "-o", "json"]));
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(api
        .ok(&["get", "pod", "p", "--no-headers"])
        .contains("Terminating"));
    api.ok(&["delete", "pod", "p", "--grace-period=0", "--force"]);
    assert!(api.fails(&["get", "pod", "p"]).contains("NotFound"));
    // An unscheduled pod goes at once.
    api.ok(&["run", "q", "--image=busybox"]);
    api.ok(&["delete", "pod", "q"]);
    assert!(api.fails(&["get", "pod", "q"]).contains("NotFound"));
    // Namespaces go Terminating; the namespace controller empties them, reports what
    // holds them in their conditions, and lets them go once empty.
    let err = api.fails(&["delete", "ns", "default"]);
    assert!(
        err.contains("namespaces \"default\" is forbidden: this namespace may not be deleted"),
        "{err}"
    );
    api.ok(&["create", "ns", "gone"]);
    api.ok(&[
        "create",
        "configmap",
        "held",
        "-n",
        "gone",
        "--from-literal=a=b",
    ]);
    api.ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        "gone",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    api.ok(&["delete", "ns", "gone", "--wait=false"]);
    assert_eq!(
        api.ok(&["get", "ns", "gone", "-o", "jsonpath={.status.phase}"]),
        "Terminating"
    );
    let kcm_log =
        || std::fs::read_to_string(dir.path().join("controller-manager.log")).unwrap_or_default();
    integration_tests::wait_until(
        "the namespace controller's conditions",
        30,
        || {
            api.kubectl(&["get", "ns", "gone", "-o", "jsonpath={.status.conditions[?(@.type==\"NamespaceFinalizersRemaining\")].message}"])
                .is_ok_and(|m| m == "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
        },
        kcm_log,
    );
    let described = api.ok(&["describe", "ns", "gone"]);
    assert!(
        described.contains("NamespaceContentRemaining")
            && described.contains("SomeResourcesRemain"),
        "{described}"
    );
    // Only the finalize subresource changes spec.finalizers; other writes keep them.
    api.ok(&["label", "ns", "gone", "x=y"]);
    assert_eq!(
        api.ok(&["get", "ns", "gone", "-o", "jsonpath={.spec.finalizers}"]),
        r#"["kubernetes"]"#
    );
    let err = api.fails(&[
        "create",
        "configmap",
        "late",
        "-n",
        "gone",
        "--from-literal=a=b",
        // (-v=9 shows the response body: the Status names upstream's cause.)
        "-v=9",
    ]);
    assert!(err.contains("because it is being terminated"), "{err}");
    assert!(
        err.contains(r#"{\"field\":\"metadata.namespace\",\"message\":\"namespace is being terminated\",\"reason\":\"NamespaceTerminating\"}"#),
        "{err}"
    );
    let err = api.fails(&[
        "create",
        "configmap",
        "x",
        "-n",
        "missing",
        "--from-literal=a=b",
    ]);
    assert!(err.contains("namespaces \"missing\" not found"), "{err}");
    // With the last finalizer gone from its content, the namespace goes.
    api.ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        "gone",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    integration_tests::wait_until(
        "the namespace gone",
        30,
        || {
            api.kubectl(&["get", "ns", "gone"])
                .is_err_and(|e| e.contains("NotFound"))
        },
        kcm_log,
    );
}

#[test]
fn bad_input_gets_upstream_errors_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    let before = api.ok(&["get", "cm", "-A", "-o", "name"]);
    let f = write(
        dir.path(),
        "bad.json",
        "{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", ",
    );
    let err = api.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        &f,
    ]);
    assert!(err.contains("BadRequest") || err.contains("400"), "{err}");
    // Unknown fields: Strict (kubectl's default) refuses, Ignore drops them.
    let typo = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: typo\nspec:\n  containers:\n  - name: c\n    image: busybox\n    imagee: x\n";
    let f = write(dir.path(), "typo.yaml", typo);
    let err = api.fails(&["create", "-f", &f]);
    assert!(
        err.contains("strict decoding error: unknown field \"spec.containers[0].imagee\""),
        "{err}"
    );
    api.ok(&["create", "-f", &f, "--validate=false"]);
    let pod = json(&api.ok(&["get", "pod", "typo", "-o", "json"]));
    assert!(pod["spec"]["containers"][0].get("imagee").is_none());
    // Invalid objects: 422 with field paths.
    let bad = DEPLOY.replace(
        "labels: {app: web}\n    spec",
        "labels: {app: other}\n    spec",
    );
    let f = write(dir.path(), "bad-deploy.yaml", &bad);
    let err = api.fails(&["create", "-f", &f]);
    assert!(
        err.contains(
            "The Deployment \"web\" is invalid: spec.template.metadata.labels: Invalid value"
        ),
        "{err}"
    );
    assert!(
        err.contains("`selector` does not match template `labels`"),
        "{err}"
    );
    let err = api.fails(&["create", "configmap", "Bad_Name"]);
    assert!(
        err.contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{err}"
    );
    let nocontainers =
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: empty\nspec:\n  containers: []\n";
    let f = write(dir.path(), "empty.yaml", nocontainers);
    let err = api.fails(&["create", "-f", &f]);
    assert!(err.contains("spec.containers: Required value"), "{err}");
    // A kind that does not belong to the path.
    let f = write(
        dir.path(),
        "wrong.json",
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"w"}}"#,
    );
    let err = api.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        &f,
    ]);
    assert!(
        err.contains("BadRequest") || err.contains("400") || err.contains("cannot be handled"),
        "{err}"
    );
    // A body over 3 MiB.
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"x":"{}"}}}}"#,
        "a".repeat(3 * 1024 * 1024 + 10)
    );
    let f = write(dir.path(), "big.json", &big);
    let err = api.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        &f,
    ]);
    assert!(err.contains("413") || err.contains("too large"), "{err}");
    // Bad patches.
    api.ok(&["create", "configmap", "p", "--from-literal=a=b"]);
    let err = api.fails(&[
        "patch",
        "cm",
        "p",
        "--type=json",
        "-p",
        r#"{"not":"a list"}"#,
    ]);
    assert!(!err.is_empty());
    let err = api.fails(&["patch", "cm", "p", "--type=merge", "-p", "{nope"]);
    assert!(!err.is_empty());
    // Service IPs outside the range or taken.
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: fixed\nspec:\n  clusterIP: 10.96.0.1\n  ports:\n  - port: 80\n";
    let f = write(dir.path(), "svc.yaml", svc);
    let err = api.fails(&["create", "-f", &f]);
    assert!(err.contains("provided IP is already allocated"), "{err}");
    let f = write(
        dir.path(),
        "svc2.yaml",
        &svc.replace("10.96.0.1", "192.168.1.1"),
    );
    let err = api.fails(&["create", "-f", &f]);
    assert!(err.contains("is not in the valid range"), "{err}");
    // Nothing of it was stored, and the server keeps serving.
    let after = api.ok(&["get", "cm", "-A", "-o", "name"]);
    assert_eq!(after.replace("configmap/p\n", ""), before);
    assert!(api.fails(&["get", "svc", "fixed"]).contains("NotFound"));
    assert_eq!(api.ok(&["get", "--raw", "/readyz"]), "ok");
    // Unknown resources and anonymous users.
    let err = api.fails(&["get", "--raw", "/apis/nope.example.com/v1/things"]);
    assert!(
        err.contains("NotFound") || err.contains("could not find"),
        "{err}"
    );
    // A user the cluster CA vouches for, without the masters group: forbidden.
    let pki = api.dir.join("pki");
    let (key, csr, crt) = (
        dir.path().join("jane.key"),
        dir.path().join("jane.csr"),
        dir.path().join("jane.crt"),
    );
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-subj",
        "/CN=jane/O=dev",
        "-out",
        csr.to_str().unwrap(),
    ]);
    let ext = write(dir.path(), "ext.cnf", "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n");
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        pki.join("ca.crt").to_str().unwrap(),
        "-CAkey",
        pki.join("ca.key").to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        crt.to_str().unwrap(),
    ]);
    let as_user = |extra: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .args([
                "--server",
                &api.url(),
                "--certificate-authority",
                pki.join("ca.crt").to_str().unwrap(),
                "--request-timeout=5s",
            ])
            .args(extra)
            .args(["get", "pods"])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = as_user(&[
        "--client-certificate",
        crt.to_str().unwrap(),
        "--client-key",
        key.to_str().unwrap(),
    ]);
    assert!(err.contains("pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""), "{err}");
    let err = as_user(&["--token", "not-a-token"]);
    assert!(err.contains("Unauthorized"), "{err}");
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: crontabs, singular: crontab, kind: CronTab, shortNames: [ct]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Spec, type: string, jsonPath: .spec.cronSpec}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [cronSpec]
            properties:
              cronSpec: {type: string, description: "The schedule."}
              image: {type: string}
              replicas: {type: integer, minimum: 1}
          status:
            type: object
            properties:
              replicas: {type: integer}
  - name: v2
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

#[test]
fn custom_resource_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path());
    let crd = write(dir.path(), "crd.yaml", CRD);
    api.ok(&["apply", "-f", &crd]);
    api.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=20s",
        "crd/crontabs.stable.example.com",
    ]);
    let status = json(&api.ok(&["get", "crd", "crontabs.stable.example.com", "-o", "json"]))
        ["status"]
        .clone();
    assert_eq!(status["acceptedNames"]["listKind"], "CronTabList");
    assert_eq!(status["storedVersions"], serde_json::json!(["v1"]));
    let resources = api.ok(&[
        "api-resources",
        "--api-group=stable.example.com",
        "--no-headers",
    ]);
    // The preferred version is the highest (v2), as upstream orders versions.
    assert_eq!(
        resources.split_whitespace().collect::<Vec<_>>(),
        ["crontabs", "ct", "stable.example.com/v2", "true", "CronTab"]
    );
    let versions = api.ok(&["api-versions"]);
    assert!(
        versions.contains("stable.example.com/v1") && versions.contains("stable.example.com/v2"),
        "{versions}"
    );
    let explain = api.ok(&[
        "explain",
        "crontab.spec.cronSpec",
        "--api-version=stable.example.com/v1",
    ]);
    assert!(explain.contains("The schedule."), "{explain}");

    let cr = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: tick\nspec:\n  cronSpec: \"* * * * */5\"\n  image: busybox\n  replicas: 2\n";
    let f = write(dir.path(), "ct.yaml", cr);
    api.ok(&["apply", "-f", &f]);
    // v1's printer columns; v2 (preferred, no columns) prints Name and Age.
    let table = api.ok(&["get", "crontabs.v1.stable.example.com"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SPEC", "REPLICAS", "AGE"]);
    let header = api.ok(&["get", "ct"]);
    assert_eq!(
        header
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "AGE"]
    );
    assert!(table.lines().nth(1).unwrap().starts_with("tick"), "{table}");
    // apply again with a change: kubectl sends a merge patch, generation moves.
    let f = write(dir.path(), "ct.yaml", &cr.replace("busybox", "alpine"));
    assert_eq!(
        api.ok(&["apply", "-f", &f]).trim(),
        "crontab.stable.example.com/tick configured"
    );
    let obj = json(&api.ok(&["get", "ct", "tick", "-o", "json"]));
    assert_eq!(obj["spec"]["image"], "alpine");
    assert_eq!(obj["metadata"]["generation"], 2);
    assert!(obj.get("status").is_none());
    // Another served version shows the same object in that version.
    let v2 = api.ok(&[
        "get",
        "crontabs.v2.stable.example.com",
        "tick",
        "-o",
        "jsonpath={.apiVersion} {.spec.image}",
    ]);
    assert_eq!(v2, "stable.example.com/v2 alpine");
    api.ok(&[
        "scale",
        "crontabs.v1.stable.example.com",
        "tick",
        "--replicas=3",
    ]);
    assert_eq!(
        api.ok(&["get", "ct", "tick", "-o", "jsonpath={.spec.replicas}"]),
        "3"
    );
    // Schema validation, unknown fields, strategic merge patches.
    let bad = write(
        dir.path(),
        "bad.yaml",
        &cr.replace("replicas: 2", "replicas: 0"),
    );
    let err = api.fails(&["apply", "-f", &bad]);
    assert!(
        err.contains("spec.replicas: Invalid value: 0: should be greater than or equal to 1"),
        "{err}"
    );
    let typo = write(
        dir.path(),
        "typo.yaml",
        &cr.replace("name: tick", "name: tock")
            .replace("image:", "imagee:"),
    );
    let err = api.fails(&["create", "-f", &typo]);
    assert!(err.contains("unknown field \"spec.imagee\""), "{err}");
    let missing = write(
        dir.path(),
        "missing.yaml",
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: nope\nspec: {}\n",
    );
    let err = api.fails(&["create", "-f", &missing]);
    assert!(err.contains("spec.cronSpec: Required value"), "{err}");
    let err = api.fails(&[
        "patch",
        "ct",
        "tick",
        "--type=strategic",
        "-p",
        r#"{"spec":{"image":"x"}}"#,
    ]);
    assert!(
        err.contains("UnsupportedMediaType") || err.contains("not supported"),
        "{err}"
    );
    // Deleting the definition deletes its objects, then the definition.
    api.ok(&["delete", "crd", "crontabs.stable.example.com"]);
    assert!(api
        .fails(&["get", "crd", "crontabs.stable.example.com"])
        .contains("NotFound"));
    let err = api.fails(&[
        "get",
        "--raw",
        "/apis/stable.example.com/v1/namespaces/default/crontabs",
    ]);
    assert!(
        err.contains("NotFound") || err.contains("could not find"),
        "{err}"
    );
    api.ok(&["apply", "-f", &crd]);
    api.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=20s",
        "crd/crontabs.stable.example.com",
    ]);
    assert_eq!(
        api.ok(&["get", "ct", "-o", "name"]).trim(),
        "",
        "objects of the old definition are gone"
    );
}
