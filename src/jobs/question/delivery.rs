//! Getting an answer to Slack: the "Thinking…" placeholder the agent's progress shows
//! in, the outbox kept with the job, posting it part by part (resuming where a Slack
//! failure stopped), the CSV, and private replies.

use std::future::Future;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use slack_morphism::prelude::*;

use super::stream::{KeptStream, safe};
use super::{CHANNEL_CACHE_TTL_SECONDS, CSV_NOT_ATTACHED, Question, Questions};
use crate::agent::Progress;
use crate::config::AnswerVisibility;
use crate::jobs::worker::{Done, JobError};
use crate::slack::api::{FileUpload, SlackApi, SlackApiError};
use crate::slack::{messages, render};
use crate::store::jobs::Job;

impl Questions {
    /// Posts what an earlier run of this job left undelivered; the agent is not asked
    /// again.
    pub(super) async fn resume(&self, job: &Job, q: &Question, outbox: &Outbox, sent: usize) -> Result<Done, JobError> {
        tracing::info!(sent, of = outbox.messages.len(), "resuming an answer's delivery");
        if !self.still_linked(q).await? {
            self.remove_stream(q, outbox.stream_at(sent)).await;
            return self.drop_answer(q, outbox.placeholder_at(sent)).await;
        }
        self.deliver(job, q, outbox, sent).await?;
        Ok(Done::Finished)
    }

    /// TOK-07: whether the asker still has the connection their answer was made with.
    pub(super) async fn still_linked(&self, q: &Question) -> Result<bool, JobError> {
        Ok(self.store.find_link(&q.team, &q.user).await?.is_some())
    }

    /// Drops an answer made with a connection the person has since removed, and tells
    /// them why.
    async fn drop_answer(&self, q: &Question, placeholder: Option<&str>) -> Result<Done, JobError> {
        tracing::info!("the person disconnected while their question was answered; answer dropped");
        self.remove_placeholder(q, placeholder).await;
        self.reply_privately(q, messages::dropped_after_disconnect()).await?;
        Ok(Done::Finished)
    }

    /// Posts an answer from its `sent`th message on: in the thread (the first message
    /// replaces the placeholder, or ends the stream the agent wrote into), or privately;
    /// then the chart and the CSV, where the answer went (a private answer's: the person's
    /// direct messages with the bot). Each message taken is ticked off with the job, so a
    /// Slack failure part-way is retried from where it stopped.
    pub(super) async fn deliver(
        &self,
        job: &Job,
        q: &Question,
        outbox: &Outbox,
        mut sent: usize,
    ) -> Result<(), JobError> {
        let mut placeholder = outbox.placeholder_at(sent).map(str::to_owned);
        let shown = match outbox.shown {
            Some(shown) => shown,
            None => self.visibility(q).await,
        };
        let mut stream = outbox.stream_at(sent);
        for content in outbox.messages.iter().skip(sent) {
            let mut posted = match stream.take() {
                Some(stream) => self.finish_stream(job, q, outbox, stream, content.clone()).await,
                None => self.post_part(q, shown, &mut placeholder, content.clone()).await,
            };
            // Slack refused the message itself, most likely over blocks the company's agent
            // sent: the answer's words still go out.
            if let Err(JobError::Permanent(refused)) = &posted
                && let Some(plain) = render::plain(content)
            {
                tracing::warn!(
                    refused,
                    "Slack refused an answer's blocks; posting it without the agent's"
                );
                posted = self.post_part(q, shown, &mut placeholder, plain).await;
            }
            posted?;
            sent += 1;
            if !self.store.tick_outbox(job, sent as i64).await? {
                return Err(JobError::transient("another worker took over this question"));
            }
        }
        // Files follow the messages, counted on from them: a retry resumes after the
        // last one Slack took.
        let files: Vec<&FileUpload> = outbox.chart.iter().chain(outbox.csv.iter()).collect();
        let done = sent - outbox.messages.len();
        if files.len() <= done {
            return Ok(());
        }
        let (channel, thread) = match shown {
            Shown::InThread => (q.channel.clone(), q.answer_thread().map(str::to_owned)),
            Shown::Privately if q.is_dm && q.response_url.is_none() => (q.channel.clone(), q.thread_ts.clone()),
            // A slash command may come from a conversation the bot is not a member of.
            Shown::Privately => (self.slack.open_dm(q.user.as_str()).await?, None),
        };
        for file in files.into_iter().skip(done) {
            match self.slack.upload_file(&channel, thread.as_deref(), file).await {
                Ok(()) => {}
                Err(error) if error.is_transient() => return Err(error.into()),
                // A chart is a nicety: the answer stands without it.
                Err(error) if outbox.chart.as_ref() == Some(file) => {
                    tracing::warn!(error = %error, "could not attach a chart");
                }
                Err(error) => {
                    let reference = job.reference();
                    tracing::warn!(error = %error, reference, "could not attach a result as a CSV file");
                    self.reply_privately(q, messages::could_not_answer(CSV_NOT_ATTACHED, &reference))
                        .await?;
                }
            }
            sent += 1;
            if !self.store.tick_outbox(job, sent as i64).await? {
                return Err(JobError::transient("another worker took over this question"));
            }
        }
        Ok(())
    }

