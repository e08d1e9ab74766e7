//! The process's doors: the HTTP and SMTP ingresses (real protocols in, bus requests out) and
//! the admin listener (metrics and health of every service in the process).

pub mod admin;
pub mod http;
pub mod smtp;
pub mod tls;
