//! Making and removing a controller's pods (upstream's `PodControl`), with the events
//! upstream records on the owner: `SuccessfulCreate` (`Created pod: x`), `FailedCreate`
//! (`Error creating: ...`), `SuccessfulDelete` (`Deleted pod: x`).

use ferrokube_client::events::{Kind as EventKind, Recorder};
use ferrokube_client::Api;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};

/// Creates `pods` in slow-start batches (1, 2, 4, ... at a time), stopping after the
/// first batch with a failure: a quota or admission error then costs one call, not
/// hundreds. Answers the first error.
pub async fn create_pods(
    api: &Api<Pod>,
    pods: Vec<Pod>,
    recorder: &Recorder,
    owner: &ObjectReference,
) -> Result<(), String> {
    let ns = owner.namespace.clone().unwrap_or_default();
    let mut pending = pods.into_iter();
    let mut batch = 1;
    loop {
        let mut calls = tokio::task::JoinSet::new();
        for pod in pending.by_ref().take(batch) {
            let api = api.clone();
            calls.spawn(async move { api.create(&pod).await });
        }
        if calls.is_empty() {
            return Ok(());
        }
        let mut failed = None;
        while let Some(r) = calls.join_next().await {
            match r {
                Ok(Ok(p)) => {
                    let name = p.metadata.name.unwrap_or_default();
                    recorder
                        .object(
                            &ns,
                            owner.clone(),
                            EventKind::Normal,
                            "SuccessfulCreate",
                            &format!("Created pod: {name}"),
                        )
                        .await;
                }
                Ok(Err(e)) => failed = Some(e.to_string()),
                Err(e) => failed = Some(e.to_string()),
            }
        }
        if let Some(e) = failed {
            recorder
                .object(
                    &ns,
                    owner.clone(),
                    EventKind::Warning,
                    "FailedCreate",
                    &format!("Error creating: {e}"),
                )
                .await;
            return Err(e);
        }
        batch *= 2;
    }
}

/// Deletes one pod; `Ok(false)` when it was already gone.
pub async fn delete_pod(
    api: &Api<Pod>,
    name: &str,
    recorder: &Recorder,
    owner: &ObjectReference,
) -> Result<bool, ferrokube_client::Error> {
    match api.delete(name, None).await {
        Ok(_) => {
            recorder
                .object(
                    owner.namespace.as_deref().unwrap_or_default(),
                    owner.clone(),
                    EventKind::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {name}"),
                )
                .await;
            Ok(true)
        }
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}