    /// Posts one message of an answer; in the thread, the first replaces the placeholder
    /// (or, when Slack will not update it, the placeholder is deleted and the message
    /// posted anew).
    async fn post_part(
        &self,
        q: &Question,
        shown: Shown,
        placeholder: &mut Option<String>,
        content: SlackMessageContent,
    ) -> Result<(), JobError> {
        if shown == Shown::Privately {
            return self.reply_privately(q, content).await;
        }
        if let Some(ts) = placeholder.as_deref() {
            match self.slack.update_message(&q.channel, ts, content.clone()).await {
                Ok(()) => {
                    *placeholder = None;
                    return Ok(());
                }
                // Kept for the retry to replace.
                Err(error) if error.is_transient() => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(error = %error, "could not replace the placeholder; posting the answer anew");
                    self.remove_placeholder(q, placeholder.take().as_deref()).await;
                }
            }
        }
        self.slack
            .post_message(&q.channel, q.answer_thread(), content)
            .await
            .map(|_| ())
            .map_err(JobError::from)
    }

    /// Ends the stream the agent wrote into with the rest of its text and the answer's
    /// first message below it. If Slack will not take that, the stream is ended with the
    /// text alone and the message follows on its own; if the stream cannot be ended at
    /// all (Slack closed it), the rest of the text follows as messages. Once the text is
    /// out, the job forgets the stream, so a retry of the message does not repeat it.
    async fn finish_stream(
        &self,
        job: &Job,
        q: &Question,
        outbox: &Outbox,
        stream: &KeptStream,
        content: SlackMessageContent,
    ) -> Result<(), JobError> {
        let rest = safe(&stream.rest);
        let refused = match self
            .slack
            .stop_stream(&q.channel, &stream.ts, &rest, content.blocks.clone())
            .await
        {
            Ok(()) => return Ok(()),
            Err(error) if error.is_transient() => return Err(error.into()),
            Err(error) => error,
        };
        tracing::warn!(error = %refused, "Slack would not end a stream with the answer's blocks; ending it with its text");
        match self.slack.stop_stream(&q.channel, &stream.ts, &rest, None).await {
            Ok(()) => {}
            Err(error) if error.is_transient() => return Err(error.into()),
            Err(error) => {
                tracing::warn!(error = %error, "could not end a stream; posting the rest of its text");
                for part in render::prose(&stream.rest) {
                    self.slack.post_message(&q.channel, q.answer_thread(), part).await?;
                }
            }
        }
        let closed = Outbox {
            stream: None,
            ..outbox.clone()
        };
        self.keep(job, &closed).await?;
        self.slack
            .post_message(&q.channel, q.answer_thread(), content)
            .await
            .map(|_| ())
            .map_err(JobError::from)
    }

    /// Ends and deletes the stream of an answer that is not to be shown after all.
    pub(super) async fn remove_stream(&self, q: &Question, stream: Option<&KeptStream>) {
        let Some(stream) = stream else { return };
        if let Err(error) = self.slack.stop_stream(&q.channel, &stream.ts, "", None).await {
            tracing::info!(error = %error, "could not end a stream being removed");
        }
        self.remove_placeholder(q, Some(&stream.ts)).await;
    }

    /// Keeps `outbox` with the job, for a retry to resume from.
    pub(super) async fn keep(&self, job: &Job, outbox: &Outbox) -> Result<(), JobError> {
        let kept = serde_json::to_string(outbox).expect("an outbox serialises");
        if self.store.keep_outbox(job, &kept).await? {
            Ok(())
        } else {
            Err(JobError::transient("another worker took over this question"))
        }
    }

    /// Deletes the "Thinking…" placeholder at `ts`, if there is one.
    pub(super) async fn remove_placeholder(&self, q: &Question, ts: Option<&str>) {
        let Some(ts) = ts else { return };
        if let Err(error) = self.slack.delete_message(&q.channel, ts).await {
            tracing::warn!(error = %error, "could not delete a placeholder");
        }
    }

    /// Where this question's answer goes: slash commands are always answered privately;
    /// with `auto`, privately in a channel shared with another organisation, where a
    /// thread reply would show the asker's data to people outside it.
    pub(super) async fn visibility(&self, q: &Question) -> Shown {
        if q.response_url.is_some() {
            return Shown::Privately;
        }
        match self.visibility {
            AnswerVisibility::Thread => Shown::InThread,
            AnswerVisibility::Private => Shown::Privately,
            AnswerVisibility::Auto if q.is_dm => Shown::InThread,
            AnswerVisibility::Auto if self.shared_externally(&q.channel).await => Shown::Privately,
            AnswerVisibility::Auto => Shown::InThread,
        }
    }

    /// Whether `channel` is shared with another organisation, asking Slack at most every
    /// ten minutes per channel. When Slack cannot say, it is taken as shared: a private
    /// answer is the safe mistake.
    async fn shared_externally(&self, channel: &str) -> bool {
        let now = self.clock.now();
        if let Some((shared, at)) = self.shared_channels.lock().expect("not poisoned").get(channel)
            && now - at < CHANNEL_CACHE_TTL_SECONDS
        {
            return *shared;
        }
        match self.slack.is_shared_externally(channel).await {
            Ok(shared) => {
                self.shared_channels
                    .lock()
                    .expect("not poisoned")
                    .insert(channel.to_owned(), (shared, now));
                shared
            }
            Err(error) => {
                tracing::warn!(error = %error, "conversations.info failed; answering privately");
                true
            }
        }
    }

    /// Ephemeral in a channel (a DM when Slack refuses that, e.g. the person left the
    /// channel); a plain message in a DM. An ephemeral goes into a thread only if the
    /// question was already in one: Slack does not show ephemerals in a thread that has
    /// no replies yet.
    pub(super) async fn reply_privately(&self, q: &Question, content: SlackMessageContent) -> Result<(), JobError> {
        if let Some(url) = &q.response_url {
            let reply = SlackApiPostWebhookMessageRequest::new(content.clone()).with_replace_original(false);
            match self.slack.respond(&SlackResponseUrl(url.clone()), &reply).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_transient() => return Err(error.into()),
                Err(error) => {
                    tracing::info!(error = %error, "the command's response_url is used up; sending a direct message");
                    let dm = self.slack.open_dm(q.user.as_str()).await?;
                    return self
                        .slack
                        .post_message(&dm, None, content)
                        .await
                        .map(|_| ())
                        .map_err(JobError::from);
                }
            }
        }
        if q.is_dm {
            return self
                .slack
                .post_message(&q.channel, q.thread_ts.as_deref(), content)
                .await
                .map(|_| ())
                .map_err(JobError::from);
        }
        match self
            .slack
            .post_ephemeral(&q.channel, q.user.as_str(), q.thread_ts.as_deref(), content.clone())
            .await
        {
            Ok(()) => Ok(()),
            Err(error) if error.is_transient() => Err(error.into()),
            Err(error) => {
                tracing::info!(
                    code = error.code(),
                    "ephemeral reply refused; sending a direct message instead"
                );
                let dm = self.slack.open_dm(q.user.as_str()).await?;
                self.slack
                    .post_message(&dm, None, content)
                    .await
                    .map(|_| ())
                    .map_err(JobError::from)
            }
        }
    }
}

