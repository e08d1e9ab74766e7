//! Where and how spans are exported: the standard `OTEL_EXPORTER_OTLP_*` variables and
//! busgate's own, read once at start.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use crate::config::{duration, ConfigError, Setting, Sources};

pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const ENV_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// Extra request headers (`key=value,...`, values percent-encoded), e.g. a collector's API key.
pub const ENV_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
pub const ENV_OTLP_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
/// PEM certificates to trust for an `https://` collector, besides the system's.
pub const ENV_OTLP_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
pub const ENV_OTLP_TRACES_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE";
/// `off` turns spans and metrics off (for comparison benchmarks); anything else leaves them on.
pub const ENV_TELEMETRY: &str = "BUSGATE_TELEMETRY";
/// PROD also keeps traces with a span slower than this (busgate's setting).
pub const ENV_SLOW_TRACE_THRESHOLD: &str = "BUSGATE_TRACE_SLOW_THRESHOLD";
pub const DEFAULT_SLOW_TRACE_THRESHOLD: Duration = Duration::from_secs(1);

/// How often spans are shipped: soon enough to find a request in Jaeger while looking at it,
/// rarely enough to batch.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest one export may take before it is abandoned.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Ended spans PROD holds per service while it waits to learn whether their trace is worth
/// keeping. Errors and `:888/trace` selections arrive within milliseconds, so a small buffer
/// keeps error traces whole; a slow trace's early fast spans need a window as long as the slow
/// threshold (1024 spans are ~1 s at 1k req/s per instance, 60 ms at 16k). Each waiting span
/// holds ~600 bytes, and a larger buffer touches more memory per request (an earlier design
/// measured 64 spans ≈ 6%, 1024 ≈ 12%, 8192 ≈ 17% more CPU per request than telemetry off;
/// measure with `BUSGATE_TRACE_TAIL_BUFFER=<n> cargo bench --bench telemetry`).
pub const DEFAULT_TAIL_BUFFER_SPANS: usize = 1024;
pub const ENV_TAIL_BUFFER_SPANS: &str = "BUSGATE_TRACE_TAIL_BUFFER";

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    HttpProtobuf,
    Grpc,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Record spans and metrics at all.
    pub enabled: bool,
    /// The full OTLP traces endpoint; `None` keeps tracing local (ids in logs, nothing sent).
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    pub slow_trace_threshold: Duration,
    /// PROD's tail buffer, in spans per service.
    pub tail_buffer_spans: usize,
    /// Headers sent with every OTLP/HTTP export (gRPC reads the same variables itself).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Extra trusted certificates (PEM) for an OTLP/HTTP collector over `https://`.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            slow_trace_threshold: DEFAULT_SLOW_TRACE_THRESHOLD,
            tail_buffer_spans: DEFAULT_TAIL_BUFFER_SPANS,
            headers: Vec::new(),
            ca_file: None,
        }
    }
}

/// The OTLP transport.
pub const PROTOCOL: Setting<OtlpProtocol> = Setting {
    property: "",
    env: ENV_OTLP_PROTOCOL,
    default: || OtlpProtocol::HttpProtobuf,
    parse: |v| match v {
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        "grpc" => Ok(OtlpProtocol::Grpc),
        _ => Err("expected http/protobuf or grpc".to_owned()),
    },
};

/// The traces endpoint, used as is; wins over the base endpoint.
pub const TRACES_ENDPOINT: Setting<Option<String>> = endpoint(ENV_OTLP_TRACES_ENDPOINT);
/// The base endpoint: `/v1/traces` is added over HTTP. Neither set keeps tracing local (ids
/// in logs, nothing sent).
pub const ENDPOINT: Setting<Option<String>> = endpoint(ENV_OTLP_ENDPOINT);

/// PROD also keeps traces with a span slower than this.
pub const SLOW_TRACE_THRESHOLD: Setting<Duration> = Setting {
    property: "",
    env: ENV_SLOW_TRACE_THRESHOLD,
    default: || DEFAULT_SLOW_TRACE_THRESHOLD,
    parse: duration,
};

/// PROD's tail buffer, in spans per service (see [`DEFAULT_TAIL_BUFFER_SPANS`]).
pub const TAIL_BUFFER_SPANS: Setting<usize> = Setting {
    property: "",
    env: ENV_TAIL_BUFFER_SPANS,
    default: || DEFAULT_TAIL_BUFFER_SPANS,
    parse: |v| {
        v.parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| "expected a number of spans above 0".to_owned())
    },
};

/// Headers of the traces export; win over the general ones.
pub const TRACES_HEADERS: Setting<Option<Vec<(HeaderName, HeaderValue)>>> =
    headers(ENV_OTLP_TRACES_HEADERS);
pub const HEADERS: Setting<Option<Vec<(HeaderName, HeaderValue)>>> = headers(ENV_OTLP_HEADERS);

/// Certificates of the traces export; win over the general ones.
pub const TRACES_CERTIFICATE: Setting<Option<std::path::PathBuf>> =
    certificate(ENV_OTLP_TRACES_CERTIFICATE);
pub const CERTIFICATE: Setting<Option<std::path::PathBuf>> = certificate(ENV_OTLP_CERTIFICATE);

/// Telemetry at all: `off` turns spans and metrics off (for comparison benchmarks); anything
/// else leaves them on.
pub const TELEMETRY: Setting<bool> = Setting {
    property: "",
    env: ENV_TELEMETRY,
    default: || true,
    parse: |v| Ok(!v.eq_ignore_ascii_case("off")),
};

