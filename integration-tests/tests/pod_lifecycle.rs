//! A pod's lifecycle as the seed notes teach it, through stock kubectl: liveness probes
//! restarting containers (the seeds' `touch /tmp/healthy; sleep; rm` exec example),
//! readiness flipping the Ready condition, httpGet and tcpSocket probes on named ports
//! against the project's test server, postStart and preStop hooks, init containers in
//! order (with `Init:N/M`, `Init:Error`), a sidecar init container, and a failing init
//! container under `restartPolicy: Never` failing the pod.

use integration_tests::apiserver::ApiServer;
use integration_tests::node::*;
use serde_json::Value;

fn condition(p: &Value, ty: &str) -> String {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// `kubectl get pod NAME`'s STATUS column.
fn shown_status(api: &ApiServer, name: &str) -> String {
    api.ok(&["get", "pod", name, "--no-headers"])
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn probes_and_hooks() {
    let w = world();
    let api = &w.api;
    let root = w.dir.path().join("kubelet");
    let node = start_node(&w, &root);
    // Bad probes are refused at create, as upstream's validation refuses them.
    let refused = api
        .kubectl_stdin(
            &["apply", "-f", "-"],
            Some(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: badprobe}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    livenessProbe: {httpGet: {path: /, port: Bad_Name}}\n",
            ),
        )
        .unwrap_err();
    assert!(
        refused.contains("spec.containers[0].livenessProbe.httpGet.port: Invalid value: \"Bad_Name\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"),
        "{refused}"
    );
    let host_dir = w.dir.path().join("hooks");
    std::fs::create_dir_all(&host_dir).unwrap();
    apply(
        api,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: liveness-exec, labels: {{test: liveness}}}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 2
  containers:
  - name: liveness
    image: busybox
    args: [/bin/sh, -c, "touch /tmp/healthy; sleep 4; rm -f /tmp/healthy; sleep 600"]
    livenessProbe:
      exec: {{command: [cat, /tmp/healthy]}}
      initialDelaySeconds: 1
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 5
  containers:
  - name: web
    image: ferrokube/test-server
    args: ["--port", "8080"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      httpGet: {{path: /readyz, port: http, httpHeaders: [{{name: X-Check, value: "1"}}]}}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 2
    startupProbe:
      httpGet: {{path: /healthz, port: 8080}}
      periodSeconds: 1
      failureThreshold: 30
  - name: unready
    image: ferrokube/test-server
    args: ["--port", "8081"]
    readinessProbe:
      httpGet: {{path: /nope, port: 8081}}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: hooks}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 5
  containers:
  - name: c
    image: busybox
    command: [sleep, "600"]
    lifecycle:
      postStart:
        exec: {{command: [/bin/sh, -c, "echo started > /hooks/poststart"]}}
      preStop:
        exec: {{command: [/bin/sh, -c, "echo stopping > /hooks/prestop"]}}
    volumeMounts: [{{name: hooks, mountPath: /hooks}}]
  volumes:
  - {{name: hooks, hostPath: {{path: {hooks}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: badhook}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: [sleep, "600"]
    lifecycle:
      postStart:
        exec: {{command: [/bin/sh, -c, "exit 3"]}}
"#,
            hooks = host_dir.display()
        ),
    );
    // The seeds' liveness example: healthy, then the file goes, the probe fails, the
    // kubelet kills and restarts the container.
    wait_for(
        "liveness-exec to be restarted",
        60,
        || {
            pod(api, "liveness-exec")["status"]["containerStatuses"][0]["restartCount"].as_u64()
                >= Some(1)
        },
        &node,
    );
    let ev = events_for(api, "liveness-exec");
    assert!(
        ev.contains(
            "Liveness probe failed: cat: can't open '/tmp/healthy': No such file or directory"
        ),
        "{ev}"
    );
    assert!(
        ev.contains("Container liveness failed liveness probe, will be restarted"),
        "{ev}"
    );
    let last = pod(api, "liveness-exec")["status"]["containerStatuses"][0]["lastState"]
        ["terminated"]
        .clone();
    assert!(last["exitCode"] == 137 || last["exitCode"] == 143, "{last}");

    // Readiness: not ready, ready, not ready again — never restarted.
    apply(
        api,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: readiness}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    args: [/bin/sh, -c, "sleep 3; touch /tmp/ready; sleep 5; rm /tmp/ready; sleep 600"]
    readinessProbe:
      exec: {command: [test, -f, /tmp/ready]}
      periodSeconds: 1
      failureThreshold: 1
"#,
    );
    wait_for(
        "readiness to become Ready",
        30,
        || condition(&pod(api, "readiness"), "Ready") == "True",
        &node,
    );
    assert_eq!(
        pod(api, "readiness")["status"]["containerStatuses"][0]["ready"],
        true
    );
    wait_for(
        "readiness to become unready",
        30,
        || condition(&pod(api, "readiness"), "Ready") == "False",
        &node,
    );
    let p = pod(api, "readiness");
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(p["status"]["phase"], "Running");
    assert!(events_for(api, "readiness").contains("Readiness probe failed"));
    let ready_col = api.ok(&["get", "pod", "readiness", "--no-headers"]);
    assert!(ready_col.contains(" 0/1 "), "{ready_col}");

    // HTTP probes on a named port: the startup probe passes, the server is ready
    // (httpGet) and alive (tcpSocket); its neighbour's readiness path answers 404.
    wait_for(
        "web's server to be ready",
        30,
        || pod(api, "web")["status"]["containerStatuses"][1]["ready"] == true,
        &node,
    );
    let p = pod(api, "web");
    let web = &p["status"]["containerStatuses"][1];
    assert_eq!(web["name"], "web");
    assert_eq!(web["started"], true);
    assert_eq!(web["restartCount"], 0);
    wait_for(
        "unready's readiness failure",
        30,
        || {
            events_for(api, "web")
                .contains("Readiness probe failed: HTTP probe failed with statuscode: 404")
        },
        &node,
    );
    assert_eq!(condition(&pod(api, "web"), "Ready"), "False");
    assert!(api
        .ok(&["get", "pod", "web", "--no-headers"])
        .contains(" 1/2 "));
    // postStart ran in the container.
    wait_for(
        "hooks' postStart hook",
        30,
        || std::fs::read_to_string(host_dir.join("poststart")).is_ok_and(|s| s == "started\n"),
        &node,
    );

    // A failing postStart hook kills the container, which restarts.
    wait_for(
        "badhook's FailedPostStartHook",
        30,
        || events_for(api, "badhook").contains("FailedPostStartHook"),
        &node,
    );
    let ev = events_for(api, "badhook");
    assert!(ev.contains("Exec lifecycle hook ([/bin/sh -c exit 3]) for Container \"c\" in Pod \"badhook_default("), "{ev}");
    wait_for(
        "badhook to restart",
        60,
        || {
            pod(api, "badhook")["status"]["containerStatuses"][0]["restartCount"].as_u64()
                >= Some(1)
        },
        &node,
    );

    // preStop runs before the container is stopped.
    api.ok(&["delete", "pod", "hooks", "--wait=false"]);
    wait_for(
        "web's preStop hook",
        30,
        || std::fs::read_to_string(host_dir.join("prestop")).is_ok_and(|s| s == "stopping\n"),
        &node,
    );
    delete_all_pods(
        api,
        &["liveness-exec", "readiness", "badhook", "web"],
        &node,
    );
}

#[test]
fn init_containers_in_order() {
    let w = world();
    let api = &w.api;
    let root = w.dir.path().join("kubelet");
    let node = start_node(&w, &root);
    apply(
        api,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ordered}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  initContainers:
  - {name: first, image: busybox, command: [sh, -c, "echo one >> /work/order"], volumeMounts: [{name: work, mountPath: /work}]}
  - {name: second, image: busybox, command: [sh, -c, "sleep 3; echo two >> /work/order"], volumeMounts: [{name: work, mountPath: /work}]}
  - {name: sidecar, image: busybox, restartPolicy: Always, command: [sh, -c, "echo side >> /work/order; sleep 600"], volumeMounts: [{name: work, mountPath: /work}]}
  containers:
  - {name: app, image: busybox, command: [sh, -c, "cat /work/order; echo app >> /work/order; sleep 600"], volumeMounts: [{name: work, mountPath: /work}]}
  volumes:
  - {name: work, emptyDir: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: init-fails}
spec:
  nodeName: node-1
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  initContainers:
  - {name: broken, image: busybox, command: [sh, -c, "exit 2"]}
  containers:
  - {name: app, image: busybox, command: [sleep, "600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: last-words}
spec:
  nodeName: node-1
  restartPolicy: Never
  containers:
  - {name: written, image: busybox, command: [sh, -c, "echo bye > /dev/termination-log; exit 3"]}
  - {name: logged, image: busybox, terminationMessagePolicy: FallbackToLogsOnError, command: [sh, -c, "echo from the logs; exit 4"]}
---
apiVersion: v1
kind: Pod
metadata: {name: init-retries}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  initContainers:
  - {name: broken, image: busybox, command: [sh, -c, "exit 1"]}
  containers:
  - {name: app, image: busybox, command: [sleep, "600"]}
"#,
    );
    // While `second` sleeps, kubectl shows Init:1/3.
    wait_for(
        "ordered to show Init:1/3",
        30,
        || shown_status(api, "ordered") == "Init:1/3",
        &node,
    );
    let p = pod(api, "ordered");
    assert_eq!(condition(&p, "Initialized"), "False");
    assert_eq!(p["status"]["phase"], "Pending");
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    wait_for(
        "ordered to run",
        30,
        || {
            pod(api, "ordered")["status"]["phase"] == "Running"
                && shown_status(api, "ordered") == "Running"
        },
        &node,
    );
    let p = pod(api, "ordered");
    assert_eq!(condition(&p, "Initialized"), "True");
    let inits = p["status"]["initContainerStatuses"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(inits[0]["state"]["terminated"]["reason"], "Completed");
    assert_eq!(inits[1]["state"]["terminated"]["reason"], "Completed");
    assert!(
        inits[2]["state"]["running"].is_object(),
        "the sidecar keeps running"
    );
    // Both the sidecar and the app count as ready containers.
    wait_for(
        "ordered to be 2/2 ready",
        30,
        || {
            api.ok(&["get", "pod", "ordered", "--no-headers"])
                .contains(" 2/2 ")
        },
        &node,
    );
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let order = std::fs::read_to_string(root.join(format!(
        "pods/{uid}/volumes/kubernetes.io~empty-dir/work/order"
    )))
    .unwrap();
    assert_eq!(order, "one\ntwo\nside\napp\n");

    // restartPolicy Never: the failed init container fails the pod.
    wait_for(
        "init-fails to fail",
        30,
        || pod(api, "init-fails")["status"]["phase"] == "Failed",
        &node,
    );
    assert_eq!(shown_status(api, "init-fails"), "Init:Error");
    assert_eq!(
        pod(api, "init-fails")["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    // Termination messages: the file the container wrote, or its log's end.
    wait_for(
        "last-words to end",
        30,
        || pod(api, "last-words")["status"]["phase"] == "Failed",
        &node,
    );
    let st = pod(api, "last-words")["status"]["containerStatuses"].clone();
    assert_eq!(st[0]["name"], "logged");
    assert_eq!(
        st[0]["state"]["terminated"]["message"], "from the logs\n",
        "{st}"
    );
    assert_eq!(st[1]["state"]["terminated"]["message"], "bye\n", "{st}");
    assert_eq!(st[1]["state"]["terminated"]["exitCode"], 3);
    // Otherwise it is retried with back-off.
    wait_for(
        "init-retries to back off",
        60,
        || shown_status(api, "init-retries") == "Init:CrashLoopBackOff",
        &node,
    );
    assert_eq!(pod(api, "init-retries")["status"]["phase"], "Pending");
    delete_all_pods(
        api,
        &["ordered", "init-fails", "init-retries", "last-words"],
        &node,
    );
}
