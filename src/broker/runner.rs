//! Runs one invocation on one session (or several sent together, [`run_many`]) and decides,
//! from the outcome, what becomes of the invocation (final, or back in the queue) and of the
//! session (keep, gone, close).

use super::failure::{after_command_failure, may_run_again, session_after};
use super::scheduler::{AfterCommand, Job};
use super::Shared;
use crate::remote::{Command, CommandOutput, FaultClass, RemoteError, RemoteSession};
use crate::store::{Outcome, Status};
use serde_json::Value as Json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the driver needs to hear back after a command.
pub struct RunReport {
    pub after: AfterCommand,
    pub ran_for: Option<Duration>,
    pub requeue: Vec<Job>,
    /// The command failed with this class (and the service's `Retry-After`, if it gave one):
    /// the scheduler applies what it means for the pool.
    pub fault: Option<(FaultClass, Option<Duration>)>,
}

pub async fn run(
    shared: Arc<Shared>,
    session: Arc<dyn RemoteSession>,
    session_label: String,
    admin: String,
    job: Job,
    command_timeout: Duration,
) -> RunReport {
    let attempt = job.attempts + 1;
    observe_queue_wait(&shared, &job);
    // Queued for the committer here, before the command runs.
    let claim = shared.store.mark_running(job.id, attempt, &session_label, &admin);
    let command = command_of(&job);
    // The command's own time (what fairness charges the lane), not the claim's commit.
    let invoke = async {
        let started = Instant::now();
        let result = match tokio::time::timeout(command_timeout, session.invoke(&command)).await {
            Ok(r) => r,
            Err(_) => Err(RemoteError::new(FaultClass::Timeout, format!("no answer within {command_timeout:?}"))),
        };
        (started.elapsed(), result)
    };
    // A write must be recorded as running before it runs, so that after a crash it is known to
    // have possibly run. A read need not wait: if the daemon dies, running it again is harmless.
    let (claimed, (ran_for, result)) = if job.idempotent && shared.store.writes_in_order() {
        // One committer applies the writes in the order they were queued (SQLite): a result
        // queued after the claim commits with it or after it, so a read's success is handed over
        // without waiting for the claim's commit, and the session is free at once.
        let (ran_for, result) = invoke.await;
        if result.is_ok() {
            let id = job.id;
            shared.writes.spawn(async move {
                // Lost only to a cancellation or an end that came first, which the result then
                // loses to as well; a store failure leaves the result to record the end alone.
                if let Err(e) = claim.await {
                    tracing::error!(invocation = %id, error = %e, "cannot mark invocation running");
                }
            });
            return settle(&shared, job, attempt, result, ran_for).await;
        }
        (claim.await, (ran_for, result))
    } else if job.idempotent {
        tokio::join!(claim, invoke)
    } else {
        let claimed = claim.await;
        if !matches!(claimed, Ok(true)) {
            return unclaimed(job, claimed);
        }
        (claimed, invoke.await)
    };
    if !matches!(claimed, Ok(true)) {
        let mut report = unclaimed(job, claimed);
        report.after = result.as_ref().err().map_or(AfterCommand::Keep, |e| session_after(e.class));
        return report;
    }
    settle(&shared, job, attempt, result, ran_for).await
}

/// Acceptance to the moment a session takes the invocation (each attempt: a retry waited again).
fn observe_queue_wait(shared: &Shared, job: &Job) {
    shared
        .metrics
        .queue_wait_seconds
        .with_label_values(&[job.priority.as_str()])
        .observe(job.enqueued_at.elapsed().as_secs_f64());
}

