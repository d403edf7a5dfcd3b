//! A container's configuration as upstream's kubelet makes it, through stock kubectl:
//! environment (env/envFrom, fieldRef, resourceFieldRef, ConfigMap and Secret keys,
//! service variables, `$(VAR)` in command and args) and volumes (emptyDir on disk and in
//! memory, hostPath with its type checks, configMap with live update and a subPath that
//! does not update, secret with modes, downwardAPI, projected), plus the upstream errors
//! for what is missing. The containers write what they see into an emptyDir, which the
//! test reads on the node.

use std::path::{Path, PathBuf};

use integration_tests::apiserver::ApiServer;
use integration_tests::node::*;

/// The host directory of a pod's emptyDir volume.
fn empty_dir(root: &Path, api: &ApiServer, pod_name: &str, volume: &str) -> PathBuf {
    let uid = pod(api, pod_name)["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    root.join("pods")
        .join(uid)
        .join("volumes/kubernetes.io~empty-dir")
        .join(volume)
}

#[test]
fn environment_and_volumes_as_upstream() {
    let w = world();
    let api = &w.api;
    let root = w.dir.path().join("kubelet");
    let node = start_node(&w, &root);
    let host_dir = w.dir.path().join("host-data");
    apply(
        api,
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data:
  who: world
  app.conf: "x=1"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: odd}
data: {1st: skipped, fine: kept}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret, user: admin}
---
apiVersion: v1
kind: Service
metadata: {name: web-front}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
"#,
    );
    // (Backslashes doubled twice: once for Rust, once for the YAML string.)
    let script = "tr '\\\\0' '\\\\n' < /proc/1/environ > /out/env; echo '$(GREETING) $(MY_NODE) $$(MY_NODE)' > /out/args; \
        cat /cfg/app.conf > /out/cfg; cat /sec/password > /out/sec; \
        stat -Lc %a /sec/password > /out/sec-mode; cat /dw/labels > /out/labels; \
        cat /dw/cpu > /out/cpu; cat /all/who /all/user /all/ns > /out/projected; \
        grep ' /mem ' /proc/mounts > /out/mem; echo hi > /host/hello; \
        while true; do cat /cfg/who > /out/live; cat /pinned > /out/pinned; sleep 1; done";
    apply(
        api,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: conf, labels: {{app: web}}}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "{script}"]
    resources: {{limits: {{cpu: 500m, memory: 64Mi}}}}
    envFrom:
    - configMapRef: {{name: cfg}}
      prefix: CM_
    - configMapRef: {{name: odd}}
    env:
    - {{name: GREETING, value: "hello $(CM_who) $$(CM_who)"}}
    - name: MY_POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    - name: MY_NODE
      valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
    - name: MEM_LIMIT
      valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}
    - name: PASS
      valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}
    volumeMounts:
    - {{name: out, mountPath: /out}}
    - {{name: cfg, mountPath: /cfg, readOnly: true}}
    - {{name: cfg, mountPath: /pinned, subPath: who}}
    - {{name: sec, mountPath: /sec}}
    - {{name: dw, mountPath: /dw}}
    - {{name: all, mountPath: /all}}
    - {{name: mem, mountPath: /mem}}
    - {{name: host, mountPath: /host}}
  volumes:
  - {{name: out, emptyDir: {{}}}}
  - {{name: mem, emptyDir: {{medium: Memory, sizeLimit: 8Mi}}}}
  - {{name: cfg, configMap: {{name: cfg}}}}
  - name: sec
    secret:
      secretName: creds
      items: [{{key: password, path: password, mode: 0400}}]
  - name: dw
    downwardAPI:
      items:
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: cpu, resourceFieldRef: {{containerName: c, resource: limits.cpu, divisor: 1m}}}}
  - name: all
    projected:
      sources:
      - configMap: {{name: cfg, items: [{{key: who, path: who}}]}}
      - secret: {{name: creds, items: [{{key: user, path: user}}]}}
      - downwardAPI: {{items: [{{path: ns, fieldRef: {{fieldPath: metadata.namespace}}}}]}}
  - name: host
    hostPath: {{path: {host}, type: DirectoryOrCreate}}
