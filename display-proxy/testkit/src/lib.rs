//! What tests and benchmarks of the display proxy use in place of the rest of Atrium, kept out
//! of the service: a display-ticket issuer that does what the broker does ([`issuer`]) and a
//! generated desktop ([`synthetic`]).

pub mod issuer;
pub mod synthetic;
