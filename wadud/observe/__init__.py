"""What every role tells its operators: structured logs, Prometheus metrics,
OpenTelemetry traces.
"""