const fn endpoint(env: &'static str) -> Setting<Option<String>> {
    Setting {
        property: "",
        env,
        default: || None,
        parse: |v| {
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                return Err("expected an http:// or https:// URL".to_owned());
            }
            Ok(Some(v.to_owned()))
        },
    }
}

const fn headers(env: &'static str) -> Setting<Option<Vec<(HeaderName, HeaderValue)>>> {
    Setting {
        property: "",
        env,
        default: || None,
        parse: |v| parse_headers(v).map(Some),
    }
}

const fn certificate(env: &'static str) -> Setting<Option<std::path::PathBuf>> {
    Setting {
        property: "",
        env,
        default: || None,
        parse: |v| {
            if !std::path::Path::new(v).is_file() {
                return Err("expected a readable PEM file".to_owned());
            }
            Ok(Some(std::path::PathBuf::from(v)))
        },
    }
}

impl TelemetryConfig {
    /// The standard `OTEL_EXPORTER_OTLP_*` variables: a signal endpoint is used as is, a base
    /// endpoint gets `/v1/traces` over HTTP.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<TelemetryConfig, ConfigError> {
        // Values are trimmed, and an empty one is an unset one.
        let set = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let from = Sources::environment(&set);
        let protocol = from.read(&PROTOCOL)?;
        let endpoint = match from.read(&TRACES_ENDPOINT)? {
            Some(signal) => Some(signal),
            None => from.read(&ENDPOINT)?.map(|base| match protocol {
                OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
                OtlpProtocol::Grpc => base,
            }),
        };
        let headers = match from.read(&TRACES_HEADERS)? {
            Some(h) => h,
            None => from.read(&HEADERS)?.unwrap_or_default(),
        };
        let ca_file = match from.read(&TRACES_CERTIFICATE)? {
            Some(path) => Some(path),
            None => from.read(&CERTIFICATE)?,
        };
        Ok(TelemetryConfig {
            enabled: from.read(&TELEMETRY)?,
            endpoint,
            protocol,
            slow_trace_threshold: from.read(&SLOW_TRACE_THRESHOLD)?,
            tail_buffer_spans: from.read(&TAIL_BUFFER_SPANS)?,
            headers,
            ca_file,
        })
    }
}

/// `key=value` pairs separated by commas, values percent-encoded (the OTLP exporter spec).
fn parse_headers(raw: &str) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    raw.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or("expected key=value pairs separated by commas")?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| "a value is not UTF-8 once percent-decoded")?;
            let name = HeaderName::from_bytes(key.trim().as_bytes())
                .map_err(|_| "a key is not a valid HTTP header name")?;
            let value = HeaderValue::from_str(&value)
                .map_err(|_| "a value is not a valid HTTP header value")?;
            Ok((name, value))
        })
        .collect::<Result<_, &str>>()
        .map_err(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn otel_environment() {
        let cfg = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            TelemetryConfig::from_lookup(|k| map.get(k).cloned())
        };
        assert_eq!(cfg(&[]).unwrap().endpoint, None);
        let c = cfg(&[(ENV_OTLP_HEADERS, "api-key=s%20cret, x-team = core ,")]).unwrap();
        assert_eq!(c.headers.len(), 2);
        assert_eq!(
            (c.headers[0].0.as_str(), c.headers[0].1.to_str().unwrap()),
            ("api-key", "s cret")
        );
        assert_eq!(
            (c.headers[1].0.as_str(), c.headers[1].1.to_str().unwrap()),
            ("x-team", "core")
        );
        let c = cfg(&[(ENV_OTLP_HEADERS, "a=1"), (ENV_OTLP_TRACES_HEADERS, "b=2")]).unwrap();
        assert_eq!(
            c.headers[0].0.as_str(),
            "b",
            "the signal's own variable wins"
        );
        for bad in ["novalue", "bad name=1", "k=%0a"] {
            assert_eq!(
                cfg(&[(ENV_OTLP_HEADERS, bad)]).unwrap_err().name,
                ENV_OTLP_HEADERS,
                "{bad}"
            );
        }
        let c = cfg(&[(ENV_OTLP_ENDPOINT, "http://jaeger:4318/")]).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://jaeger:4318/v1/traces"));
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        let c = cfg(&[
            (ENV_OTLP_ENDPOINT, "http://jaeger:4317"),
            (ENV_OTLP_PROTOCOL, "grpc"),
        ])
        .unwrap();
        assert_eq!(
            (c.endpoint.as_deref(), c.protocol),
            (Some("http://jaeger:4317"), OtlpProtocol::Grpc)
        );
        let c = cfg(&[
            (ENV_OTLP_ENDPOINT, "http://a:1"),
            (ENV_OTLP_TRACES_ENDPOINT, "http://b:2/custom"),
        ])
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://b:2/custom"));
        assert_eq!(
            cfg(&[(ENV_OTLP_PROTOCOL, "http/json")]).unwrap_err().name,
            ENV_OTLP_PROTOCOL
        );
        assert_eq!(
            cfg(&[(ENV_OTLP_ENDPOINT, "jaeger:4318")]).unwrap_err().name,
            ENV_OTLP_ENDPOINT
        );
        assert_eq!(
            cfg(&[(ENV_SLOW_TRACE_THRESHOLD, "250ms")])
                .unwrap()
                .slow_trace_threshold,
            Duration::from_millis(250)
        );
        assert_eq!(
            cfg(&[(ENV_TAIL_BUFFER_SPANS, "1024")])
                .unwrap()
                .tail_buffer_spans,
            1024
        );
        for bad in ["0", "-1", "many"] {
            assert_eq!(
                cfg(&[(ENV_TAIL_BUFFER_SPANS, bad)]).unwrap_err().name,
                ENV_TAIL_BUFFER_SPANS
            );
        }
    }
}
