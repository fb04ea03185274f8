//! Where a queued job becomes work done: the worker pool and its retries, the retention
//! purge, and one handler per kind of job — a question's answer, sharing a private
//! answer, feedback on an answer, and a person's account (App Home, connect, disconnect).
//!
//! [`Work`] is a job's payload, typed: intake encodes it once, [`Handlers`] decodes it once
//! and dispatches on it exhaustively.

pub mod account;
pub mod assistant;
pub mod breaker;
pub mod feedback;
pub mod question;
pub mod retention;
pub mod share;
pub mod worker;

use async_trait::async_trait;

use crate::domain::{TeamId, UserId};
use crate::store::jobs::Job;
use account::{Account, AccountRequest};
use assistant::{Assistant, ThreadStarted};
use feedback::{Feedback, FeedbackRequest};
use question::{Question, Questions};
use share::{ShareRequest, Sharing};
use worker::{Done, JobError, JobHandler};

/// What kind of work a job is; `jobs.kind` holds its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// A question to answer (a mention, a DM, `/databricks`, a suggestion clicked).
    Question,
    /// "Share in channel" on a private answer.
    Share,
    /// "Connect Databricks" in App Home: send a link by DM.
    Connect,
    /// A confirmed Disconnect click.
    Disconnect,
    /// An App Home visit: publish the tab.
    Home,
    /// A thumbs up or down on an answer.
    Feedback,
    /// A new assistant thread: greet the person and suggest prompts.
    AssistantThread,
}

impl JobKind {
    const ALL: [JobKind; 7] = [
        JobKind::Question,
        JobKind::Share,
        JobKind::Connect,
        JobKind::Disconnect,
        JobKind::Home,
        JobKind::Feedback,
        JobKind::AssistantThread,
    ];

    /// The value stored in `jobs.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Question => "question",
            JobKind::Share => "share",
            JobKind::Connect => "connect",
            JobKind::Disconnect => "disconnect",
            JobKind::Home => "home",
            JobKind::Feedback => "feedback",
            JobKind::AssistantThread => "assistant_thread",
        }
    }

    /// The kind stored as `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == s)
    }
}

/// A job's work: its kind with its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    Question(Question),
    Share(ShareRequest),
    Connect(AccountRequest),
    Disconnect(AccountRequest),
    Home(AccountRequest),
    Feedback(FeedbackRequest),
    AssistantThread(ThreadStarted),
}

impl Work {
    /// Its kind.
    pub fn kind(&self) -> JobKind {
        match self {
            Work::Question(_) => JobKind::Question,
            Work::Share(_) => JobKind::Share,
            Work::Connect(_) => JobKind::Connect,
            Work::Disconnect(_) => JobKind::Disconnect,
            Work::Home(_) => JobKind::Home,
            Work::Feedback(_) => JobKind::Feedback,
            Work::AssistantThread(_) => JobKind::AssistantThread,
        }
    }

    /// The person the job is for (also the per-person concurrency key).
    pub fn person(&self) -> (&TeamId, &UserId) {
        match self {
            Work::Question(q) => (&q.team, &q.user),
            Work::Share(share) => (&share.team, &share.user),
            Work::Connect(account) | Work::Disconnect(account) | Work::Home(account) => (&account.team, &account.user),
            Work::Feedback(feedback) => (&feedback.team, &feedback.user),
            Work::AssistantThread(started) => (&started.team, &started.user),
        }
    }

    /// The conversation the work belongs to, which runs one job at a time: a question's
    /// person and answer thread (a Genie conversation or ADK session is kept per those).
    pub fn conversation_key(&self) -> Option<String> {
        match self {
            Work::Question(q) => Some(format!(
                "{}:{}:{}:{}",
                q.team,
                q.user,
                q.channel,
                q.answer_thread().unwrap_or_default()
            )),
            Work::Share(_)
            | Work::Connect(_)
            | Work::Disconnect(_)
            | Work::Home(_)
            | Work::Feedback(_)
            | Work::AssistantThread(_) => None,
        }
    }

    /// The payload as `jobs.payload` stores it.
    pub fn encode(&self) -> String {
        let encoded = match self {
            Work::Question(q) => serde_json::to_string(q),
            Work::Share(share) => serde_json::to_string(share),
            Work::Connect(account) | Work::Disconnect(account) | Work::Home(account) => serde_json::to_string(account),
            Work::Feedback(feedback) => serde_json::to_string(feedback),
            Work::AssistantThread(started) => serde_json::to_string(started),
        };
        encoded.expect("job payloads serialise")
    }

