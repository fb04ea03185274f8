//! Feedback on answers (the thumbs under each answer): one rating per answer and person,
//! recorded with an audit event. A repeated click changes nothing; the other button
//! changes the rating.

use crate::domain::{TeamId, UserId};
use crate::store::audit::{Actor, AuditEvent, AuditKind, insert_audit_event};
use crate::store::{Store, WritePool, on_pool};

/// A thumbs up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rating {
    Positive,
    Negative,
}

impl Rating {
    /// As stored, and as the `rating` label of `answer_feedback_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rating::Positive => "positive",
            Rating::Negative => "negative",
        }
    }

    /// The rating stored as `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        [Rating::Positive, Rating::Negative]
            .into_iter()
            .find(|rating| rating.as_str() == s)
    }
}

/// One person's rating of one answer.
#[derive(Debug, Clone, Copy)]
pub struct Rated<'a> {
    /// The answer: the job that answered.
    pub job_id: i64,
    /// Who clicked.
    pub team: &'a TeamId,
    pub user: &'a UserId,
    pub rating: Rating,
    pub at: i64,
}

/// The job that answered, as a click on its feedback buttons needs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AnswerJob {
    pub team_id: String,
    pub user_id: String,
    /// What the answer's feedback needs (JSON, [`crate::jobs::feedback`]'s), if kept.
    pub feedback: Option<String>,
}

impl Store {
    /// Records a rating and its audit event in one transaction. `false` when the person
    /// had already given this answer this rating (nothing is written then).
    pub async fn record_feedback(&self, rated: &Rated<'_>) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            let mut tx = pool.begin_write().await?;
            let changed = sqlx::query(
                "INSERT INTO answer_feedback (job_id, team_id, user_id, rating, at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (job_id, team_id, user_id) DO UPDATE SET rating = excluded.rating, at = excluded.at \
                 WHERE answer_feedback.rating <> excluded.rating",
            )
            .bind(rated.job_id)
            .bind(rated.team.as_str())
            .bind(rated.user.as_str())
            .bind(rated.rating.as_str())
            .bind(rated.at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if changed {
                let detail = format!("{} for answer {}", rated.rating.as_str(), rated.job_id);
                let event = AuditEvent {
                    kind: AuditKind::Feedback,
                    team: rated.team,
                    user: rated.user,
                    actor: Actor::User,
                    detail: Some(&detail),
                    at: rated.at,
                };
                insert_audit_event!(&event).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(changed)
        })
    }

    /// Keeps with question job `job_id` what its feedback buttons need (`feedback`, JSON).
    pub async fn keep_feedback_target(&self, job_id: i64, feedback: &str) -> Result<(), sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query("UPDATE jobs SET feedback = $1 WHERE id = $2")
                .bind(feedback)
                .bind(job_id)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// The question job `job_id`, if it is still kept.
    pub async fn answer_job(&self, job_id: i64) -> Result<Option<AnswerJob>, sqlx::Error> {
        on_pool!(self.read, |pool| {
            sqlx::query_as("SELECT team_id, user_id, feedback FROM jobs WHERE id = $1 AND kind = 'question'")
                .bind(job_id)
                .fetch_optional(pool)
                .await
        })
    }
}