/// What a question's job sends to Slack, kept with the job: its "Thinking…" placeholder
/// as soon as it is posted, then the agent's answer, written once; the job counts the
/// messages Slack has taken (`jobs.outbox_sent`). A retry after a Slack failure resumes
/// there instead of asking the agent again (which would post parts twice, and ask Genie
/// the question twice).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Outbox {
    /// Whether the agent has answered (`messages` and `csv` are its answer).
    pub(super) answered: bool,
    /// The "Thinking…" message the first message replaces.
    pub(super) placeholder: Option<String>,
    /// The message the agent's text streamed into, which the first message ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) stream: Option<KeptStream>,
    /// The answer's messages, in order.
    pub(super) messages: Vec<SlackMessageContent>,
    /// The whole table, when it did not fit inline: attached after the messages.
    pub(super) csv: Option<FileUpload>,
    /// A chart of the table, when it calls for one: attached after the messages.
    #[serde(default)]
    pub(super) chart: Option<FileUpload>,
    /// Where the answer was rendered for, decided once: a retry posts it there even if
    /// the channel changed meanwhile. (`None` in an outbox kept before this was recorded:
    /// decided again.)
    #[serde(default)]
    pub(super) shown: Option<Shown>,
}

/// Where an answer goes, decided for one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Shown {
    /// A reply in the thread, for everyone in the channel.
    InThread,
    /// Only to the asker (ephemeral, a DM, or the slash command's response).
    Privately,
}