    /// The work a stored job holds. An unknown kind or an unreadable payload is permanent:
    /// no retry will make it readable.
    pub fn decode(job: &Job) -> Result<Self, JobError> {
        let kind = JobKind::parse(&job.kind)
            .ok_or_else(|| JobError::Permanent(format!("no handler for jobs of kind {:?}", job.kind)))?;
        let unreadable =
            |e: serde_json::Error| JobError::Permanent(format!("unreadable {} payload: {e}", kind.as_str()));
        let payload = job.payload.as_str();
        Ok(match kind {
            JobKind::Question => Work::Question(serde_json::from_str(payload).map_err(unreadable)?),
            JobKind::Share => Work::Share(serde_json::from_str(payload).map_err(unreadable)?),
            JobKind::Connect => Work::Connect(serde_json::from_str(payload).map_err(unreadable)?),
            JobKind::Disconnect => Work::Disconnect(serde_json::from_str(payload).map_err(unreadable)?),
            JobKind::Home => Work::Home(serde_json::from_str(payload).map_err(unreadable)?),
            JobKind::Feedback => Work::Feedback(serde_json::from_str(payload).map_err(unreadable)?),
            JobKind::AssistantThread => Work::AssistantThread(serde_json::from_str(payload).map_err(unreadable)?),
        })
    }
}

/// Every job handler: the one dispatch from a job to the work it asks for.
pub struct Handlers {
    pub questions: Questions,
    pub share: Sharing,
    pub account: Account,
    pub feedback: Feedback,
    pub assistant: Assistant,
}

#[async_trait]
impl JobHandler for Handlers {
    async fn run(&self, job: &Job) -> Result<Done, JobError> {
        match Work::decode(job)? {
            Work::Question(q) => self.questions.run(job, &q).await,
            Work::Share(request) => self.share.share(&request).await,
            Work::Connect(request) => self.account.connect(&request).await,
            Work::Disconnect(request) => self.account.disconnect(&request).await,
            Work::Home(request) => self.account.publish_home(&request).await.map(|()| Done::Finished),
            Work::Feedback(request) => self.feedback.record(&request).await,
            Work::AssistantThread(started) => self.assistant.greet(&started).await,
        }
    }

    async fn give_up(&self, job: &Job, error: &JobError, reference: &str) {
        match Work::decode(job) {
            Ok(Work::Question(q)) => self.questions.give_up(job, &q, error, reference).await,
            // The private copy is still there to share again.
            Ok(Work::Share(_)) => tracing::error!(error = %error, reference, "a share was abandoned"),
            Ok(Work::Connect(_) | Work::Disconnect(_) | Work::Home(_)) => {
                tracing::error!(error = %error, reference, "an account job was abandoned");
            }
            Ok(Work::Feedback(_)) => tracing::error!(error = %error, reference, "feedback was abandoned"),
            Ok(Work::AssistantThread(_)) => {
                tracing::error!(error = %error, reference, "an assistant thread was not greeted")
            }
            Err(unreadable) => tracing::error!(error = %unreadable, reference, "an unreadable job was abandoned"),
        }
    }

    async fn waiting(&self, job: &Job) {
        if let Ok(Work::Question(q)) = Work::decode(job) {
            self.questions.announce_waiting(job, &q).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: &str, payload: &str) -> Job {
        Job {
            id: 7,
            kind: kind.into(),
            team: TeamId::parse("T1").unwrap(),
            user: UserId::parse("U1").unwrap(),
            payload: payload.into(),
            attempts: 1,
            created_at: 0,
            outbox: None,
            outbox_sent: 0,
            traceparent: None,
        }
    }

    #[test]
    fn every_kind_round_trips_through_its_stored_name() {
        for kind in JobKind::ALL {
            assert_eq!(JobKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(JobKind::parse("Home"), None);
    }

    #[test]
    fn work_decodes_from_what_it_encoded() {
        let request = AccountRequest {
            team: TeamId::parse("T1").unwrap(),
            user: UserId::parse("U1").unwrap(),
            response_url: None,
        };
        for work in [
            Work::Connect(request.clone()),
            Work::Disconnect(request.clone()),
            Work::Home(request),
        ] {
            let stored = job(work.kind().as_str(), &work.encode());
            assert_eq!(Work::decode(&stored).unwrap(), work);
        }
    }

    // An unknown kind is refused, not taken for another (it once published App Home).
    #[test]
    fn an_unknown_kind_or_an_unreadable_payload_is_permanent() {
        let unknown = Work::decode(&job("reindex", "{}")).unwrap_err();
        assert!(
            matches!(unknown, JobError::Permanent(ref m) if m.contains("reindex")),
            "{unknown:?}"
        );
        let unreadable = Work::decode(&job("home", "{not json")).unwrap_err();
        assert!(matches!(unreadable, JobError::Permanent(_)), "{unreadable:?}");
    }
}
