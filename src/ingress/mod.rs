//! Ingresses: real protocols in, bus requests out. HTTP now; SMTP follows.

pub mod http;
