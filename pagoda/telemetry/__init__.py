"""What every service shares to be observed: log setup with request ids (`logging`), OpenTelemetry traces
over OTLP (`tracing`), a histogram that takes many observations at once (`histogram`), and a small OTLP trace
receiver for tests and benchmarks (`receiver`). Nothing here imports torch; OpenTelemetry is imported only
when tracing is turned on."""