"#,
            host = host_dir.display()
        ),
    );
    wait_for(
        "conf to run",
        60,
        || pod(api, "conf")["status"]["phase"] == "Running",
        &node,
    );
    let out = empty_dir(&root, api, "conf", "out");
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    wait_for(
        "the container's files",
        30,
        || !read("pinned").is_empty(),
        &node,
    );
    let env = read("env");
    let pod_ip = pod(api, "conf")["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    let svc_ip = api.ok(&[
        "get",
        "svc",
        "web-front",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    for want in [
        "CM_who=world".to_string(),
        "CM_app.conf=x=1".to_string(),
        "fine=kept".to_string(),
        format!("MY_POD_IP={pod_ip}"),
        "MY_NODE=node-1".to_string(),
        "MEM_LIMIT=64".to_string(),
        "PASS=s3cret".to_string(),
        "GREETING=hello world $(CM_who)".to_string(),
        format!("WEB_FRONT_SERVICE_HOST={svc_ip}"),
        "WEB_FRONT_SERVICE_PORT_HTTP=80".to_string(),
        format!("WEB_FRONT_PORT_80_TCP=tcp://{svc_ip}:80"),
        "KUBERNETES_SERVICE_HOST=10.96.0.1".to_string(),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in:\n{env}");
    }
    assert!(!env.contains("1st"), "{env}");
    assert!(
        events_for(api, "conf").contains(
            "Keys [1st] from the EnvFrom configMap default/odd were skipped since they are considered invalid environment variable names."
        ),
        "{}",
        events_for(api, "conf")
    );
    assert_eq!(
        read("args").trim(),
        "hello world $(CM_who) node-1 $(MY_NODE)"
    );
    assert_eq!(read("cfg"), "x=1");
    assert_eq!(read("sec"), "s3cret");
    assert_eq!(read("sec-mode").trim(), "400");
    assert_eq!(read("labels").trim(), "app=\"web\"");
    assert_eq!(read("cpu").trim(), "500");
    assert_eq!(read("projected"), "worldadmindefault");
    assert!(read("mem").contains("tmpfs"), "{}", read("mem"));
    assert!(read("mem").contains("size=8192k"), "{}", read("mem"));
    assert_eq!(
        std::fs::read_to_string(host_dir.join("hello")).unwrap(),
        "hi\n"
    );
    // The secret volume is a tmpfs on the node.
    let uid = pod(api, "conf")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let sec_dir = root.join(format!("pods/{uid}/volumes/kubernetes.io~secret/sec"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts.contains(&format!(" {} ", sec_dir.display())),
        "secret volume not on tmpfs"
    );
    // A ConfigMap change reaches the mounted files, not the subPath one.
    assert_eq!(read("live").trim(), "world");
    api.ok(&[
        "patch",
        "configmap",
        "cfg",
        "-p",
        r#"{"data":{"who":"everyone"}}"#,
    ]);
    wait_for(
        "the configMap update in the volume",
        60,
        || read("live").trim() == "everyone",
        &node,
    );
    assert_eq!(
        read("pinned").trim(),
        "world",
        "subPath mounts do not update"
    );

    // What is missing, as upstream reports it.
    apply(
        api,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: nokey}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sleep", "3600"]
    env:
    - name: X
      valueFrom: {configMapKeyRef: {name: cfg, key: nokey}}
---
apiVersion: v1
kind: Pod
metadata: {name: nomap}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox, command: ["sleep", "3600"], volumeMounts: [{name: v, mountPath: /v}]}
  volumes:
  - {name: v, configMap: {name: later}}
---
apiVersion: v1
kind: Pod
metadata: {name: nodir}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox, command: ["sleep", "3600"], volumeMounts: [{name: v, mountPath: /v}]}
  volumes:
  - {name: v, hostPath: {path: /nonexistent/ferrokube-test, type: Directory}}
