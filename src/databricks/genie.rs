//! The Genie Conversation API (`/api/2.0/genie/spaces/{space_id}/…`), as the person.
//!
//! Genie answers asynchronously: a question (the first of a conversation, or a follow-up
//! in one) becomes a message whose `status` moves through `SUBMITTED`, `ASKING_AI`,
//! `EXECUTING_QUERY`… to `COMPLETED`, `FAILED` or `CANCELLED`, or to
//! `QUERY_RESULT_EXPIRED` when its query must be run again to read the result. Callers
//! poll [`GenieSpace::message`]. The API is in Public Preview and its fields come and go,
//! so every field here tolerates being missing or `null`.

use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::databricks::api::{ApiError, Databricks, path_segment};
use crate::databricks::sql::StatementResponse;

/// One Genie space, asked as the owner of the [`Databricks`] client's token.
#[derive(Clone, Copy)]
pub struct GenieSpace<'a> {
    db: Databricks<'a>,
    space_id: &'a str,
}

/// Where a message lives: the conversation and the message in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef {
    pub conversation_id: String,
    pub message_id: String,
}

/// The answer to `start-conversation`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StartedConversation {
    #[serde(default, deserialize_with = "or_default")]
    pub conversation_id: String,
    #[serde(default, deserialize_with = "or_default")]
    pub message_id: String,
    #[serde(default)]
    pub message: Option<GenieMessage>,
}

impl StartedConversation {
    /// The new message, wherever this answer put its ids.
    pub fn message_ref(&self) -> Option<MessageRef> {
        let message = self.message.as_ref();
        let conversation_id = first_non_empty(&self.conversation_id, message.map(|m| m.conversation_id.as_str()));
        let message_id = first_non_empty(&self.message_id, message.map(GenieMessage::id));
        Some(MessageRef {
            conversation_id: conversation_id?.to_owned(),
            message_id: message_id?.to_owned(),
        })
    }
}

fn first_non_empty<'s>(first: &'s str, second: Option<&'s str>) -> Option<&'s str> {
    [Some(first), second].into_iter().flatten().find(|s| !s.is_empty())
}

/// A question asked in a conversation, and Genie's answer to it so far.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenieMessage {
    #[serde(default, deserialize_with = "or_default")]
    pub message_id: String,
    /// The message id under its legacy name.
    #[serde(default, deserialize_with = "or_default")]
    pub id: String,
    #[serde(default, deserialize_with = "or_default")]
    pub conversation_id: String,
    #[serde(default, deserialize_with = "or_default")]
    pub status: MessageStatus,
    #[serde(default, deserialize_with = "or_default")]
    pub attachments: Vec<GenieAttachment>,
    /// Why the message `FAILED`.
    #[serde(default)]
    pub error: Option<MessageError>,
    /// The question as asked.
    #[serde(default, deserialize_with = "or_default")]
    pub content: String,
    /// When Genie received it, in milliseconds since the Unix epoch.
    #[serde(default, deserialize_with = "or_default")]
    pub created_timestamp: i64,
}

impl GenieMessage {
    /// The message id (`message_id`, or the legacy `id`).
    pub fn id(&self) -> &str {
        if self.message_id.is_empty() {
            &self.id
        } else {
            &self.message_id
        }
    }
}

/// One of the caller's conversations in a space, as `GET …/conversations` lists it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConversationSummary {
    #[serde(default, deserialize_with = "or_default")]
    pub conversation_id: String,
    /// Genie's title: the first question, cut to 255 characters.
    #[serde(default, deserialize_with = "or_default")]
    pub title: String,
    #[serde(default, deserialize_with = "or_default")]
    pub created_timestamp: i64,
}

#[derive(Deserialize)]
struct Conversations {
    #[serde(default, deserialize_with = "or_default")]
    conversations: Vec<ConversationSummary>,
}

#[derive(Deserialize)]
struct Messages {
    #[serde(default, deserialize_with = "or_default")]
    messages: Vec<GenieMessage>,
}

/// Where a message is. Statuses this client does not know are [`MessageStatus::Other`],
/// treated as still in progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MessageStatus {
    Submitted,
    FetchingMetadata,
    FilteringContext,
    AskingAi,
    PendingWarehouse,
    ExecutingQuery,
    Completed,
    Failed,
    Cancelled,
    /// The query ran but its result is gone: run it again with `execute-query`.
    QueryResultExpired,
    #[default]
    #[serde(other)]
    Other,
}

impl MessageStatus {
    /// Whether Genie has stopped working on the message.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::QueryResultExpired
        )
    }
}

