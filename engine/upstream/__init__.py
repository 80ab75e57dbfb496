"""Everything that talks to TTTranscribe: its client, the circuit breaker and a simulator."""