"#,
    );
    wait_for(
        "nokey's CreateContainerConfigError",
        30,
        || {
            pod(api, "nokey")["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CreateContainerConfigError"
        },
        &node,
    );
    let waiting = pod(api, "nokey")["status"]["containerStatuses"][0]["state"]["waiting"].clone();
    assert_eq!(
        waiting["message"], "couldn't find key nokey in ConfigMap default/cfg",
        "{waiting}"
    );
    assert!(events_for(api, "nokey")
        .contains("Error: couldn't find key nokey in ConfigMap default/cfg"));
    wait_for(
        "the FailedMount events",
        30,
        || {
            events_for(api, "nomap").contains("FailedMount")
                && events_for(api, "nodir").contains("FailedMount")
        },
        &node,
    );
    assert!(events_for(api, "nomap")
        .contains("MountVolume.SetUp failed for volume \"v\" : configmap \"later\" not found"));
    assert!(events_for(api, "nodir").contains(
        "MountVolume.SetUp failed for volume \"v\" : hostPath type check failed: /nonexistent/ferrokube-test is not a directory"
    ));
    let shown = api.ok(&["get", "pod", "nomap", "--no-headers"]);
    assert!(shown.contains("ContainerCreating"), "{shown}");
    // Once the ConfigMap is there, the pod starts.
    api.ok(&["create", "configmap", "later", "--from-literal=k=v"]);
    wait_for(
        "nomap to run once its ConfigMap exists",
        60,
        || pod(api, "nomap")["status"]["phase"] == "Running",
        &node,
    );
    // An emptyDir over its sizeLimit: the pod is evicted, as upstream's kubelet does it.
    apply(
        api,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  nodeName: node-1
  containers:
  - name: c
    image: busybox
    command: [sh, -c, "dd if=/dev/zero of=/data/big bs=1024 count=2048; sleep 3600"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - {name: data, emptyDir: {sizeLimit: 1Mi}}
"#,
    );
    wait_for(
        "hog's eviction",
        60,
        || pod(api, "hog")["status"]["reason"] == "Evicted",
        &node,
    );
    let hog = pod(api, "hog");
    assert_eq!(hog["status"]["phase"], "Failed");
    assert_eq!(
        hog["status"]["message"],
        "Usage of EmptyDir volume \"data\" exceeds the limit \"1Mi\". "
    );
    assert!(events_for(api, "hog").contains("Evicted"));
    wait_for(
        "hog's container to be killed",
        30,
        || pod(api, "hog")["status"]["containerStatuses"][0]["state"]["terminated"].is_object(),
        &node,
    );
    // The other pods were never disturbed.
    assert_eq!(pod(api, "conf")["status"]["phase"], "Running");
    delete_all_pods(api, &["conf", "nokey", "nomap", "nodir", "hog"], &node);
    // Their volumes' mounts went with them.
    wait_for(
        "the volume mounts to go",
        30,
        || {
            let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            !m.contains(&format!("{}/pods/", root.display()))
        },
        &node,
    );
}

/// The claims of a JWT (not verified: the API server checks them).
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("{token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A kubeconfig of the same cluster whose user is a bearer token.
#[test]
fn service_account_tokens() {
    let w = world();
    let api = &w.api;
    let dir = w.dir.path();
    let node = start_node(&w, &dir.join("kubelet"));
    apply(
        api,
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: robot}
---
apiVersion: v1
kind: Pod
metadata: {name: tok}
spec:
  nodeName: node-1
  serviceAccountName: robot
  volumes:
  - name: tokens
    projected:
      sources:
      - serviceAccountToken: {path: api-token}
      - serviceAccountToken: {path: vault-token, audience: vault, expirationSeconds: 7200}
      - downwardAPI: {items: [{path: namespace, fieldRef: {fieldPath: metadata.namespace}}]}
  containers:
  - name: c
    image: busybox
    command: [sleep, '3600']
    volumeMounts: [{name: tokens, mountPath: /var/run/secrets/tokens, readOnly: true}]
"#,
    );
    wait_for(
        "tok to run",
        60,
        || pod(api, "tok")["status"]["phase"] == "Running",
        &node,
    );
    let pod_uid = pod(api, "tok")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let read = |f: &str| {
        api.ok(&[
            "exec",
            "tok",
            "--",
            "cat",
            &format!("/var/run/secrets/tokens/{f}"),
        ])
    };
    let api_token = read("api-token");
    let vault_token = read("vault-token");
    assert_eq!(read("namespace"), "default");

    // Bound to the pod, for the audience asked (the API server's by default), for the
    // lifetime asked (an hour by default).
    let c = jwt_claims(&api_token);
    assert_eq!(c["sub"], "system:serviceaccount:default:robot");
    assert_eq!(c["iss"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(
        c["aud"],
        serde_json::json!(["https://kubernetes.default.svc.cluster.local"])
    );
    assert_eq!(c["kubernetes.io"]["pod"]["name"], "tok");
    assert_eq!(c["kubernetes.io"]["pod"]["uid"], pod_uid.as_str());
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3600
    );
    let v = jwt_claims(&vault_token);
    assert_eq!(v["aud"], serde_json::json!(["vault"]));
    assert_eq!(
        v["exp"].as_i64().unwrap() - v["iat"].as_i64().unwrap(),
        7200
    );

    // The API knows the account (which, without RBAC grants, may not list pods); a token
    // for another audience is not a credential here.
    let e = api
        .kubectl_as_token(&api_token, &["get", "pods"])
        .unwrap_err();
    assert!(
        e.contains(r#"User "system:serviceaccount:default:robot" cannot list resource "pods" in API group "" in the namespace "default""#),
        "{e}"
    );
    let e = api
        .kubectl_as_token(&vault_token, &["get", "pods"])
        .unwrap_err();
    assert!(e.contains("Unauthorized"), "{e}");

    // `kubectl create token`, bound or not, and its errors.
    let plain = api.ok(&["create", "token", "robot"]).trim().to_string();
    assert!(jwt_claims(&plain)["kubernetes.io"]["pod"].is_null());
    let e = api.kubectl_as_token(&plain, &["get", "pods"]).unwrap_err();
    assert!(e.contains("system:serviceaccount:default:robot"), "{e}");
    let bound = api
        .ok(&[
            "create",
            "token",
            "robot",
            "--bound-object-kind=Pod",
            "--bound-object-name=tok",
            "--audience=vault",
            "--duration=2h",
        ])
        .trim()
        .to_string();
    let b = jwt_claims(&bound);
    assert_eq!(b["kubernetes.io"]["pod"]["uid"], pod_uid.as_str());
    assert_eq!(
        b["exp"].as_i64().unwrap() - b["iat"].as_i64().unwrap(),
        7200
    );
    let e = api.fails(&["create", "token", "robot", "--duration=5m"]);
    assert!(
        e.contains("may not specify a duration less than 10 minutes"),
        "{e}"
    );
    let e = api.fails(&["create", "token", "nosuch"]);
    assert!(e.contains(r#"serviceaccounts "nosuch" not found"#), "{e}");
    let e = api.fails(&[
        "create",
        "token",
        "robot",
        "--bound-object-kind=Pod",
        "--bound-object-name=nosuch",
    ]);
    assert!(e.contains(r#"pods "nosuch" not found"#), "{e}");
    api.ok(&["create", "serviceaccount", "other"]);
    let e = api.fails(&[
        "create",
        "token",
        "other",
        "--bound-object-kind=Pod",
        "--bound-object-name=tok",
    ]);
    assert!(
        e.contains(r#"cannot bind token for serviceaccount "other" to pod running with different serviceaccount name."#),
        "{e}"
    );

    // A token bound to a pod ends with the pod; any token ends with its account.
    delete_all_pods(api, &["tok"], &node);
    let e = api
        .kubectl_as_token(&api_token, &["get", "pods"])
        .unwrap_err();
    assert!(e.contains("Unauthorized"), "{e}");
    api.ok(&["delete", "serviceaccount", "robot"]);
    let e = api.kubectl_as_token(&plain, &["get", "pods"]).unwrap_err();
    assert!(e.contains("Unauthorized"), "{e}");
}

/// The path ServiceAccount admission mounts the account's credentials at.
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[test]
fn default_service_account_credentials() {
    let w = world();
    let api = &w.api;
    let dir = w.dir.path();
    let node = start_node(&w, &dir.join("kubelet"));
    apply(
        api,
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: quiet}
automountServiceAccountToken: false
imagePullSecrets: [{name: regcred}]
---
apiVersion: v1
kind: Pod
metadata: {name: plain}
spec:
  nodeName: node-1
  initContainers:
  - {name: init, image: busybox, command: [sh, -c, "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace > /work/ns"],
     volumeMounts: [{name: work, mountPath: /work}]}
  containers:
  - {name: c, image: busybox, command: [sleep, '3600'], volumeMounts: [{name: work, mountPath: /work}]}
  volumes: [{name: work, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata: {name: optout}
spec:
  nodeName: node-1
  automountServiceAccountToken: false
  containers: [{name: c, image: busybox, command: [sleep, '3600']}]
---
apiVersion: v1
kind: Pod
metadata: {name: quiet-default}
spec:
  serviceAccountName: quiet
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: quiet-optin}
spec:
  serviceAccountName: quiet
  automountServiceAccountToken: true
  imagePullSecrets: [{name: own}]
  containers: [{name: c, image: busybox}]
"#,
    );
    wait_for(
        "plain to run",
        60,
        || pod(api, "plain")["status"]["phase"] == "Running",
        &node,
    );

    // The projected volume as upstream's admission writes it, in every container.
    let p = pod(api, "plain");
    assert_eq!(p["spec"]["serviceAccountName"], "default");
    let volume = p["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("kube-api-access-"))
        .expect("the token volume")
        .clone();
    let name = volume["name"].as_str().unwrap();
    assert_eq!(name.len(), "kube-api-access-".len() + 5);
    assert_eq!(
        volume["projected"],
        serde_json::json!({
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        })
    );
    for c in ["initContainers", "containers"] {
        let mounts = &p["spec"][c][0]["volumeMounts"];
        assert!(
            mounts.as_array().unwrap().contains(&serde_json::json!(
                {"name": name, "readOnly": true, "mountPath": SA_DIR}
            )),
            "{c}: {mounts}"
        );
    }

    // Its files: the namespace (also seen by the init container), the cluster's CA, and
    // a token of the default account bound to the pod that the API accepts.
    let read = |f: &str| api.ok(&["exec", "plain", "--", "cat", &format!("{SA_DIR}/{f}")]);
    assert_eq!(read("namespace"), "default");
    assert_eq!(
        api.ok(&["exec", "plain", "--", "cat", "/work/ns"]),
        "default"
    );
    let ca = std::fs::read_to_string(api.dir.join("pki/ca.crt")).unwrap();
    assert_eq!(read("ca.crt"), ca);
    let token = read("token");
    let c = jwt_claims(&token);
    assert_eq!(c["sub"], "system:serviceaccount:default:default");
    assert_eq!(c["kubernetes.io"]["pod"]["name"], "plain");
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3607
    );
    let e = api.kubectl_as_token(&token, &["get", "pods"]).unwrap_err();
    assert!(
        e.contains(r#"User "system:serviceaccount:default:default" cannot list resource "pods""#),
        "{e}"
    );
    let e = api.fails(&["exec", "plain", "--", "touch", &format!("{SA_DIR}/x")]);
    assert!(e.contains("Read-only file system"), "{e}");

    // Opting out: the pod's choice wins over the account's.
    let volumes_of = |name: &str| pod(api, name)["spec"]["volumes"].clone();
    assert!(volumes_of("optout").is_null());
    assert!(volumes_of("quiet-default").is_null());
    let optin = volumes_of("quiet-optin");
    assert!(optin[0]["name"]
        .as_str()
        .unwrap()
        .starts_with("kube-api-access-"));
    // The account's pull secrets go to pods that name none.
    assert_eq!(
        pod(api, "quiet-default")["spec"]["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}])
    );
    assert_eq!(
        pod(api, "quiet-optin")["spec"]["imagePullSecrets"],
        serde_json::json!([{"name": "own"}])
    );

    // An account that does not exist.
    let e = api.fails(&[
        "run",
        "lost",
        "--image=busybox",
        "--overrides",
        r#"{"apiVersion":"v1","spec":{"serviceAccountName":"nosuch"}}"#,
    ]);
    assert!(
        e.contains(r#"pods "lost" is forbidden: error looking up service account default/nosuch: serviceaccount "nosuch" not found"#),
        "{e}"
    );
    delete_all_pods(
        api,
        &["plain", "optout", "quiet-default", "quiet-optin"],
        &node,
    );
}
