//! Leader election on a `coordination.k8s.io/v1` Lease, with upstream's timings and
//! rules: a candidate takes the lease when it is free or when its holder has not
//! renewed it for a whole lease duration as observed locally (clocks of different
//! machines are never compared); the leader renews every retry period and stops leading
//! when it cannot renew within the renew deadline. Writes carry the resourceVersion, so
//! two candidates can never both win.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use crate::{Api, Error};

/// Settings of an election.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// Upstream's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        ElectionConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// A candidate's identity as upstream makes it: `<host>_<random UUID>`.
    pub fn identity(host: &str) -> String {
        let r: u128 = rand::random();
        let h = format!("{r:032x}");
        format!(
            "{host}_{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    /// Upstream's checks of the timings: the lease outlasts the renew deadline, which
    /// outlasts a jittered retry period.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_duration <= self.renew_deadline {
            return Err("leaseDuration must be greater than renewDeadline".into());
        }
        if self.renew_deadline <= self.retry_period.mul_f64(JITTER_FACTOR) {
            return Err("renewDeadline must be greater than retryPeriod*JitterFactor".into());
        }
        if self.retry_period.is_zero() {
            return Err("retryPeriod must be greater than zero".into());
        }
        if self.name.is_empty() {
            return Err("lock name must not be empty".into());
        }
        Ok(())
    }
}

/// How much later than the retry period candidates may retry (upstream's factor).
const JITTER_FACTOR: f64 = 1.2;

/// How long past the lease duration a leader may go unrenewed before its health check
/// fails (upstream's leader-election watchdog timeout).
const WATCHDOG_TIMEOUT: Duration = Duration::from_secs(20);

/// A health check for the leader: fails when this process leads but has not renewed
/// the lease for longer than the lease duration plus a grace time (a stuck leader).
#[derive(Clone)]
pub struct Watchdog {
    name: String,
    limit: Duration,
    /// When the lease was last renewed, while leading.
    renewed: Arc<Mutex<Option<Instant>>>,
}

impl Watchdog {
    /// `Ok` unless leading with a lease renewed too long ago.
    pub fn check(&self) -> Result<(), String> {
        match *self.renewed.lock().expect("watchdog lock") {
            Some(at) if at.elapsed() > self.limit => Err(format!(
                "failed election to renew leadership on lease {}",
                self.name
            )),
            _ => Ok(()),
        }
    }

    fn renewed(&self, at: Option<Instant>) {
        *self.renewed.lock().expect("watchdog lock") = at;
    }
}

/// Runs an election for one candidate.
pub struct LeaderElection {
    api: Api<Lease>,
    cfg: ElectionConfig,
    /// The last lease record seen and when it was first seen (local clock).
    observed: Option<(Option<LeaseSpec>, Instant)>,
    watchdog: Watchdog,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl LeaderElection {
    pub fn new(api: Api<Lease>, cfg: ElectionConfig) -> Self {
        let watchdog = Watchdog {
            name: cfg.name.clone(),
            limit: cfg.lease_duration + WATCHDOG_TIMEOUT,
            renewed: Default::default(),
        };
        LeaderElection {
            api,
            cfg,
            observed: None,
            watchdog,
        }
    }

    /// The health check of this candidate's leadership.
    pub fn watchdog(&self) -> Watchdog {
        self.watchdog.clone()
    }

    /// One attempt, abandoned (as failed) after `limit`.
    async fn attempt(&mut self, limit: Duration) -> Result<bool, Error> {
        match tokio::time::timeout(limit, self.try_acquire_or_renew()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        }
    }

    /// One attempt to take or keep the lease; `Ok(true)` when we hold it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let secs = self.cfg.lease_duration.as_secs() as i32;
        let Some(current) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&lease).await {
                Ok(l) => {
                    self.observed = Some((l.spec, Instant::now()));
                    Ok(true)
                }
                Err(e) if e.is_conflict() => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        // Note when the record last changed, on our clock.
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(s, _)| s.as_ref() != Some(&spec));
        if changed {
            self.observed = Some((Some(spec.clone()), Instant::now()));
        }
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let me = holder == self.cfg.identity;
        let duration =
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(1) as u64);
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= duration);
        if !me && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let mut lease = current.clone();
        let mut new_spec = spec.clone();
        if !me {
            new_spec.acquire_time = Some(now());
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        new_spec.holder_identity = Some(self.cfg.identity.clone());
        new_spec.lease_duration_seconds = Some(secs);
        new_spec.renew_time = Some(now());
        lease.spec = Some(new_spec);
        match self.api.replace(&self.cfg.name, &lease).await {
            Ok(l) => {
                self.observed = Some((l.spec, Instant::now()));
                Ok(true)
            }
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (holder cleared) if we hold it.
    pub async fn release(&mut self) -> Result<(), Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        self.api.replace(&self.cfg.name, &lease).await.map(|_| ())
    }

    /// Waits until this candidate leads, then runs `lead` while renewing. Returns when
    /// `lead` finishes (the lease is released) or with `Error::LeadershipLost` when a
    /// renewal did not succeed within the renew deadline (`lead` is dropped).
    pub async fn run<F, Fut>(mut self, lead: F) -> Result<(), Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            match self.attempt(self.cfg.renew_deadline).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = %self.cfg.name, "acquiring the lease: {e}"),
            }
            tokio::time::sleep(jitter(self.cfg.retry_period)).await;
        }
        tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
        let mut last_renew = Instant::now();
        self.watchdog.renewed(Some(last_renew));
        let work = lead();
        tokio::pin!(work);
        loop {
            tokio::select! {
                _ = &mut work => {
                    self.watchdog.renewed(None);
                    let _ = tokio::time::timeout(self.cfg.renew_deadline, self.release()).await;
                    return Ok(());
                }
                _ = tokio::time::sleep(self.cfg.retry_period) => {
                    // An attempt may take no longer than what is left of the deadline.
                    let left = self.cfg.renew_deadline.saturating_sub(last_renew.elapsed());
                    match self.attempt(left.max(Duration::from_millis(1))).await {
                        Ok(true) => {
                            last_renew = Instant::now();
                            self.watchdog.renewed(Some(last_renew));
                        }
                        Ok(false) => {
                            tracing::error!(lease = %self.cfg.name, "leadership lost to another candidate");
                            return Err(Error::LeadershipLost);
                        }
                        Err(e) => tracing::warn!(lease = %self.cfg.name, "renewing the lease: {e}"),
                    }
                    if last_renew.elapsed() >= self.cfg.renew_deadline {
                        tracing::error!(lease = %self.cfg.name, "could not renew the lease within the renew deadline");
                        return Err(Error::LeadershipLost);
                    }
                }
            }
        }
    }
}

/// Up to 20 % more than `d`, so candidates do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::random::<f64>() * 0.2)
}
