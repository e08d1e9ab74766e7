//! Ingresses: real protocols in, bus requests out: HTTP and SMTP.

pub mod http;
pub mod smtp;
pub mod tls;
