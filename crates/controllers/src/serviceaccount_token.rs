//! The service-account token controller (upstream's `serviceaccount-token-controller`),
//! with `--service-account-private-key-file`: a Secret of type
//! `kubernetes.io/service-account-token` annotated `kubernetes.io/service-account.name`
//! gets a legacy token of that account (data `token`, `ca.crt` from `--root-ca-file`,
//! `namespace`) and the account's uid in `kubernetes.io/service-account.uid`. Such a
//! Secret whose account is gone (or was made again under another uid) is deleted, and so
//! are an account's token Secrets when it is deleted. Secrets are only filled, never
//! made: since 1.24 accounts get no token Secret unless one is asked for.

use std::sync::Arc;

use ferrokube_client::informer::Event;
use ferrokube_client::{Api, Store, WorkQueue};
use ferrokube_satoken::{Tokens, LEGACY_ISSUER};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::ByteString;

use crate::ownership::{key, object_key};
use crate::{Context, Error, InformerFactory, Runner};

const QUEUE: &str = "serviceaccount_tokens_secret";
pub const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
pub const NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub const UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

fn is_token_secret(s: &Secret) -> bool {
    s.type_.as_deref() == Some(TOKEN_TYPE)
}

fn annotation<'a>(s: &'a Secret, k: &str) -> Option<&'a str> {
    s.metadata.annotations.as_ref()?.get(k).map(String::as_str)
}

/// Registers the informers; the runner fills and removes token Secrets.
pub fn start(cx: &Context, informers: &mut InformerFactory) -> Result<Runner, String> {
    let pem = cx
        .service_account_key
        .as_ref()
        .ok_or("no --service-account-private-key-file")?;
    let tokens = Tokens::new(pem.as_bytes(), None, LEGACY_ISSUER, vec![])
        .map_err(|e| format!("--service-account-private-key-file: {e}"))?;
    let queue: WorkQueue<String> = WorkQueue::new();
    let secrets = {
        let inf = informers.informer::<Secret>();
        let q = queue.clone();
        inf.on_event(move |e| {
            if let Event::Added(s) | Event::Updated(_, s) = e {
                if is_token_secret(s) {
                    q.add(object_key(&s.metadata));
                }
            }
        });
        inf.store()
    };
    let accounts = {
        let inf = informers.informer::<ServiceAccount>();
        let (q, secrets) = (queue.clone(), secrets.clone());
        inf.on_event(move |e| {
            // An account's (re)appearance or departure concerns its token Secrets.
            let (Event::Added(sa) | Event::Updated(_, sa) | Event::Deleted(sa)) = e;
            for s in secrets.list() {
                if is_token_secret(&s)
                    && s.metadata.namespace == sa.metadata.namespace
                    && annotation(&s, NAME_ANNOTATION) == sa.metadata.name.as_deref()
                {
                    q.add(object_key(&s.metadata));
                }
            }
        });
        inf.store()
    };
    let sync = Arc::new(Sync {
        cx: cx.clone(),
        tokens,
        secrets,
        accounts,
    });
    Ok(Runner::new(QUEUE, queue, 2, move |k| {
        let sync = sync.clone();
        async move { sync.sync(&k).await }
    }))
}

struct Sync {
    cx: Context,
    tokens: Tokens,
    secrets: Store<Secret>,
    accounts: Store<ServiceAccount>,
}

impl Sync {
    async fn sync(&self, k: &str) -> Result<(), Error> {
        let Some(secret) = self.secrets.get(k) else {
            return Ok(());
        };
        if !is_token_secret(&secret) || secret.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let ns = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.cx.client.clone(), &ns);
        let Some(account_name) = annotation(&secret, NAME_ANNOTATION) else {
            return Ok(());
        };
        // The account, from the cache or (not there yet) the server.
        let account = match self.accounts.get(&key(&ns, account_name)) {
            Some(a) => Some((*a).clone()),
            None => {
                Api::<ServiceAccount>::namespaced(self.cx.client.clone(), &ns)
                    .get_opt(account_name)
                    .await?
            }
        };
        let uid = account.as_ref().and_then(|a| a.metadata.uid.clone());
        let wanted_uid = annotation(&secret, UID_ANNOTATION);
        let (Some(uid), true) = (
            uid.clone(),
            wanted_uid.is_none() || wanted_uid == uid.as_deref(),
        ) else {
            // The account is gone, or is another one now: the token goes with it.
            tracing::info!(
                secret = k,
                account = account_name,
                "deleting the token Secret of a missing service account"
            );
            return match api.delete(&name, None).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_not_found() => Ok(()),
                Err(e) => Err(e.into()),
            };
        };
        let data = secret.data.clone().unwrap_or_default();
        let ca = self
            .cx
            .root_ca
            .as_deref()
            .unwrap_or_default()
            .as_bytes()
            .to_vec();
        // (`ca.crt` only when there is a CA to publish, as upstream.)
        let complete = data.get("token").is_some_and(|t| !t.0.is_empty())
            && data.get("namespace").map(|n| n.0.as_slice()) == Some(ns.as_bytes())
            && (ca.is_empty() || data.get("ca.crt").map(|c| c.0.as_slice()) == Some(ca.as_slice()))
            && wanted_uid == Some(uid.as_str());
        if complete {
            return Ok(());
        }
        let mut updated = (*secret).clone();
        updated
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(UID_ANNOTATION.into(), uid.clone());
        let d = updated.data.get_or_insert_with(Default::default);
        if d.get("token").is_none_or(|t| t.0.is_empty()) {
            let token = self.tokens.sign_legacy(&ns, (account_name, &uid), &name);
            d.insert("token".into(), ByteString(token.into_bytes()));
        }
        d.insert("namespace".into(), ByteString(ns.clone().into_bytes()));
        if !ca.is_empty() {
            d.insert("ca.crt".into(), ByteString(ca));
        }
        match api.replace(&name, &updated).await {
            Ok(_) => {
                tracing::info!(
                    secret = k,
                    account = account_name,
                    "filled the token Secret"
                );
                Ok(())
            }
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
