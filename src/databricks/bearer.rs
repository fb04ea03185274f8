//! The person's access token as one answer's calls carry it. When Databricks refuses it
//! part-way through an answer (it expired while Genie was working, or was revoked), the
//! token is renewed once and only the refused call is sent again — the question is not
//! asked again.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use secrecy::SecretString;

/// Gets a fresh access token for the person an answer is for.
#[async_trait]
pub trait Renew: Send + Sync {
    /// A token to replace the one of `refused_version`, which Databricks just refused,
    /// with its version; `None` when there is none (the cause is logged where it is known).
    async fn renew(&self, refused_version: i64) -> Option<(SecretString, i64)>;
}

/// One answer's bearer token.
pub struct Bearer {
    current: Mutex<(SecretString, i64)>,
    renew: Option<Arc<dyn Renew>>,
    /// Held while a renewal runs, so calls refused meanwhile wait for its token; whether
    /// this answer has renewed already.
    renewing: tokio::sync::Mutex<bool>,
}

impl Bearer {
    /// `token` (of link version `version`), renewed by `renew` when refused.
    pub fn new(token: SecretString, version: i64, renew: Option<Arc<dyn Renew>>) -> Self {
        Self {
            current: Mutex::new((token, version)),
            renew,
            renewing: tokio::sync::Mutex::new(false),
        }
    }

    /// A token nothing renews (right after the code exchange, in tests).
    pub fn fixed(token: SecretString) -> Self {
        Self::new(token, 0, None)
    }

    /// The token to send now, and its version.
    pub fn current(&self) -> (SecretString, i64) {
        self.current.lock().expect("not poisoned").clone()
    }

    /// The token to send again after the one of `refused_version` was refused: another
    /// call's renewal if there was one, else a renewal of our own — once per answer, so a
    /// token refused again is final.
    pub async fn after_refusal(&self, refused_version: i64) -> Option<SecretString> {
        let mut renewed = self.renewing.lock().await;
        let (token, version) = self.current();
        if version != refused_version {
            return Some(token);
        }
        if *renewed {
            return None;
        }
        *renewed = true;
        let (token, version) = self.renew.as_ref()?.renew(refused_version).await?;
        *self.current.lock().expect("not poisoned") = (token.clone(), version);
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    struct Counting(Mutex<u32>);

    #[async_trait]
    impl Renew for Counting {
        async fn renew(&self, refused_version: i64) -> Option<(SecretString, i64)> {
            *self.0.lock().unwrap() += 1;
            Some((
                SecretString::from(format!("at-{}", refused_version + 1)),
                refused_version + 1,
            ))
        }
    }

    #[tokio::test]
    async fn a_refused_token_is_renewed_once_per_answer() {
        let renew = Arc::new(Counting(Mutex::new(0)));
        let bearer = Bearer::new(SecretString::from("at-1"), 1, Some(renew.clone()));
        let fresh = bearer.after_refusal(1).await.unwrap();
        assert_eq!(fresh.expose_secret(), "at-2");
        // Another call that was refused with the old token takes the renewed one.
        assert_eq!(bearer.after_refusal(1).await.unwrap().expose_secret(), "at-2");
        // The renewed token refused as well: no second renewal.
        assert!(bearer.after_refusal(2).await.is_none());
        assert_eq!(*renew.0.lock().unwrap(), 1);
        assert!(Bearer::fixed(SecretString::from("x")).after_refusal(0).await.is_none());
    }

    /// Renews slowly, so two refused calls overlap the renewal.
    struct Slow(Counting);

    #[async_trait]
    impl Renew for Slow {
        async fn renew(&self, refused_version: i64) -> Option<(SecretString, i64)> {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            self.0.renew(refused_version).await
        }
    }

    // Two calls refused at once share one renewal: the second waits for its token
    // instead of finding "renewed already" and giving up.
    #[tokio::test]
    async fn calls_refused_while_a_renewal_runs_wait_for_its_token() {
        let renew = Arc::new(Slow(Counting(Mutex::new(0))));
        let bearer = Bearer::new(SecretString::from("at-1"), 1, Some(renew.clone()));
        let (a, b) = tokio::join!(bearer.after_refusal(1), bearer.after_refusal(1));
        assert_eq!(a.unwrap().expose_secret(), "at-2");
        assert_eq!(b.unwrap().expose_secret(), "at-2");
        assert_eq!(*renew.0.0.lock().unwrap(), 1);
    }
}
