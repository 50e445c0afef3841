//! Web Push (RFC 8030 push protocol, RFC 8291 message encryption, RFC 8292
//! VAPID): notifications that reach a user whose page is closed.
//!
//! Its own room: nothing in the live WebSocket/SSE/poll path depends on
//! it, and `kafka` never imports it. What is here so far: the node's VAPID
//! key pair ([`keys`]), which `herald push keygen` writes and `GET
//! /push/vapid-public-key` serves.

pub mod keys;
