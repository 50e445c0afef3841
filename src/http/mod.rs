//! Everything HTTP that is not a transport: the listener and its limits
//! ([`listener`], [`limits`]), the client's address behind trusted proxies
//! ([`forwarded`]), a connection's first request head ([`head`]), the
//! access log ([`access_log`]), the request router ([`routes`]), the one error type
//! ([`error`]), response bodies ([`response`]), the transports' query
//! parameters ([`query`]), CORS ([`cors`]), the bare connection that
//! serves an event stream without hyper ([`stream_connection`]), and
//! `POST /publish` ([`publish`]), which produces to Kafka and is no
//! transport, and the Web Push registrations ([`push`]), which write to
//! Kafka too. Both read bounded bodies ([`body`]). The admin listener
//! ([`admin`]) serves the probes and the admin API ([`admin_api`]).
//!
//! Imports point one way: the transports use `http`'s types (errors,
//! bodies, query parameters, the connection permit); only [`routes`] and
//! [`stream_connection`] call into the transports, and no transport
//! imports them.

pub mod access;
pub mod access_log;
pub mod admin;
pub mod admin_api;
pub mod body;
pub mod cors;
pub mod error;
pub mod forwarded;
pub mod head;
pub mod limits;
pub mod listener;
pub mod publish;
pub mod push;
pub mod query;
pub mod response;
pub mod routes;
pub mod stream_connection;
pub mod tls;
mod write_watch;
