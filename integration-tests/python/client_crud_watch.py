"""The official Python client (kubernetes 32.x) against kube-apiserver: CRUD on typed
APIs, list with selectors, a watch that sees later changes, and API errors as
ApiException with upstream's status codes and reasons. Run by apiserver_python.rs with
KUBECONFIG set; prints OK at the end."""

import json
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config()
core = client.CoreV1Api()
apps = client.AppsV1Api()

ns = "py"
core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
assert ns in [n.metadata.name for n in core.list_namespace().items]

# Create, read, update, patch, delete a ConfigMap.
cm = core.create_namespaced_config_map(
    ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings", labels={"app": "py"}), data={"a": "1"})
)
assert cm.metadata.uid and cm.metadata.resource_version
got = core.read_namespaced_config_map("settings", ns)
assert got.data == {"a": "1"}
got.data["b"] = "2"
updated = core.replace_namespaced_config_map("settings", ns, got)
assert int(updated.metadata.resource_version) > int(cm.metadata.resource_version)
patched = core.patch_namespaced_config_map("settings", ns, {"data": {"c": "3"}})
assert patched.data == {"a": "1", "b": "2", "c": "3"}

# Optimistic concurrency: a stale resourceVersion is a 409 Conflict.
try:
    core.replace_namespaced_config_map("settings", ns, got)
    raise AssertionError("stale update accepted")
except ApiException as e:
    assert e.status == 409, e
    assert json.loads(e.body)["reason"] == "Conflict"

# A Deployment with defaults filled in, listed by label.
dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="web", labels={"tier": "front"}),
    spec=client.V1DeploymentSpec(
        replicas=2,
        selector=client.V1LabelSelector(match_labels={"app": "web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx:1.25")]),
        ),
    ),
)
d = apps.create_namespaced_deployment(ns, dep)
assert d.spec.strategy.type == "RollingUpdate"
assert d.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent"
assert [x.metadata.name for x in apps.list_namespaced_deployment(ns, label_selector="tier=front").items] == ["web"]
assert apps.list_namespaced_deployment(ns, label_selector="tier=back").items == []
scale = apps.read_namespaced_deployment_scale("web", ns)
assert scale.spec.replicas == 2
apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 5}})
assert apps.read_namespaced_deployment("web", ns).spec.replicas == 5

# Watch: start from the list's resourceVersion and see a later create and delete.
rv = core.list_namespaced_config_map(ns).metadata.resource_version
seen = []
def watcher():
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=10):
        seen.append((ev["type"], ev["object"].metadata.name))
        if ("DELETED", "later") in seen:
            w.stop()
t = threading.Thread(target=watcher)
t.start()
time.sleep(0.5)
core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="later")))
core.delete_namespaced_config_map("later", ns)
t.join(15)
assert ("ADDED", "later") in seen and ("DELETED", "later") in seen, seen

# Errors: 404 NotFound with upstream's message, 422 Invalid.
try:
    core.read_namespaced_config_map("missing", ns)
    raise AssertionError("found a missing object")
except ApiException as e:
    assert e.status == 404
    assert json.loads(e.body)["message"] == 'configmaps "missing" not found'
try:
    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name")))
    raise AssertionError("invalid name accepted")
except ApiException as e:
    assert e.status == 422 and json.loads(e.body)["reason"] == "Invalid"

core.delete_namespaced_config_map("settings", ns)
apps.delete_namespaced_deployment("web", ns)
# Only the controller-manager's CA bundle is left.
assert [x.metadata.name for x in core.list_namespaced_config_map(ns).items] == ["kube-root-ca.crt"]
print("OK")
