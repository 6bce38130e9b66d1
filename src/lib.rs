//! psbroker: a daemon that brokers pooled remote PowerShell sessions for admins of many tenants.
//!
//! Follow one invocation: [`api`] handler → [`store`] (persisted before it is acknowledged) →
//! [`broker`] scheduler (picks or opens a session within the caps) → a [`remote::Connector`]
//! (the built-in [`sim`] today) → result stored → response.

pub mod api;
pub mod app;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod cli_login;
pub mod cli_token;
pub mod config;
pub mod data_dir;
pub mod identity;
pub mod metrics;
pub mod remote;
pub mod sim;
pub mod store;
pub mod tls;
