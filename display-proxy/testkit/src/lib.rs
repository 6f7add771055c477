//! What tests and benchmarks of the display proxy use in place of the rest of Atrium, kept out
//! of the service: a display-ticket issuer that does what the broker does ([`issuer`]) and a
//! generated desktop ([`synthetic`]), and a desktop that plays test tones ([`tone`]).

pub mod issuer;
pub mod synthetic;
pub mod tone;
