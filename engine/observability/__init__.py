"""What an operator watches: request ids, the access log, other log lines, Prometheus metrics."""
