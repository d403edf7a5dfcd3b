//! Jobs on a real node (runc, busybox) with kube-scheduler and kube-controller-manager:
//! the seeds' parallel Job running to completion, a failing Job hitting its
//! backoffLimit after the 10 s back-off, Indexed completion, a pod failure policy,
//! activeDeadlineSeconds, suspend and resume, ttlSecondsAfterFinished and
//! `kubectl create job`; a CronJob firing every minute (and `kubectl create job --from`).

use integration_tests::apiserver::ApiServer;
use integration_tests::node::*;

fn jsonpath(api: &ApiServer, what: &[&str], path: &str) -> String {
    api.jsonpath(what, path)
}

fn condition(api: &ApiServer, job: &str, ty: &str) -> String {
    jsonpath(
        api,
        &["job", job],
        &format!("{{.status.conditions[?(@.type==\"{ty}\")].status}}/{{.status.conditions[?(@.type==\"{ty}\")].reason}}/{{.status.conditions[?(@.type==\"{ty}\")].message}}"),
    )
}

#[test]
fn jobs_run_to_completion_fail_and_clean_up() {
    let w = world();
    let api = &w.api;
    let node = start_node(&w, &w.dir.path().join("kubelet"));
    let _sched = integration_tests::node::start_scheduler(api);

    // The seeds' job-multi (busybox for alpine, a short sleep): 5 completions, 2 at a time.
    apply(
        api,
        "apiVersion: batch/v1
kind: Job
metadata: {name: job-multi}
spec:
  parallelism: 2
  completions: 5
  template:
    spec:
      restartPolicy: OnFailure
      containers:
      - name: myjob
        image: busybox
        command: ['/bin/sh', '-c', 'sleep 1']
",
    );
    // A failing Job: one retry after the 10 s back-off, then BackoffLimitExceeded.
    apply(
        api,
        "apiVersion: batch/v1
kind: Job
metadata: {name: failing}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ['sh', '-c', 'exit 3']}]
",
    );
    // Indexed: each pod knows its index.
    apply(
        api,
        "apiVersion: batch/v1
kind: Job
metadata: {name: indexed}
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 3
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ['sh', '-c', 'echo index=$JOB_COMPLETION_INDEX']}]
",
    );
    // A pod failure policy: exit code 42 fails the Job at once.
    apply(
        api,
        "apiVersion: batch/v1
kind: Job
metadata: {name: policy}
spec:
  backoffLimit: 6
  podFailurePolicy:
    rules:
    - action: FailJob
      onExitCodes: {containerName: main, operator: In, values: [42]}
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox, command: ['sh', '-c', 'exit 42']}]
",
    );
    // activeDeadlineSeconds ends a Job that runs too long.
    apply(
        api,
        "apiVersion: batch/v1
kind: Job
metadata: {name: slow}
spec:
  activeDeadlineSeconds: 3
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: busybox, command: ['sleep', '300']}]
",
    );
    // Created suspended: no pods until resumed. With a TTL: gone after it finishes.
    apply(
        api,
        "apiVersion: batch/v1
kind: Job
metadata: {name: later}
spec:
  suspend: true
  ttlSecondsAfterFinished: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ['true']}]
