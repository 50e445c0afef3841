//! Who may read what: JWT verification and channel authorization.
//!
//! - [`patterns`] — the channel pattern syntax shared by
//!   `auth.public_channels` and a token's `channels` claim.

pub mod patterns;

pub use patterns::{PatternError, Patterns};
