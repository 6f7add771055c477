//! Secrets: the shared [`atrium_protocol::secret`] types.

pub use atrium_protocol::secret::{Secret, constant_time_eq};
