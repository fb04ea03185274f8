//! Everything Databricks: OAuth (authorization, exchange, refresh), the token broker that
//! keeps one fresh access token per person, and REST calls made as that person.

pub mod api;
pub mod broker;
pub mod genie;
pub mod oauth;
pub mod sql;