/// Several batch invocations of one tenant on one session, sent together where the transport
/// can (Exchange Online's `$batch`, via [`RemoteSession::invoke_many`]): each is claimed before
/// anything runs, then answered and settled on its own exactly as [`run`] settles one. The
/// session's fate is the worst any of them says; the run time is shared out among them.
pub async fn run_many(
    shared: Arc<Shared>,
    session: Arc<dyn RemoteSession>,
    session_label: String,
    admin: String,
    jobs: Vec<Job>,
    command_timeout: Duration,
) -> RunReport {
    jobs.iter().for_each(|job| observe_queue_wait(&shared, job));
    let claims = futures::future::join_all(
        jobs.iter().map(|job| shared.store.mark_running(job.id, job.attempts + 1, &session_label, &admin)),
    )
    .await;
    let mut report = RunReport { after: AfterCommand::Keep, ran_for: None, requeue: vec![], fault: None };
    let mut claimed = Vec::with_capacity(jobs.len());
    for (job, claim) in jobs.into_iter().zip(claims) {
        match claim {
            Ok(true) => claimed.push(job),
            other => report.requeue.extend(unclaimed(job, other).requeue),
        }
    }
    if claimed.is_empty() {
        return report;
    }
    let commands: Vec<Command> = claimed.iter().map(command_of).collect();
    let started = Instant::now();
    let results = match tokio::time::timeout(command_timeout, session.invoke_many(&commands)).await {
        Ok(r) => r,
        Err(_) => {
            let lost = RemoteError::new(FaultClass::Timeout, format!("no answer within {command_timeout:?}"));
            vec![Err(lost); commands.len()]
        }
    };
    let ran_for = started.elapsed() / claimed.len() as u32;
    for (job, result) in claimed.into_iter().zip(results) {
        let attempt = job.attempts + 1;
        let one = settle(&shared, job, attempt, result, ran_for).await;
        report.after = worse(report.after, one.after);
        report.requeue.extend(one.requeue);
        // A push-back is what the pool must hear of; otherwise the first fault.
        if report.fault.is_none() || one.fault.is_some_and(|(c, _)| after_command_failure(c).is_some()) {
            report.fault = one.fault.or(report.fault);
        }
    }
    report.ran_for = Some(ran_for);
    report
}

fn command_of(job: &Job) -> Command {
    Command { invocation_id: job.id, cmdlet: job.spec.cmdlet.clone(), parameters: job.spec.parameters.clone() }
}