",
    );
    api.ok(&[
        "create",
        "job",
        "hello",
        "--image=busybox",
        "--",
        "echo",
        "hello from a job",
    ]);
    let done = |job: &str| condition(api, job, "Complete").starts_with("True/");
    let failed = |job: &str| condition(api, job, "Failed").starts_with("True/");

    // job-multi: five pods, never more than two at once, all counted.
    wait_for("job-multi complete", 120, || done("job-multi"), &node);
    assert_eq!(
        jsonpath(
            api,
            &["job", "job-multi"],
            "{.status.succeeded}/{.status.active}/{.status.failed}"
        ),
        "5/0/0"
    );
    assert_eq!(
        condition(api, "job-multi", "Complete"),
        "True/CompletionsReached/Reached expected number of succeeded pods"
    );
    assert!(condition(api, "job-multi", "SuccessCriteriaMet").starts_with("True/"));
    assert!(!jsonpath(api, &["job", "job-multi"], "{.status.completionTime}").is_empty());
    let table = api.ok(&["get", "job", "job-multi", "--no-headers"]);
    assert!(table.split_whitespace().any(|c| c == "5/5"), "{table}");
    let created = events_for(api, "job-multi")
        .lines()
        .filter(|l| l.starts_with("SuccessfulCreate"))
        .count();
    assert_eq!(created, 5);
    assert!(events_for(api, "job-multi").contains("Completed"));
    // Counted pods keep no tracking finalizer; they carry the Job's labels.
    let pods = api.ok(&[
        "get", "pods", "-l", "job-name=job-multi", "-o",
        "jsonpath={range .items[*]}{.metadata.finalizers}{\"|\"}{.metadata.labels.batch\\.kubernetes\\.io/job-name}{\"\\n\"}{end}",
    ]);
    assert_eq!(pods.lines().count(), 5, "{pods}");
    assert!(pods.lines().all(|l| l == "|job-multi"), "{pods}");
    // At most two ran at once: no pod started before two earlier ones had finished.
    let times = api.ok(&[
        "get", "pods", "-l", "job-name=job-multi", "-o",
        "jsonpath={range .items[*]}{.status.containerStatuses[0].state.terminated.startedAt} {.status.containerStatuses[0].state.terminated.finishedAt}{\"\\n\"}{end}",
    ]);
    let spans: Vec<(String, String)> = times
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    for (start, _) in &spans {
        let overlapping = spans
            .iter()
            .filter(|(s, f)| s <= start && f > start)
            .count();
        assert!(overlapping <= 2, "{times}");
    }

    // Indexed: indexes 0-2 completed, each pod printed its own.
    wait_for("indexed complete", 60, || done("indexed"), &node);
    assert_eq!(
        jsonpath(api, &["job", "indexed"], "{.status.completedIndexes}"),
        "0-2"
    );
    let one = api.ok(&[
        "get",
        "pods",
        "-l",
        "job-name=indexed,batch.kubernetes.io/job-completion-index=1",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    assert!(one.starts_with("indexed-1-"), "{one}");
    assert_eq!(api.ok(&["logs", &one]).trim(), "index=1");

    // The failure policy's FailJob: failed at the first pod, with upstream's message.
    wait_for("policy failed", 60, || failed("policy"), &node);
    let c = condition(api, "policy", "Failed");
    assert!(
        c.starts_with("True/PodFailurePolicy/Container main for pod default/policy-")
            && c.ends_with("failed with exit code 42 matching FailJob rule at index 0"),
        "{c}"
    );
    assert_eq!(jsonpath(api, &["job", "policy"], "{.status.failed}"), "1");

    // The deadline: the running pod is deleted, the Job fails.
    wait_for("slow failed", 60, || failed("slow"), &node);
    assert_eq!(
        condition(api, "slow", "Failed"),
        "True/DeadlineExceeded/Job was active longer than specified deadline"
    );
    assert!(events_for(api, "slow").contains("DeadlineExceeded"));

    // kubectl create job: runs once.
    wait_for("hello complete", 60, || done("hello"), &node);
    let hello = jsonpath(
        api,
        &["pods", "-l", "job-name=hello"],
        "{.items[0].metadata.name}",
    );
    assert_eq!(api.ok(&["logs", &hello]).trim(), "hello from a job");

    // Suspended: nothing ran. Resumed: it runs, completes, and its TTL removes it.
    assert!(api
        .ok(&["get", "pods", "-l", "job-name=later", "-o", "name"])
        .is_empty());
    assert_eq!(
        condition(api, "later", "Suspended"),
        "True/JobSuspended/Job suspended"
    );
    api.ok(&[
        "patch",
        "job",
        "later",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    wait_for(
        "later gone after its TTL",
        60,
        || {
            api.kubectl(&["get", "job", "later"])
                .is_err_and(|e| e.contains("NotFound"))
        },
        &node,
    );
    assert!(events_for(api, "later").contains("Resumed"));

    // The failing Job: two failed pods 10 s apart, then BackoffLimitExceeded.
    wait_for("failing failed", 90, || failed("failing"), &node);
    assert_eq!(
        condition(api, "failing", "Failed"),
        "True/BackoffLimitExceeded/Job has reached the specified backoff limit"
    );
    assert!(condition(api, "failing", "FailureTarget").starts_with("True/BackoffLimitExceeded"));
    assert_eq!(jsonpath(api, &["job", "failing"], "{.status.failed}"), "2");
    let finished = api.ok(&[
        "get", "pods", "-l", "job-name=failing", "--sort-by=.metadata.creationTimestamp", "-o",
        "jsonpath={range .items[*]}{.metadata.creationTimestamp} {.status.containerStatuses[0].state.terminated.finishedAt}{\"\\n\"}{end}",
    ]);
    let rows: Vec<Vec<jiff::Timestamp>> = finished
        .lines()
        .map(|l| l.split(' ').map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{finished}");
    let waited = rows[1][0].as_second() - rows[0][1].as_second();
    assert!(
        (9..=20).contains(&waited),
        "back-off {waited} s: {finished}"
    );
    assert!(events_for(api, "failing").contains("BackoffLimitExceeded"));

    // Deleting Jobs takes their pods.
    api.ok(&["delete", "jobs", "--all", "--timeout=60s"]);
    wait_for(
        "all job pods gone",
        60,
        || api.ok(&["get", "pods", "-o", "name"]).trim().is_empty(),
        &node,
    );
}

#[test]
fn cronjob_fires_every_minute() {
    let w = world();
    let api = &w.api;
    let node = start_node(&w, &w.dir.path().join("kubelet"));
    let _sched = integration_tests::node::start_scheduler(api);
    // Schedules and time zones are checked as upstream checks them.
    let bad = |schedule: &str, tz: &str| {
        api.kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: bad}}\nspec:\n  schedule: '{schedule}'\n  {tz}\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{{name: c, image: busybox}}]\n"
            )),
        )
        .unwrap_err()
    };
    let e = bad("* * * *", "");
    assert!(
        e.contains("spec.schedule: Invalid value: \"* * * *\": expected exactly 5 fields, found 4: * * * *"),
        "{e}"
    );
    let e = bad("@hourly", "timeZone: Mars/Base");
    assert!(
        e.contains("spec.timeZone: Invalid value: \"Mars/Base\": unknown time zone Mars/Base"),
        "{e}"
    );

    // The upstream tutorial's CronJob, every minute, keeping one successful Job.
    apply(
        api,
        "apiVersion: batch/v1
kind: CronJob
metadata: {name: hello}
spec:
  schedule: '* * * * *'
  timeZone: Etc/UTC
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: hello
            image: busybox
            command: ['/bin/sh', '-c', 'date; echo Hello from the Kubernetes cluster']
",
    );
    // A Job made by hand from it (kubectl create job --from).
    api.ok(&["create", "job", "manual", "--from=cronjob/hello"]);
    assert_eq!(
        jsonpath(api, &["job", "manual"], "{.metadata.annotations.cronjob\\.kubernetes\\.io/instantiate}/{.metadata.ownerReferences[0].kind}"),
        "manual/CronJob"
    );
    wait_for(
        "the manual job complete",
        60,
        || condition(api, "manual", "Complete").starts_with("True/"),
        &node,
    );
    // The scheduled one: `hello-<minutes since the epoch>` at the next minute.
    wait_for(
        "a scheduled job complete",
        100,
        || {
            let last = jsonpath(api, &["cronjob", "hello"], "{.status.lastSuccessfulTime}");
            !last.is_empty()
                && jsonpath(api, &["jobs"], "{.items[*].metadata.name}")
                    .split_whitespace()
                    .any(|n| {
                        n.starts_with("hello-")
                            && condition(api, n, "Complete").starts_with("True/")
                    })
        },
        &node,
    );
    let scheduled = jsonpath(api, &["cronjob", "hello"], "{.status.lastScheduleTime}");
    let at: jiff::Timestamp = scheduled.parse().unwrap();
    assert_eq!(at.as_second() % 60, 0, "{scheduled}");
    let name = format!("hello-{}", at.as_second() / 60);
    assert_eq!(
        jsonpath(
            api,
            &["job", &name],
            "{.metadata.annotations.batch\\.kubernetes\\.io/cronjob-scheduled-timestamp}"
        ),
        scheduled
    );
    let pod = jsonpath(
        api,
        &["pods", "-l", &format!("job-name={name}")],
        "{.items[0].metadata.name}",
    );
    assert!(api
        .ok(&["logs", &pod])
        .contains("Hello from the Kubernetes cluster"));
    let events = events_for(api, "hello");
    assert!(events.contains(&format!("Created job {name}")), "{events}");
    // successfulJobsHistoryLimit 1: of two finished Jobs, the older (manual) goes.
    wait_for(
        "the history limit applied",
        30,
        || api.kubectl(&["get", "job", "manual"]).is_err(),
        &node,
    );
    let table = api.ok(&["get", "cronjob", "hello", "--no-headers"]);
    assert!(
        table.contains("* * * * *") && table.contains("Etc/UTC"),
        "{table}"
    );
    api.ok(&["delete", "cronjob", "hello", "--timeout=60s"]);
    wait_for(
        "its jobs and pods gone",
        60,
        || {
            api.ok(&["get", "jobs,pods", "-o", "name"])
                .trim()
                .is_empty()
        },
        &node,
    );
}
