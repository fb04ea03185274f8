//! Where a queued job becomes work done: the worker pool and its retries, the retention
//! purge, and one handler per kind of job — a question's answer, sharing a private
//! answer, and a person's account (App Home, connect, disconnect).

pub mod account;
pub mod breaker;
pub mod question;
pub mod retention;
pub mod share;
pub mod worker;
