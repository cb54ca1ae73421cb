//! Ways envelopes enter Sluice. Each listener decodes its wire format and publishes into the
//! [`sluice_router::Router`]; none of them waits for a consumer.

pub mod event;
pub mod native;
pub mod syslog;