/// Of two verdicts on one session, the one that trusts it less.
fn worse(a: AfterCommand, b: AfterCommand) -> AfterCommand {
    let rank = |x: AfterCommand| match x {
        AfterCommand::Keep => 0,
        AfterCommand::Gone => 1,
        AfterCommand::Close => 2,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Records a claimed invocation's attempt: its result, or what its failure means.
async fn settle(
    shared: &Arc<Shared>,
    job: Job,
    attempt: u32,
    result: Result<CommandOutput, RemoteError>,
    ran_for: Duration,
) -> RunReport {
    shared.metrics.run_seconds.with_label_values(&[job.priority.as_str()]).observe(ran_for.as_secs_f64());
    log_request_id(&job, attempt, &result);
    match result {
        Ok(output) => {
            // The session is free now: the result is written while it takes its next command.
            let outcome = succeeded_or_cmdlet_error(output);
            let writer = shared.clone();
            shared.writes.spawn(async move { writer.finish(&job, outcome).await });
            RunReport { after: AfterCommand::Keep, ran_for: Some(ran_for), requeue: vec![], fault: None }
        }
        Err(e) => {
            shared.metrics.remote_faults.with_label_values(&[e.class.code()]).inc();
            on_failure(shared, job, attempt, e, ran_for).await
        }
    }
}

/// A REST connector names each call with a `client-request-id`: logged here with the invocation
/// id, since that pair is what ties a caller's complaint to Microsoft's own logs.
fn log_request_id(job: &Job, attempt: u32, result: &Result<CommandOutput, RemoteError>) {
    let (request_id, outcome) = match result {
        Ok(output) => (output.request_id.as_deref(), "answered"),
        Err(e) => (e.request_id.as_deref(), e.class.code()),
    };
    if let Some(request_id) = request_id {
        tracing::info!(invocation = %job.id, request_id, attempt, cmdlet = %job.spec.cmdlet, outcome, "REST call");
    }
}

/// The invocation could not be claimed: cancelled meanwhile (the session did nothing it must
/// answer for), or the store failed (the invocation stays queued and is tried again shortly).
fn unclaimed(mut job: Job, claimed: Result<bool, crate::store::StoreError>) -> RunReport {
    match claimed {
        Err(e) => {
            tracing::error!(invocation = %job.id, error = %e, "cannot mark invocation running; leaving it queued");
            job.not_before = Some(Instant::now() + Duration::from_secs(1));
            RunReport { after: AfterCommand::Keep, ran_for: None, requeue: vec![job], fault: None }
        }
        _ => RunReport { after: AfterCommand::Keep, ran_for: None, requeue: vec![], fault: None },
    }
}

/// A pipeline that completed is a success unless it wrote error records.
fn succeeded_or_cmdlet_error(output: CommandOutput) -> Outcome {
    let objects = Json::Array(output.objects.iter().map(|o| o.to_json()).collect());
    let errors = serde_json::to_value(&output.errors).unwrap_or(Json::Null);
    let warnings = Json::from(output.warnings);
    let request_id = output.request_id;
    match output.errors.first() {
        None => Outcome {
            status: Status::Succeeded,
            output: objects,
            errors,
            warnings,
            error_code: None,
            error_message: None,
            request_id,
        },
        Some(first) => Outcome {
            status: Status::Failed,
            output: objects,
            error_code: Some(FaultClass::CmdletError.code().into()),
            error_message: Some(first.message.clone()),
            errors,
            warnings,
            request_id,
        },
    }
}

async fn on_failure(shared: &Shared, mut job: Job, attempt: u32, e: RemoteError, ran_for: Duration) -> RunReport {
    let max_attempts = shared.tuning.max_attempts;
    let after = session_after(e.class);
    let fault = Some((e.class, e.retry_after));
    let retry = may_run_again(e.class, job.idempotent);
    if retry && attempt < max_attempts {
        job.attempts = attempt;
        // The service said when to come back (503 Retry-After, budget throttling).
        job.not_before = e.retry_after.map(|d| Instant::now() + d.min(MAX_RETRY_AFTER));
        shared.metrics.retries.with_label_values(&[e.class.code()]).inc();
        if let Err(err) = shared.store.mark_queued(job.id).await {
            tracing::error!(invocation = %job.id, error = %err, "cannot requeue invocation");
        }
        return RunReport { after, ran_for: Some(ran_for), requeue: vec![job], fault };
    }
    let mut outcome = Outcome::failed(e.class.code(), failure_message(&e, retry, attempt));
    if let Some(record) = &e.record {
        outcome.errors = serde_json::to_value(vec![record]).unwrap_or(Json::Null);
    }
    outcome.request_id = e.request_id.clone();
    shared.finish(&job, outcome).await;
    RunReport { after, ran_for: Some(ran_for), requeue: vec![], fault }
}

/// The longest a retry waits for the service's own "come back in N seconds".
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

fn failure_message(e: &RemoteError, retryable: bool, attempt: u32) -> String {
    if retryable {
        format!("{} (gave up after {attempt} attempts)", e.message)
    } else if e.class.outcome_unknown() {
        format!(
            "{} (the command may or may not have taken effect; it is not repeated because it is not idempotent)",
            e.message
        )
    } else {
        e.message.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FaultClass::*;

    #[test]
    fn a_failed_write_says_whether_it_may_have_run() {
        let lost = RemoteError::new(ConnectionLost, "Receive: connection closed");
        assert!(failure_message(&lost, false, 1).contains("may or may not have taken effect"));
        let gone = RemoteError::new(SessionExpired, "shell not found");
        assert_eq!(failure_message(&gone, true, 5), "shell not found (gave up after 5 attempts)");
    }
}
