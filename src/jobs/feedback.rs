//! A thumbs up or down on an answer: recorded (once per answer and person, with an audit
//! event), counted in `answer_feedback_total{agent,rating}`, and — when the person who
//! asked rates a Genie answer — sent to Genie's message feedback as that person. Anyone
//! else's click is recorded and thanked, never forwarded.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use slack_morphism::prelude::*;
use url::Url;

use crate::clock::SharedClock;
use crate::databricks::api::Databricks;
use crate::databricks::broker::TokenBroker;
use crate::databricks::genie::{GenieSpace, MessageRef};
use crate::domain::{TeamId, UserId};
use crate::jobs::worker::{Done, JobError};
use crate::metrics::Metrics;
use crate::services::Services;
use crate::slack::api::SlackApi;
use crate::store::Store;
use crate::store::feedback::{Rated, Rating};

/// A click on an answer's feedback buttons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackRequest {
    /// The answer: the job that answered.
    pub answer: i64,
    pub rating: Rating,
    /// Who clicked.
    pub team: TeamId,
    pub user: UserId,
    /// Where to thank them, privately.
    pub response_url: Option<Url>,
}

/// What a click needs to know of the answer, kept with it when it is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackTarget {
    /// The agent that answered (the metric's `agent` label).
    pub agent: String,
    /// The Genie message that is the answer, when Genie answered.
    pub genie: Option<GenieAnswer>,
}

/// Where a Genie answer lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenieAnswer {
    pub space_id: String,
    pub conversation_id: String,
    pub message_id: String,
}

impl FeedbackTarget {
    /// The target of an answer by `agent` that kept `conversation`: the Genie agent
    /// keeps its space, conversation and message.
    pub fn of(agent: &str, conversation: Option<&serde_json::Value>) -> Self {
        let genie = conversation.and_then(|kept| {
            let field = |name: &str| kept.get(name)?.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
            Some(GenieAnswer {
                space_id: field("space_id")?,
                conversation_id: field("conversation_id")?,
                message_id: field("message_id")?,
            })
        });
        Self {
            agent: agent.to_owned(),
            genie,
        }
    }
}

/// Runs feedback jobs.
pub struct Feedback {
    store: Store,
    slack: SlackApi,
    broker: Arc<TokenBroker>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    clock: SharedClock,
}

impl Feedback {
    pub fn new(services: &Services) -> Self {
        Self {
            store: services.store.clone(),
            slack: services.slack.clone(),
            broker: services.broker.clone(),
            http: services.http.clone(),
            metrics: services.metrics.clone(),
            clock: services.clock.clone(),
        }
    }

    /// Records the click, forwards the asker's rating of a Genie answer, and thanks the
    /// person privately.
    pub async fn record(&self, request: &FeedbackRequest) -> Result<Done, JobError> {
        let Some(answer) = self.store.answer_job(request.answer).await? else {
            self.thank(
                request,
                "Thanks! That answer is no longer kept, so your feedback could not be recorded.",
            )
            .await;
            return Ok(Done::Finished);
        };
        let target = answer
            .feedback
            .as_deref()
            .and_then(|kept| serde_json::from_str::<FeedbackTarget>(kept).ok());
        let rated = Rated {
            job_id: request.answer,
            team: &request.team,
            user: &request.user,
            rating: request.rating,
            at: self.clock.now(),
        };
        let changed = self.store.record_feedback(&rated).await?;
        let agent = target.as_ref().map_or("unknown", |t| t.agent.as_str());
        if changed {
            self.metrics.record_feedback(agent, request.rating.as_str());
        }
        let asker = answer.team_id == request.team.as_str() && answer.user_id == request.user.as_str();
        let genie = target.as_ref().and_then(|t| t.genie.as_ref());
        if let (true, true, Some(genie)) = (changed, asker, genie) {
            self.forward(request, genie).await;
        }
        tracing::info!(
            answer = request.answer,
            rating = request.rating.as_str(),
            agent,
            changed,
            asker,
            "answer feedback"
        );
        self.thank(request, "Thanks for the feedback!").await;
        Ok(Done::Finished)
    }

    /// Sends the rating to Genie as the person who clicked (who asked). Best effort: the
    /// rating is recorded here whatever Genie says.
    async fn forward(&self, request: &FeedbackRequest, genie: &GenieAnswer) {
        let context = match self.broker.user_context(&request.team, &request.user, None).await {
            Ok(context) => context,
            Err(error) => {
                tracing::info!(error = %error, "a rating was not sent to Genie: no token for the person");
                return;
            }
        };
        let bearer = context.bearer();
        let db = Databricks::new(&self.http, &context.host, &bearer);
        let at = MessageRef {
            conversation_id: genie.conversation_id.clone(),
            message_id: genie.message_id.clone(),
        };
        let sent = GenieSpace::new(db, &genie.space_id)
            .send_feedback(&at, request.rating == Rating::Positive)
            .await;
        if let Err(error) = sent {
            tracing::warn!(error = %error, "Genie did not take a rating");
        }
    }

    /// A private "thank you" where the person clicked.
    async fn thank(&self, request: &FeedbackRequest, text: &str) {
        let Some(url) = &request.response_url else { return };
        let reply = SlackApiPostWebhookMessageRequest::new(SlackMessageContent::new().with_text(text.to_owned()))
            .with_replace_original(false);
        if let Err(error) = self.slack.respond(&SlackResponseUrl(url.clone()), &reply).await {
            tracing::info!(error = %error, "could not thank for feedback");
        }
    }
}
