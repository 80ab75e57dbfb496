"""Domain services: the rules of credits, tokens and transcription, free of HTTP."""