impl Outbox {
    /// The placeholder still in the thread once `sent` messages went out: the first one
    /// replaced it.
    pub(super) fn placeholder_at(&self, sent: usize) -> Option<&str> {
        self.placeholder.as_deref().filter(|_| sent == 0)
    }

    /// The stream still open once `sent` messages went out: the first one ended it.
    pub(super) fn stream_at(&self, sent: usize) -> Option<&KeptStream> {
        self.stream.as_ref().filter(|_| sent == 0)
    }
}

/// The "Thinking…" message in the thread, updated as the agent works and replaced by
/// the answer.
pub(super) struct Placeholder<'a> {
    slack: &'a SlackApi,
    channel: String,
    pub(super) ts: String,
    shown: LastShown,
}

/// The progress words shown last, so the same words are not sent to Slack again.
struct LastShown(tokio::sync::Mutex<String>);

impl LastShown {
    fn new(first: &str) -> Self {
        Self(tokio::sync::Mutex::new(first.to_owned()))
    }

    /// Shows `status` with `show` unless it is already what is shown; `what` names the
    /// display in the log when Slack refuses.
    async fn change(&self, status: &str, show: impl Future<Output = Result<(), SlackApiError>>, what: &str) {
        let mut shown = self.0.lock().await;
        if *shown == status {
            return;
        }
        match show.await {
            Ok(()) => *shown = status.to_owned(),
            Err(error) => tracing::debug!(error = %error, what, "could not show progress"),
        }
    }
}

impl<'a> Placeholder<'a> {
    const FIRST: &'static str = "Thinking…";
    /// Shown while a question waits to be tried again.
    pub(super) const RETRYING: &'static str = "Taking longer than usual — I'll try again in a moment…";
    /// Shown while a question waits behind the person's others.
    pub(super) const QUEUED: &'static str = "Queued behind your other question…";

    /// Shows "Thinking…": in the placeholder at `kept` when Slack still has it, else in a
    /// new one.
    pub(super) async fn show(slack: &'a SlackApi, q: &Question, kept: Option<&str>) -> Result<Self, JobError> {
        let reused = match kept {
            Some(ts) => match slack
                .update_message(&q.channel, ts, messages::working(Self::FIRST))
                .await
            {
                Ok(()) => Some(ts.to_owned()),
                Err(error) if error.is_transient() => return Err(error.into()),
                Err(error) => {
                    tracing::info!(error = %error, "the earlier placeholder is gone; posting a new one");
                    None
                }
            },
            None => None,
        };
        let ts = match reused {
            Some(ts) => ts,
            None => {
                slack
                    .post_message(&q.channel, q.answer_thread(), messages::working(Self::FIRST))
                    .await?
            }
        };
        Ok(Self {
            slack,
            channel: q.channel.clone(),
            ts,
            shown: LastShown::new(Self::FIRST),
        })
    }
}

#[async_trait]
impl Progress for Placeholder<'_> {
    async fn working_on(&self, status: &str) {
        let update = self
            .slack
            .update_message(&self.channel, &self.ts, messages::working(status));
        self.shown.change(status, update, "a placeholder").await
    }
}

/// The longest thread title taken from a question.
const TITLE_CHARS: usize = 60;

/// A question's progress shown as its assistant thread's status.
pub(super) struct ThreadStatus<'a> {
    slack: &'a SlackApi,
    channel: String,
    thread_ts: String,
    shown: LastShown,
}

impl<'a> ThreadStatus<'a> {
    /// Shows "is thinking…" on the thread (and titles it from `question` when `title`).
    /// An error means the status cannot be used here: show a placeholder instead.
    pub(super) async fn show(
        slack: &'a SlackApi,
        channel: &str,
        thread_ts: &str,
        question: &str,
        title: bool,
    ) -> Result<Self, SlackApiError> {
        const FIRST: &str = "is thinking…";
        slack.set_assistant_status(channel, thread_ts, FIRST).await?;
        if title {
            let title = messages::truncate(question, TITLE_CHARS);
            if let Err(error) = slack.set_assistant_title(channel, thread_ts, &title).await {
                tracing::info!(error = %error, "could not title an assistant thread");
            }
        }
        Ok(Self {
            slack,
            channel: channel.to_owned(),
            thread_ts: thread_ts.to_owned(),
            shown: LastShown::new(FIRST),
        })
    }
}

#[async_trait]
impl Progress for ThreadStatus<'_> {
    async fn working_on(&self, status: &str) {
        let update = self.slack.set_assistant_status(&self.channel, &self.thread_ts, status);
        self.shown.change(status, update, "an assistant thread's status").await
    }
}
