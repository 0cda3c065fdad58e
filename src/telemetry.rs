//! Logs and traces, set up once per process: `tracing` with structured fields (pretty, or one
//! JSON object a line carrying the trace id), spans exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C `traceparent` propagation helpers for the
//! HTTP clients and servers. No token ever goes into a span: callers record user ids only.
//! A request from a caller nobody verified starts its own trace and only links the caller's
//! ([`link_trace`]); verified callers' traces are continued ([`continue_trace`]). It also owns
//! how a URL is shown in logs ([`without_userinfo`]) and the log shape ([`LogFormat`]), which
//! `config` parses: a leaf of the crate, importing none of it. Must not touch: the settings
//! themselves, or anything that acts for a user.

use std::{
    fmt,
    sync::{Arc, OnceLock},
    time::Duration,
};

use opentelemetry::{
    Context, global,
    trace::{SpanContext, TraceContextExt, TraceState, TracerProvider as _},
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    runtime,
    trace::{
        BatchConfigBuilder, SdkTracerProvider,
        span_processor_with_async_runtime::BatchSpanProcessor,
    },
};
use serde_json::{Map, Value};
use tracing::{Event, Subscriber, dispatcher::WeakDispatch, field::Field};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter, format::Writer},
    prelude::*,
    registry::LookupSpan,
};

/// Log output shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `url` without its userinfo (`https://user:pass@host/x` becomes `https://host/x`), for logs
/// and debug output; anything else about it is kept as written.
pub fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The last `@` ends the userinfo, as URL parsers read it.
    match rest[..authority].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// OTLP transport, as `OTEL_EXPORTER_OTLP_PROTOCOL` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

impl OtlpProtocol {
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "grpc" | "" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            "http/json" => Some(Self::HttpJson),
            _ => None,
        }
    }
}

/// How this process logs and traces.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// Base OTLP endpoint (`http://collector:4317`); `None`: no export.
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: OtlpProtocol,
    pub service_name: String,
    /// How often batched spans are sent.
    pub export_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            service_name: "tokenwarden".into(),
            export_interval: Duration::from_secs(5),
        }
    }
}

/// Keeps the tracer provider; flush or shut it down before the process exits.
#[derive(Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Sends every finished span now (tests, and before exit).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::debug!(error = %e, "span flush failed");
        }
    }

    /// Flushes and stops the exporter; bounded, so an unreachable collector cannot hold the
    /// exit up.
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(5));
    }
}

/// Logs to stdout; see [`init_with_writer`].
pub fn init(config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    init_with_writer(config, std::io::stdout)
}

/// Installs the global subscriber (fmt + OpenTelemetry layers) writing logs to `writer`, and
/// the W3C trace-context propagator. Must run inside a tokio runtime (the span batcher is a
/// tokio task). A second call leaves the first subscriber in place.
pub fn init_with_writer<W>(config: &TelemetryConfig, writer: W) -> anyhow::Result<Telemetry>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = tracer_provider(config)?;
    let tracer = provider.tracer("tokenwarden");
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm_migration=warn"));
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed = match config.log_format {
        LogFormat::Json => {
            let dispatch = Arc::new(OnceLock::new());
            let format = JsonWithTrace {
                dispatch: dispatch.clone(),
            };
            let layer = tracing_subscriber::fmt::layer()
                .event_format(format)
                .with_writer(writer);
            let installed = registry.with(layer).try_init().is_ok();
            if installed {
                tracing::dispatcher::get_default(|d| {
                    let _ = dispatch.set(d.downgrade());
                });
            }
            installed
        }
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init()
            .is_ok(),
    };
    if installed && let Some(endpoint) = &config.otlp_endpoint {
        tracing::info!(endpoint = %without_userinfo(endpoint), protocol = ?config.otlp_protocol, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// The tracer provider: with a batch exporter when an endpoint is set, else ids only (so
/// `traceparent` still links the services and logs still carry trace ids).
fn tracer_provider(config: &TelemetryConfig) -> anyhow::Result<SdkTracerProvider> {
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(builder.build());
    };
    let endpoint = endpoint.trim_end_matches('/');
    let exporter = match config.otlp_protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()?,
        // The signal path is appended as the OTLP spec says for the base endpoint variable.
        http => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(if http == OtlpProtocol::HttpJson {
                Protocol::HttpJson
            } else {
                Protocol::HttpBinary
            })
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .build()?,
    };
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(config.export_interval)
        .build();
    let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio)
        .with_batch_config(batch)
        .build();
    Ok(builder.with_span_processor(processor).build())
}

/// Writes the current span's context as `traceparent` into outgoing request headers.
pub fn inject_context(headers: &mut http::HeaderMap) {
    inject(&tracing::Span::current().context(), headers);
}

/// Writes `cx` as `traceparent` into headers.
pub fn inject(cx: &Context, headers: &mut http::HeaderMap) {
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut HeaderInjector(headers)));
}

/// The caller's trace context from incoming headers (empty when there is none).
pub fn extract(headers: &http::HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Makes `span` continue the caller's trace if the headers carry one.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = extract(headers);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Leaves `span` at the root of a trace of its own and links the caller's trace, if the
/// headers carry one: for requests nobody authenticated. Their context must not become the
/// parent, or it would travel on in every call the request causes (to Google, in the pushes)
/// and let anyone attach our spans to a trace they chose; the link still lets an operator
/// follow a call across. The caller's `tracestate` is left out: vendor data from an anonymous
/// caller that nothing here needs.
pub fn link_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let caller = extract(headers).span().span_context().clone();
    if caller.is_valid() {
        span.add_link(SpanContext::new(
            caller.trace_id(),
            caller.span_id(),
            caller.trace_flags(),
            true,
            TraceState::default(),
        ));
    }
}

/// The current span's OpenTelemetry context, to carry work across tasks into one trace.
pub fn current_context() -> Context {
    tracing::Span::current().context()
}

/// One JSON object per line with the event's fields, the current span's name, and its trace
/// and span ids, so log lines join their traces.
struct JsonWithTrace {
    /// The installed dispatcher, set right after install: the OpenTelemetry context of a span
    /// is only reachable through it.
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        event.record(&mut JsonFields(&mut line));
        let current = ctx.lookup_current().map(|span| (span.id(), span.name()));
        if let Some((id, name)) = current {
            line.insert("span".into(), name.into());
            let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
            if let Some(cx) =
                dispatch.and_then(|d| tracing_opentelemetry::get_otel_context(&id, &d))
            {
                let span_context = cx.span().span_context().clone();
                if span_context.is_valid() {
                    line.insert(
                        "trace_id".into(),
                        span_context.trace_id().to_string().into(),
                    );
                    line.insert("span_id".into(), span_context.span_id().to_string().into());
                }
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct JsonFields<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}