/// One part of Genie's answer: prose, a query, or suggested questions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenieAttachment {
    #[serde(default, deserialize_with = "or_default")]
    pub attachment_id: String,
    #[serde(default)]
    pub text: Option<TextAttachment>,
    #[serde(default)]
    pub query: Option<QueryAttachment>,
    #[serde(default)]
    pub suggested_questions: Option<SuggestedQuestions>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TextAttachment {
    #[serde(default, deserialize_with = "or_default")]
    pub content: String,
    /// Empty for the answer itself; `FOLLOW_UP_QUESTION` for a suggested question.
    #[serde(default, deserialize_with = "or_default")]
    pub purpose: String,
}

impl TextAttachment {
    /// Whether this text is a suggested follow-up question rather than the answer.
    pub fn is_follow_up_question(&self) -> bool {
        self.purpose.ends_with("FOLLOW_UP_QUESTION")
    }
}

/// The SQL Genie wrote, and what it says the query does.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct QueryAttachment {
    #[serde(default, deserialize_with = "or_default")]
    pub title: String,
    #[serde(default, deserialize_with = "or_default")]
    pub description: String,
    #[serde(default, deserialize_with = "or_default")]
    pub query: String,
    #[serde(default, deserialize_with = "or_default")]
    pub statement_id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SuggestedQuestions {
    #[serde(default, deserialize_with = "or_default")]
    pub questions: Vec<String>,
}

/// Why a message failed: `type` is one of Genie's `MessageErrorType`s (e.g.
/// `RATE_LIMIT_EXCEEDED_GENERIC_EXCEPTION`), `error` its explanation.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessageError {
    #[serde(default, deserialize_with = "or_default")]
    pub error: String,
    #[serde(rename = "type", default, deserialize_with = "or_default")]
    pub kind: String,
}

/// A query attachment's result: a SQL statement, as the Statement Execution API returns it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct QueryResult {
    #[serde(default)]
    pub statement_response: Option<StatementResponse>,
}

impl QueryResult {
    /// Whether the statement is still queued or running.
    pub fn is_running(&self) -> bool {
        self.statement_response
            .as_ref()
            .is_some_and(StatementResponse::is_running)
    }
}

impl<'a> GenieSpace<'a> {
    /// The space `space_id`, called through `db`.
    pub fn new(db: Databricks<'a>, space_id: &'a str) -> Self {
        Self { db, space_id }
    }

    /// The space's id.
    pub fn id(&self) -> &str {
        self.space_id
    }

    fn path(&self, rest: &str) -> String {
        format!("/api/2.0/genie/spaces/{}{rest}", path_segment(self.space_id))
    }

    fn message_path(&self, at: &MessageRef, rest: &str) -> String {
        self.path(&format!(
            "/conversations/{}/messages/{}{rest}",
            path_segment(&at.conversation_id),
            path_segment(&at.message_id)
        ))
    }

    fn attachment_path(&self, at: &MessageRef, attachment_id: &str, rest: &str) -> String {
        self.message_path(at, &format!("/attachments/{}{rest}", path_segment(attachment_id)))
    }

    /// `GET /api/2.0/genie/spaces/{space_id}?include_serialized_space=true`: the space's
    /// sample questions, as its authors wrote them. They are only in the space's export
    /// (`serialized_space`, a JSON string: `{"version": 2, "config": {"sample_questions":
    /// [{"id": …, "question": ["…"]}]}, …}`), which Databricks gives to people who may edit
    /// the space: anyone else gets none (no field, or a refusal — both are answered here
    /// with none, the refusal as an error for the caller to log).
    pub async fn sample_questions(&self) -> Result<Vec<String>, ApiError> {
        #[derive(Deserialize)]
        struct Space {
            #[serde(default)]
            serialized_space: Option<String>,
        }
        #[derive(Deserialize, Default)]
        struct Export {
            #[serde(default)]
            config: ExportConfig,
        }
        #[derive(Deserialize, Default)]
        struct ExportConfig {
            #[serde(default)]
            sample_questions: Vec<SampleQuestion>,
        }
        #[derive(Deserialize)]
        struct SampleQuestion {
            #[serde(default)]
            question: Vec<String>,
        }
        let space: Space = self
            .db
            .get(&self.path(""), &[("include_serialized_space", "true")])
            .await?;
        let export: Export = match space.serialized_space.as_deref().map(serde_json::from_str) {
            Some(Ok(export)) => export,
            Some(Err(error)) => {
                tracing::info!(error = %error, "a Genie space's export is not the layout expected; no sample questions");
                Export::default()
            }
            None => Export::default(),
        };
        Ok(export
            .config
            .sample_questions
            .into_iter()
            .map(|sample| sample.question.concat().trim().to_owned())
            .filter(|question| !question.is_empty())
            .collect())
    }

    /// `POST …/start-conversation`: asks `question` in a new conversation.
    pub async fn start_conversation(&self, question: &str) -> Result<StartedConversation, ApiError> {
        self.db
            .post(&self.path("/start-conversation"), &json!({ "content": question }))
            .await
    }

    /// `POST …/conversations/{conversation_id}/messages`: asks `question` as a follow-up.
    pub async fn send_message(&self, conversation_id: &str, question: &str) -> Result<GenieMessage, ApiError> {
        let path = self.path(&format!("/conversations/{}/messages", path_segment(conversation_id)));
        self.db.post(&path, &json!({ "content": question })).await
    }

    /// `POST …/messages/{message_id}/feedback`: rates Genie's answer, as databricks-sdk-go's
    /// `SendMessageFeedback` sends it: `{"rating": "POSITIVE" | "NEGATIVE"}`.
    pub async fn send_feedback(&self, at: &MessageRef, positive: bool) -> Result<(), ApiError> {
        let rating = if positive { "POSITIVE" } else { "NEGATIVE" };
        let _: serde::de::IgnoredAny = self
            .db
            .post(&self.message_path(at, "/feedback"), &json!({ "rating": rating }))
            .await?;
        Ok(())
    }

    /// `GET …/conversations`: the caller's own conversations in the space, most recent
    /// first.
    pub async fn recent_conversations(&self) -> Result<Vec<ConversationSummary>, ApiError> {
        let listed: Conversations = self
            .db
            .get(&self.path("/conversations"), &[("page_size", "20")])
            .await?;
        Ok(listed.conversations)
    }

    /// `GET …/conversations/{conversation_id}/messages`: the conversation's messages.
    pub async fn messages(&self, conversation_id: &str) -> Result<Vec<GenieMessage>, ApiError> {
        let path = self.path(&format!("/conversations/{}/messages", path_segment(conversation_id)));
        let listed: Messages = self.db.get(&path, &[("page_size", "50")]).await?;
        Ok(listed.messages)
    }

    /// `GET …/messages/{message_id}`: the message as it is now.
    pub async fn message(&self, at: &MessageRef) -> Result<GenieMessage, ApiError> {
        self.db.get(&self.message_path(at, ""), &[]).await
    }

    /// `GET …/attachments/{attachment_id}/query-result`: the result of a query attachment
    /// (while the message is `EXECUTING_QUERY` or `COMPLETED`).
    pub async fn query_result(&self, at: &MessageRef, attachment_id: &str) -> Result<QueryResult, ApiError> {
        self.db
            .get(&self.attachment_path(at, attachment_id, "/query-result"), &[])
            .await
    }

    /// `POST …/attachments/{attachment_id}/execute-query`: runs an expired query again.
    pub async fn execute_query(&self, at: &MessageRef, attachment_id: &str) -> Result<QueryResult, ApiError> {
        self.db
            .post(&self.attachment_path(at, attachment_id, "/execute-query"), &json!({}))
            .await
    }
}

/// `null` read as the type's default, like a missing field.
fn or_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_leave_their_path_segment() {
        assert_eq!(path_segment("01ef-AB_9"), "01ef-AB_9");
        assert_eq!(path_segment("../x?y"), "..%2Fx%3Fy");
        assert_eq!(path_segment(".."), "%2E%2E", "a segment of dots cannot climb the path");
    }

    #[test]
    fn a_sparse_message_with_nulls_still_reads() {
        let message: GenieMessage = serde_json::from_value(json!({
            "id": "m1",
            "status": "SOMETHING_NEW",
            "attachments": null,
            "error": null,
        }))
        .unwrap();
        assert_eq!(message.id(), "m1");
        assert_eq!(message.status, MessageStatus::Other);
        assert!(message.attachments.is_empty());
    }

    #[test]
    fn a_started_conversation_finds_its_ids_in_the_message_too() {
        let started: StartedConversation = serde_json::from_value(json!({
            "conversation": {"id": "c1"},
            "message": {"message_id": "m1", "conversation_id": "c1", "status": "SUBMITTED"},
        }))
        .unwrap();
        assert_eq!(
            started.message_ref(),
            Some(MessageRef {
                conversation_id: "c1".into(),
                message_id: "m1".into()
            })
        );
    }
}
